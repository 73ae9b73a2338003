"""The vLLM host: strategies over a vLLM server's OpenAI-compatible ``POST /v1/completions``.

Each configured component becomes request parameters through its ``vllm=`` realiser: sampling
parameters vLLM implements itself (temperature, top-k/p, min-p, penalties, logit bias, stop
strings, structured outputs), or, for a component only metagen implements, an entry in
``vllm_xargs`` that the ``metagen-vllm`` plugin (a vLLM logits processor, installed in the
server's environment) builds and runs per request (:func:`server_side`). A prompt's n samples
are one request with ``n`` (one prefill on the server); log-probabilities and token ids come back
with each choice. Fan-out, timeouts, retries and partial failures are :mod:`.remote`'s.

Combinations vLLM cannot serve (custom logits processors, min-p or logit bias under speculative
decoding) fail before sending. The server command for a configuration is deployment tooling:
:mod:`metagen_plugins.deploy.vllm`.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from metagen_hooks.engines import XARG, server_side  # re-exported: plugins once imported them from here

from ..components import realised, sampling
from ..errors import ConfigError, HostError
from .remote import Failure, RemoteGenerator, RemoteHost, Sample, retry_after, status_kind

KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")
# What vLLM ignores once speculative decoding is on (vllm/v1/sample/logits_processor: custom
# processors are not even loaded; min_p and logit_bias "won't work with speculative decoding").
NOT_WITH_SPECULATION = {"min_p": "min_p", "logit_bias": "logit_bias", "vllm_xargs": "metagen-vllm processors"}
# Sent with every sampled request unless a component sets them, so a server's model-specific
# defaults (its generation_config.json) never add warpers the configuration did not ask for.
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
    from ..models import BUILTIN_MODELS, PACKAGED_MODELS, resolve

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


class VLLMGenerator(RemoteGenerator):
    """Samples through ``/v1/completions``. A sampled request carries all n samples of a prompt
    (``n``); greedy decoding sends one per request, as vLLM rejects greedy ``n > 1``."""

    def __init__(self, host: "VLLMHost", budget, **kwargs) -> None:
        super().__init__(host, budget, **kwargs)
        self.samples_per_request = sys.maxsize if host.sampling else 1

    async def request(self, text, n, max_new_tokens, stop, seed, replica) -> list[Sample]:
        import httpx2

        body = self.host.request_body(text, n, max_new_tokens, stop, seed)
        client = self.host.http_client(replica.url)
        try:
            response = await client.post("/v1/completions", json=body)
        except httpx2.HTTPError as exc:
            raise self.classify(exc, replica.url) from None
        if response.status_code >= 400:
            raise _status_failure(response)
        try:
            data = response.json()
            return _samples(data, n)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise Failure("protocol", f"malformed /v1/completions answer ({type(exc).__name__}: {exc}): "
                                      f"{response.text[:300]!r}") from None

    async def stream_request(self, text, max_new_tokens, stop, seed, replica, on_text) -> list[Sample]:
        """One sample, streamed (``"stream": true``): ``on_text`` gets each chunk's text as the
        server sends it; the pieces are assembled into the same answer ``request`` reads."""
        import httpx2

        body = {**self.host.request_body(text, 1, max_new_tokens, stop, seed), "stream": True,
                "stream_options": {"include_usage": True}}
        choice: dict[str, Any] = {"index": 0, "text": "", "token_ids": [], "logprobs": {"token_logprobs": []},
                                  "finish_reason": None, "stop_reason": None}
        usage = None
        try:
            async with self.host.http_client(replica.url).stream("POST", "/v1/completions", json=body) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise _status_failure(response)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise Failure("server", f"the stream ended with an error: {chunk['error']}")
                    usage = chunk.get("usage") or usage
                    for part in chunk.get("choices") or []:
                        piece = part.get("text") or ""
                        choice["text"] += piece
                        choice["token_ids"] += part.get("token_ids") or []
                        choice["logprobs"]["token_logprobs"] += (part.get("logprobs") or {}).get("token_logprobs") or []
                        for key in ("finish_reason", "stop_reason"):
                            choice[key] = part.get(key) or choice[key]
                        if piece:
                            on_text(piece)
        except httpx2.HTTPError as exc:
            raise self.classify(exc, replica.url) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise Failure("protocol", f"malformed /v1/completions stream ({type(exc).__name__}: {exc})") from None
        if choice["finish_reason"] is None:
            raise Failure("protocol", "the /v1/completions stream ended without a finish reason")
        return _samples({"choices": [choice], "usage": usage or {}}, 1)

    def classify(self, exc: BaseException, url: str | None = None) -> Failure:
        import httpx2

        if isinstance(exc, httpx2.TimeoutException):
            return Failure("timeout", f"{type(exc).__name__}: {exc or 'no answer in time'}")
        if isinstance(exc, (httpx2.ConnectError, httpx2.NetworkError, httpx2.RemoteProtocolError)):
            return Failure("connection", f"{type(exc).__name__}: {exc or 'the connection failed'} "
                                         f"(is the vLLM server at {url or self.host.url} running?)")
        if isinstance(exc, httpx2.HTTPError):
            return Failure("protocol", f"{type(exc).__name__}: {exc}")
        return Failure("connection", f"{type(exc).__name__}: {exc}")


def _status_failure(response) -> Failure:
    """An HTTP error answer as a Failure, keeping the server's own message."""
    try:
        error = response.json()
        message = error.get("error", {}).get("message") if isinstance(error.get("error"), dict) else None
        message = message or error.get("message") or error.get("detail") or json.dumps(error)[:500]
    except ValueError:
        message = response.text[:500] or response.reason_phrase
    status = response.status_code
    return Failure(status_kind(status), message, status, retry_after(response.headers))


