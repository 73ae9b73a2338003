"""The ``openai`` host on metagen's host kit (:mod:`metagen_plugins.hostkit`): fan-out, retries,
partial failures and budget charging are the kit's remote base, the completions protocol (request
body, answers, errors) the kit's :mod:`~metagen_plugins.hostkit.completions`, which the vLLM host
shares; this module says which parameters a generic server takes.

What a request carries: ``prompt``, ``n``, ``max_tokens``, ``stop``, ``seed``, ``logprobs`` (when
a component of the run reads them, or ``[host] logprobs = true``) and the configured components'
request parameters (``temperature``, ``top_p``, ``logit_bias``, ``presence_penalty``,
``frequency_penalty``, ``stop``, ``max_tokens``), greedy as ``temperature = 0``. A component
realised as anything else (vLLM's ``top_k``, ``min_p``, ..., or a metagen component running
inside vLLM) is refused before any request, unless ``[host] extensions`` lists that parameter as
one the server accepts.
"""

from __future__ import annotations

from metagen_hooks import HostError
# (samples: re-exported, it was defined here)
from metagen_plugins.hostkit import (INCLUDE_STOP, CompletionsGenerator, RemoteHost, realised, request_body,  # noqa: F401
                                     samples, sampling)

# The /v1/completions request parameters a component may set (OpenAI's API reference).
STANDARD = ("temperature", "top_p", "stop", "max_tokens", "logit_bias", "presence_penalty",
            "frequency_penalty", "seed")
# Extensions the host itself sends when [host] extensions lists them (vLLM understands both).
TOKEN_IDS = "return_token_ids"  # each choice's token ids: log-probs then align with them
# and INCLUDE_STOP ("include_stop_str_in_output"): texts keep the stop string that ended them


class OpenAIGenerator(CompletionsGenerator):
    """Samples through ``/v1/completions``: up to ``[host] samples_per_request`` samples of a
    prompt per request when sampling, one per request when greedy."""

    def __init__(self, host: "OpenAIHost", budget, **kwargs) -> None:
        super().__init__(host, budget, **kwargs)
        self.samples_per_request = host.config.host.get("samples_per_request", 1) if host.sampling else 1


class OpenAIHost(RemoteHost):
    """An OpenAI-compatible server at ``[host] url``."""

    name = "openai"
    server = "server"  # in connection errors: "is the server at ... running?"
    realiser = "openai"  # then vLLM's realisations: the fallback its registration declares
    generator_class = OpenAIGenerator

    def __init__(self, config, registry, model=None, tokenizer=None) -> None:
        try:
            import httpx2  # noqa: F401
        except ImportError:
            raise HostError("the openai host needs httpx2: pip install metagen-openai") from None
        self.extensions = tuple(config.host.get("extensions", ()))
        super().__init__(config, registry, model=model, tokenizer=tokenizer)
        self.sampling = sampling(config, registry)

    @staticmethod
    def path(url: str) -> str:
        """The completions route under a server URL given with or without its ``/v1``."""
        return "completions" if url.endswith("/v1") else "v1/completions"

    def check(self) -> None:
        """Every component's request parameters must be OpenAI's or a listed extension."""
        if self.config.host.get("samples_per_request", 1) < 1:
            raise HostError(f"[host] samples_per_request must be >= 1, got {self.config.host['samples_per_request']}")
        allowed = set(STANDARD) | set(self.extensions)
        for info, values in realised(self.config, self.registry, self.realiser):
            if "vllm_xargs" in values:
                raise HostError(f"{info.label()} runs inside a vLLM server through the metagen-vllm plugin, "
                                f"which a generic OpenAI-compatible server does not have: use [host] name = "
                                f"\"vllm\" against a vLLM server with metagen-vllm, or the transformers host")
            extra = sorted(set(values) - allowed)
            if extra:
                raise HostError(f"{info.label()} is realised as the request parameter(s) {', '.join(extra)}, "
                                f"which are not part of the OpenAI completions API. If the server accepts "
                                f"them (vLLM, SGLang and llama.cpp's server take top_k, min_p and "
                                f"repetition_penalty), list them in [host] extensions = {extra!r}; else "
                                f"remove the component")

    def request_body(self, text: str, n: int, max_new_tokens: int, stop: list[str], seed: int | None) -> dict:
        """The JSON body of one ``/v1/completions`` request (metagen's completions protocol), with
        the extensions the host sends itself when ``[host] extensions`` lists them."""
        logprobs = 1 if self.wants_logprobs else None  # [host] logprobs, else only when a component reads them
        body = request_body(text, n, max_new_tokens, stop, seed, self.parameters, settings=self.config.host,
                            sampling=self.sampling, logprobs=logprobs)
        for flag in (TOKEN_IDS, INCLUDE_STOP):
            if flag in self.extensions:
                body[flag] = True
        if self.chat and "add_special_tokens" in self.extensions:
            body["add_special_tokens"] = False  # the chat template wrote them ([host] tokenizer)
        return body
