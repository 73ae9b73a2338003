"""The TGI host: strategies over a text-generation-inference deployment.

TGI has no plugin point: per request it takes a fixed set of sampling parameters, so every
configured component must map onto them (its realisation for the ``tgi`` key: :mod:`.realisations`
for the built-in components, a plugin's own ``tgi=``; stop strings natively) or validation
rejects it before any request. Requests go through ``huggingface_hub``'s
``AsyncInferenceClient.text_generation`` (POST to the deployment's root route, which answers
``/generate`` or, streamed, ``/generate_stream``) with ``details=True`` for token ids and
log-probabilities. N samples are N concurrent requests (the host's in-flight limit and its
replicas are the host kit's, :mod:`metagen_plugins.hostkit`).

More stop strings than the deployment accepts (``--max-stop-sequences``, 4 by default) are
enforced here: the first ones go to the server, the rest are watched over ``/generate_stream``
and the stream is closed as soon as one appears in the text.

Launcher arguments and the check of a running deployment are deployment tooling:
:mod:`.deploy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from metagen_hooks import HostError

from ...hostkit import (Failure, RemoteGenerator, RemoteHost, Sample, Stream, Watching, retry_after, sampling,
                        status_kind)

# TGI's launcher defaults and accepted values (text-generation-inference, launcher/src/main.rs).
DEFAULT_MAX_BEST_OF = 2
DEFAULT_MAX_STOP_SEQUENCES = 4
DEFAULT_MAX_TOP_N_TOKENS = 5
KV_CACHE_DTYPES = ("fp8_e4m3fn", "fp8_e5m2")
QUANTIZE = ("awq", "compressed-tensors", "eetq", "exl2", "gptq", "marlin", "bitsandbytes",
            "bitsandbytes-nf4", "bitsandbytes-fp4", "fp8")
NO_DRAFT_MODEL = (
    "TGI has no separate draft model: its speculative decoding is `--speculate N` with Medusa or "
    "MLP-speculator heads shipped in the served model (point model_id at such a model) or n-gram "
    "lookup on any model. For a separate draft model use the vLLM host ([host] name = \"vllm\", "
    "draft_model = ...) or the transformers host (assisted generation)"
)


# -- settings ----------------------------------------------------------------------------------


@dataclass
class Limits:
    """What the deployment accepts per request: [host] settings, else TGI's launcher defaults."""

    max_best_of: int = DEFAULT_MAX_BEST_OF
    max_stop_sequences: int = DEFAULT_MAX_STOP_SEQUENCES
    max_top_n_tokens: int = DEFAULT_MAX_TOP_N_TOKENS

    @classmethod
    def of(cls, host: dict[str, Any]) -> "Limits":
        return cls(host.get("max_best_of", DEFAULT_MAX_BEST_OF),
                   host.get("max_stop_sequences", DEFAULT_MAX_STOP_SEQUENCES),
                   host.get("max_top_n_tokens", DEFAULT_MAX_TOP_N_TOKENS))


def check_settings(config, registry, launching: bool = False) -> None:
    """Reject [host] settings TGI cannot honour, each with the reason and the fix. When
    ``launching``, the limits are what the launcher is about to be given, not yet a constraint."""
    host = config.host
    if "draft_model" in host:
        raise HostError(f"[host] draft_model = {host['draft_model']!r}: {NO_DRAFT_MODEL}")
    if "kv_cache" in host and host["kv_cache"] not in KV_CACHE_DTYPES:
        raise HostError(f"[host] kv_cache = {host['kv_cache']!r} is not a TGI --kv-cache-dtype; "
                        f"TGI accepts {' or '.join(KV_CACHE_DTYPES)}")
    if "quantize" in host and host["quantize"] not in QUANTIZE:
        raise HostError(f"[host] quantize = {host['quantize']!r} is not a TGI --quantize method; "
                        f"TGI accepts {', '.join(QUANTIZE)}")
    for key in ("speculate", "max_best_of", "max_stop_sequences", "max_top_n_tokens", "top_n_tokens"):
        if key in host and host[key] < 0:
            raise HostError(f"[host] {key} must be >= 0, got {host[key]}")
    limits = Limits.of(host)
    best_of = host.get("best_of", 1)
    if best_of < 1:
        raise HostError(f"[host] best_of must be >= 1, got {best_of}")
    if best_of > 1:
        if best_of > limits.max_best_of and not launching:
            raise HostError(f"[host] best_of = {best_of} exceeds the deployment's --max-best-of "
                            f"({limits.max_best_of}); raise [host] max_best_of and relaunch TGI with it")
        if not sampling(config, registry):
            raise HostError("[host] best_of > 1 makes TGI pick the sample with the highest mean token "
                            "log-probability among best_of samples, which needs sampling: set "
                            "[generation] do_sample = true or configure a sampling processor")
    if host.get("top_n_tokens", 0) > limits.max_top_n_tokens and not launching:
        raise HostError(f"[host] top_n_tokens = {host['top_n_tokens']} exceeds the deployment's "
                        f"--max-top-n-tokens ({limits.max_top_n_tokens}); raise [host] max_top_n_tokens")