def _samples(data: dict[str, Any], n: int) -> list[Sample]:
    """The choices of a completion answer, in order; a trailing end-of-sequence token (vLLM
    reports it as finish_reason "stop" with no stop_reason) is dropped, as the transformers
    host drops it, so token ids, log-probs and text align."""
    choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
    if len(choices) != n:
        raise ValueError(f"asked for {n} choices, got {len(choices)}")
    usage = data.get("usage") or {}
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    prompt_tokens = int(usage.get("prompt_tokens") or 0) - cached  # computed; the rest came from the cache
    samples = []
    for choice in choices:
        ids = [int(t) for t in (choice.get("token_ids") or [])]
        logprobs = (choice.get("logprobs") or {}).get("token_logprobs") or []
        logprobs = [float(lp) if lp is not None else float("-inf") for lp in logprobs]
        generated = len(ids)
        finish = choice.get("finish_reason") or "length"
        if finish == "stop" and choice.get("stop_reason") is None and ids:
            ids, logprobs = ids[:-1], logprobs[: len(ids) - 1]
        if len(logprobs) != len(ids):
            logprobs = []  # keep token ids only when the two align
        samples.append(Sample(text=choice["text"], token_ids=ids, logprobs=logprobs,
                              finish_reason="stop" if finish == "stop" else "length",
                              prompt_tokens=prompt_tokens, prompt_tokens_reused=cached, completion_tokens=generated,
                              meta={"stop_reason": choice.get("stop_reason")} if choice.get("stop_reason") else {}))
    return samples


class VLLMHost(RemoteHost):
    """A vLLM server (``[host] url``), or several replicas of one (``[host] urls``), serving
    ``[host] model`` (its served model name)."""

    name = "vllm"
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
        if not self.config.host.get("logprobs", True) and (self.config.scorer or {}).get("name") == "logprob":
            raise HostError("[scorer] logprob sums the candidates' token log-probabilities, and [host] "
                            "logprobs = false asks the vLLM server for none: remove logprobs = false")
        spec = speculation(self.config.host)
        if spec is None:
            return
        blocked = []
        for info, values in realised(self.config, self.registry, "vllm"):
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
        """The JSON body of one ``/v1/completions`` request."""
        params = dict(self.parameters)
        xargs = dict(params.pop("vllm_xargs", {}))
        limit = min(max_new_tokens, params.pop("max_tokens", max_new_tokens))
        stops = list(dict.fromkeys([*params.pop("stop", []), *stop]))
        params.pop("include_stop_str_in_output", None)
        body: dict[str, Any] = {"prompt": text, "n": n, "max_tokens": limit,
                                "return_token_ids": True, "include_stop_str_in_output": True}
        if self.config.host.get("logprobs", True):
            body["logprobs"] = 0  # the sampled token's log-probability, per token
        if "model" in self.config.host:
            body["model"] = self.config.host["model"]
        body.update(NEUTRAL)
        body.update(params)
        if not self.sampling:
            body["temperature"] = 0.0  # greedy, as on the transformers host without sampling
        if stops:
            body["stop"] = stops
        if seed is not None:
            body["seed"] = seed
        if self.chat:  # the chat template wrote the special tokens (BOS) already
            body["add_special_tokens"] = False
        if XARG in xargs:
            xargs[XARG] = json.dumps(xargs[XARG])  # vLLM takes flat values only: a JSON string
        if xargs:
            body["vllm_xargs"] = xargs
        return body

    # -- the connection ------------------------------------------------------------------------


__all__ = ["VLLMHost", "VLLMGenerator", "data_parallel_args", "server_side", "speculation", "XARG"]
