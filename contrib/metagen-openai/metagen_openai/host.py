"""The ``openai`` host on metagen's shared remote layer (:mod:`metagen_plugins.hosts.remote`):
fan-out, retries, partial failures and budget charging are that layer's; this module says how
one request is made and read.

What a request carries: ``prompt``, ``n``, ``max_tokens``, ``stop``, ``seed``, ``logprobs`` and
the configured components' request parameters (``temperature``, ``top_p``, ``logit_bias``,
``presence_penalty``, ``frequency_penalty``, ``stop``, ``max_tokens``), greedy as
``temperature = 0``. A component realised as anything else (vLLM's ``top_k``, ``min_p``, ...,
or a metagen component running inside vLLM) is refused before any request, unless ``[host]
extensions`` lists that parameter as one the server accepts.
"""

from __future__ import annotations

import json
from typing import Any

from metagen_plugins.components import realised, sampling
from metagen_plugins.errors import HostError
from metagen_plugins.hosts.remote import Failure, RemoteGenerator, RemoteHost, Sample, retry_after, status_kind

# The /v1/completions request parameters a component may set (OpenAI's API reference).
STANDARD = ("temperature", "top_p", "stop", "max_tokens", "logit_bias", "presence_penalty",
            "frequency_penalty", "seed")
# Extensions the host itself sends when [host] extensions lists them (vLLM understands both).
TOKEN_IDS = "return_token_ids"  # each choice's token ids: log-probs then align with them
INCLUDE_STOP = "include_stop_str_in_output"  # texts keep the stop string that ended them


class OpenAIGenerator(RemoteGenerator):
    """Samples through ``/v1/completions``: up to ``[host] samples_per_request`` samples of a
    prompt per request when sampling, one per request when greedy."""

    def __init__(self, host: "OpenAIHost", budget, **kwargs) -> None:
        super().__init__(host, budget, **kwargs)
        self.samples_per_request = host.config.host.get("samples_per_request", 1) if host.sampling else 1

    async def request(self, text, n, max_new_tokens, stop, seed, replica) -> list[Sample]:
        import httpx2

        body = self.host.request_body(text, n, max_new_tokens, stop, seed)
        try:
            response = await self.host.http_client(replica.url).post(self.host.path(replica.url), json=body)
        except httpx2.HTTPError as exc:
            raise self.classify(exc, replica.url) from None
        if response.status_code >= 400:
            raise _status_failure(response)
        try:
            return samples(response.json(), n)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise Failure("protocol", f"malformed /v1/completions answer ({type(exc).__name__}: {exc}): "
                                      f"{response.text[:300]!r}") from None

    def classify(self, exc: BaseException, url: str | None = None) -> Failure:
        import httpx2

        if isinstance(exc, httpx2.TimeoutException):
            return Failure("timeout", f"{type(exc).__name__}: {exc or 'no answer in time'}")
        if isinstance(exc, (httpx2.ConnectError, httpx2.NetworkError, httpx2.RemoteProtocolError)):
            return Failure("connection", f"{type(exc).__name__}: {exc or 'the connection failed'} "
                                         f"(is the server at {url or self.host.url} running?)")
        return Failure("protocol", f"{type(exc).__name__}: {exc}")


def _status_failure(response) -> Failure:
    """An HTTP error answer as a Failure, with the server's own message (OpenAI's error body)."""
    try:
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        message = (error.get("message") if isinstance(error, dict) else error) or json.dumps(body)[:500]
    except ValueError:
        message = response.text[:500] or response.reason_phrase
    return Failure(status_kind(response.status_code), str(message), response.status_code,
                   retry_after(response.headers))


def samples(data: dict[str, Any], n: int) -> list[Sample]:
    """The choices of a completions answer, in order. Token ids come only from servers that
    return them (vLLM's ``return_token_ids``); log-probabilities are kept on the candidate only
    beside them (the two must align), else in its ``meta["logprobs"]``. A trailing
    end-of-sequence token (finish "stop" with no stop string) is dropped, as every metagen host
    drops it."""
    choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
    if len(choices) != n:
        raise ValueError(f"asked for {n} choices, got {len(choices)}")
    usage = data.get("usage") or {}
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    computed = int(usage.get("prompt_tokens") or 0) - cached
    out = []
    for choice in choices:
        ids = [int(t) for t in (choice.get("token_ids") or [])]
        logprobs = [float(v) if v is not None else float("-inf")
                    for v in ((choice.get("logprobs") or {}).get("token_logprobs") or [])]
        generated = len(ids) or len(logprobs) or int(usage.get("completion_tokens") or 0) // n
        finish = "stop" if choice.get("finish_reason") == "stop" else "length"
        if finish == "stop" and ids and choice.get("stop_reason") is None:
            ids, logprobs = ids[:-1], logprobs[: len(ids) - 1]
        meta: dict[str, Any] = {}
        if logprobs and len(logprobs) != len(ids):
            meta["logprobs"], logprobs = logprobs, []
        out.append(Sample(text=choice["text"], token_ids=ids, logprobs=logprobs, finish_reason=finish,
                          prompt_tokens=computed, prompt_tokens_reused=cached, completion_tokens=generated,
                          meta=meta))
    return out


class OpenAIHost(RemoteHost):
    """An OpenAI-compatible server at ``[host] url``."""

    name = "openai"
    realiser = "vllm"
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
        """The JSON body of one ``/v1/completions`` request."""
        params = dict(self.parameters)
        limit = min(max_new_tokens, params.pop("max_tokens", max_new_tokens))
        stops = list(dict.fromkeys([*params.pop("stop", []), *stop]))
        params.pop(INCLUDE_STOP, None)
        body: dict[str, Any] = {"prompt": text, "n": n, "max_tokens": limit}
        if "model" in self.config.host:
            body["model"] = self.config.host["model"]
        if self.config.host.get("logprobs", True):
            body["logprobs"] = 1
        body.update(params)
        if not self.sampling:
            body["temperature"] = 0.0
        if stops:
            body["stop"] = stops
        if seed is not None:
            body["seed"] = seed
        for flag in (TOKEN_IDS, INCLUDE_STOP):
            if flag in self.extensions:
                body[flag] = True
        if self.chat and "add_special_tokens" in self.extensions:
            body["add_special_tokens"] = False  # the chat template wrote them ([host] tokenizer)
        return body