# -- the Generator -----------------------------------------------------------------------------


class TGIGenerator(Watching, RemoteGenerator):
    """One request per sample; stop strings beyond the server's cap are enforced while streaming;
    watched samples stream (:meth:`watch_request`)."""

    samples_per_request = 1

    def parameters(self, max_new_tokens: int, stop: list[str], seed: int | None) -> tuple[dict[str, Any], list[str]]:
        """The ``text_generation`` keyword arguments of one request, and the stop strings left
        for the client to enforce (those beyond ``max_stop_sequences``)."""
        host = self.host
        params = {k: v for k, v in host.parameters.items() if k != "stop"}
        params.setdefault("max_new_tokens", max_new_tokens)
        params["max_new_tokens"] = min(params["max_new_tokens"], max_new_tokens)
        params["details"] = True
        if host.sampling:
            params["do_sample"] = True
        stops = list(dict.fromkeys(list(host.parameters.get("stop", [])) + list(stop)))
        cap = host.limits.max_stop_sequences
        if stops[:cap]:
            params["stop"] = stops[:cap]
        best_of = host.config.host.get("best_of", 1)
        if best_of > 1:
            params["best_of"] = best_of  # TGI forbids a seed with best_of
        elif seed is not None:
            params["seed"] = seed
        if host.config.host.get("top_n_tokens"):
            params["top_n_tokens"] = host.config.host["top_n_tokens"]
        if host.config.host.get("prompt_logprobs"):
            params["decoder_input_details"] = True
        return params, stops[cap:]

    async def request(self, text: str, n: int, max_new_tokens: int, stop: list[str],
                      seed: int | None, replica) -> list[Sample]:
        params, client_stops = self.parameters(max_new_tokens, stop, seed)
        if client_stops and "best_of" not in params:  # TGI cannot stream best_of
            return [await self._stream(replica.url, text, params, client_stops)]
        output = await (await self.host.client(replica.url)).text_generation(text, **params)
        return [self._parse(output, client_stops)]

    async def stream_request(self, text, max_new_tokens, stop, seed, replica, on_text) -> list[Sample]:
        """One sample streamed from ``/generate_stream``, ``on_text`` called with each token's
        text as it arrives (``best_of``, which TGI cannot stream, is sent whole once done)."""
        params, client_stops = self.parameters(max_new_tokens, stop, seed)
        if "best_of" in params:
            [sample] = await self.request(text, 1, max_new_tokens, stop, seed, replica)
            if sample.text:
                on_text(sample.text)
            return [sample]
        return [await self._stream(replica.url, text, params, client_stops, on_text)]

    async def watch_request(self, text, max_new_tokens, stop, seed, replica, stream: Stream,
                            on_text=None) -> list[Sample]:
        """One watched sample streamed from ``/generate_stream``, each token to ``stream`` as it
        comes, with at most ``[host] max_top_n_tokens`` top log-probabilities (TGI's cap, 5 by
        default); ``best_of``, which TGI cannot stream, shows once done."""
        params, client_stops = self.parameters(max_new_tokens, stop, seed)
        if "best_of" in params:
            [sample] = await self.request(text, 1, max_new_tokens, stop, seed, replica)
            stream.add(sample.text, sample.token_ids, sample.logprobs, prompt_tokens=sample.prompt_tokens,
                       finish="length" if sample.finish_reason == "length" else "stop")
            if on_text is not None and sample.text:
                on_text(sample.text)
            return [sample]
        k = min(stream.top_logprobs, self.host.limits.max_top_n_tokens)
        if k:
            params["top_n_tokens"] = max(k, params.get("top_n_tokens") or 0)
        return [await self._stream(replica.url, text, params, client_stops, on_text, stream)]

    async def _stream(self, url: str, text: str, params: dict[str, Any], client_stops: list[str],
                      on_text=None, watched: Stream | None = None) -> Sample:
        """Read ``/generate_stream`` until EOS, the token limit, or a client-side stop string;
        leaving the ``async with`` closes the connection, so TGI stops generating. ``on_text``
        gets each non-special token's text as it arrives, ``watched`` each token."""
        from huggingface_hub import AsyncInferenceClient

        params = {k: v for k, v in params.items() if k != "decoder_input_details"}  # not streamed
        tokens, pieces, top = [], [], []
        finish, prompt_tokens, seed = "length", 0, None
        async with AsyncInferenceClient(model=url, token=self.host.token, timeout=self.timeout) as client:
            events = await client.text_generation(text, stream=True, **params)
            try:
                async for event in events:
                    tokens.append(event.token)
                    if event.top_tokens:
                        top.append([{k: _get(t, k) for k in ("id", "text", "logprob")} for t in event.top_tokens])
                    if not event.token.special:
                        pieces.append(event.token.text)
                        if on_text is not None and event.token.text:
                            on_text(event.token.text)
                    if event.details is not None:
                        finish, prompt_tokens, seed = (event.details.finish_reason, event.details.input_length,
                                                       event.details.seed)
                    stopped = event.details is None and any(s in "".join(pieces) for s in client_stops)
                    if watched is not None:
                        _watched_token(watched, event, prompt_tokens, finish if event.details is not None
                                       else "stop_sequence" if stopped else None)
                    if event.details is not None:
                        break
                    if stopped:
                        finish = "stop_sequence"
                        break
            finally:
                await events.aclose()  # before the client closes the connection
        meta = {"seed": seed, "client_stop": finish == "stop_sequence" and bool(client_stops)}
        if top:
            meta["top_tokens"] = top
        return Sample(text="".join(pieces), token_ids=[t.id for t in tokens],
                      logprobs=[_logprob(t.logprob) for t in tokens], finish_reason=finish,
                      prompt_tokens=prompt_tokens, completion_tokens=len(tokens), meta=meta)

    def _parse(self, output, client_stops: list[str]) -> Sample:
        details = output.details
        if details is None:
            raise Failure("protocol", "the server returned no details (token ids and log-probs); "
                                      "is this a TGI deployment?")
        tokens, text, finish = list(details.tokens), output.generated_text, details.finish_reason
        if client_stops:  # best_of cannot stream: cut after the token that completed a stop string
            cut = _first_stop(tokens, client_stops)
            if cut is not None:
                tokens, finish = tokens[:cut], "stop_sequence"
                text = "".join(t.text for t in tokens if not t.special)
        meta: dict[str, Any] = {"seed": details.seed}
        if details.top_tokens:  # huggingface_hub leaves these nested rows as plain dicts
            meta["top_tokens"] = [[{k: _get(t, k) for k in ("id", "text", "logprob")} for t in row]
                                  for row in details.top_tokens[:len(tokens)]]
        if details.prefill:
            meta["prompt_logprobs"] = [_logprob(_get(t, "logprob")) for t in details.prefill]
        generated = details.generated_tokens
        if details.best_of_sequences:  # the other candidates TGI generated and discarded
            meta["best_of"] = 1 + len(details.best_of_sequences)
            generated += sum(_get(s, "generated_tokens") for s in details.best_of_sequences)
        return Sample(text=text, token_ids=[t.id for t in tokens], logprobs=[_logprob(t.logprob) for t in tokens],
                      finish_reason=finish, prompt_tokens=len(details.prefill),
                      completion_tokens=max(generated, len(tokens)), meta=meta)

    def classify(self, exc: BaseException) -> Failure:
        return classify(exc)


def _watched_token(stream: Stream, event, prompt_tokens: int, finish: str | None) -> None:
    """One streamed token to a watched sample's ``stream`` (its text unless special)."""
    k = stream.top_logprobs
    top = [sorted((_logprob(_get(t, "logprob")) for t in event.top_tokens or []), reverse=True)[:k]] if k else ()
    stream.add("" if event.token.special else event.token.text, [event.token.id], [_logprob(event.token.logprob)],
               top, prompt_tokens=prompt_tokens,
               finish=None if finish is None else "length" if finish == "length" else "stop")


def _get(item, key: str):
    return item[key] if isinstance(item, dict) else getattr(item, key)


def _logprob(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _first_stop(tokens, stops: list[str]) -> int | None:
    """How many tokens it takes for the generated text to contain one of ``stops``."""
    text = ""
    for i, token in enumerate(tokens):
        if not token.special:
            text += token.text
        if any(s in text for s in stops):
            return i + 1
    return None


# TGI's error_type -> Failure kind (router/src/server.rs: validation 422, overloaded 429,
# generation 424, incomplete_generation 500).
_ERROR_TYPES = {"ValidationError": "invalid", "OverloadedError": "rate_limit",
                "GenerationError": "server", "IncompleteGenerationError": "server"}


def classify(exc: BaseException) -> Failure:
    """A huggingface_hub / httpx exception as a :class:`Failure`: its kind, HTTP status, TGI's own
    message, and the server's Retry-After hint."""
    try:  # huggingface_hub 2 speaks httpx2; 1.x spoke httpx
        import httpx2
    except ImportError:  # pragma: no cover - depends on the installed huggingface_hub
        import httpx as httpx2
    from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError, TextGenerationError

    if isinstance(exc, (InferenceTimeoutError, httpx2.TimeoutException, TimeoutError)):
        return Failure("timeout", f"{exc}")
    response = None
    cause = exc.__cause__ if isinstance(exc, TextGenerationError) else exc
    if isinstance(cause, HfHubHTTPError):
        response = cause.response
    status = response.status_code if response is not None else None
    wait = retry_after(response.headers if response is not None else None)
    if isinstance(exc, TextGenerationError):  # TGI's own error body: {"error", "error_type"}
        kind = _ERROR_TYPES.get(type(exc).__name__) or status_kind(status) or "server"
        return Failure(kind, str(exc), status=status, retry_after=wait)
    if isinstance(exc, HfHubHTTPError):
        return Failure(status_kind(status) or "server", _http_message(exc), status=status, retry_after=wait)
    if isinstance(exc, (httpx2.TransportError, ConnectionError)):
        return Failure("connection", f"{type(exc).__name__}: {exc}")
    if isinstance(exc, OSError):
        return Failure("connection", f"{type(exc).__name__}: {exc}")
    return Failure("protocol", f"malformed answer ({type(exc).__name__}: {exc})")  # not retried


def _http_message(exc) -> str:
    """The server's own words: TGI's {"error": ...} body when there is one."""
    try:
        body = exc.response.json()
        if isinstance(body, dict) and body.get("error"):
            return str(body["error"])
    except Exception:  # a streamed body that was not read, or not JSON
        pass
    return str(exc).splitlines()[0]


# -- the host ----------------------------------------------------------------------------------


class TGIHost(RemoteHost):
    """A TGI deployment at ``[host] url``, or several replicas of one model (``[host] urls``)."""

    name = "tgi"
    generator_class = TGIGenerator
    requests_per_replica = 128  # TGI's default --max-concurrent-requests (more would get 429)

    def __init__(self, config, registry, model=None, tokenizer=None) -> None:
        self.limits = Limits.of(config.host)
        self.token = config.host.get("api_key")
        super().__init__(config, registry, model, tokenizer)
        self.sampling = sampling(config, registry)

    def check(self) -> None:
        check_settings(self.config, self.registry)

    async def client(self, url: str | None = None):
        """The client of the replica at ``url`` (default: the first) for non-streamed requests,
        created on the host's event loop on first use."""
        url = url or self.url
        if url not in self._clients:
            from huggingface_hub import AsyncInferenceClient

            self._clients[url] = AsyncInferenceClient(model=url, token=self.token,
                                                      timeout=self.config.host.get("timeout", 60.0))
        return self._clients[url]

    async def aclose_clients(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()


__all__ = ["TGIHost", "TGIGenerator", "check_settings", "classify"]
