"""The TGI host: strategies over a text-generation-inference deployment.

TGI has no plugin point: per request it takes a fixed set of sampling parameters, so every
configured component must map onto them (each declares its ``tgi=`` realiser) or validation
rejects it before any request. Requests go through ``huggingface_hub``'s
``AsyncInferenceClient.text_generation`` (POST to the deployment's root route, which answers
``/generate`` or, streamed, ``/generate_stream``) with ``details=True`` for token ids and
log-probabilities. N samples are N concurrent requests (the host's in-flight limit and its
replicas are :mod:`.remote`'s and :mod:`.replicas`').

More stop strings than the deployment accepts (``--max-stop-sequences``, 4 by default) are
enforced here: the first ones go to the server, the rest are watched over ``/generate_stream``
and the stream is closed as soon as one appears in the text.

Besides the host, this module builds the ``text-generation-launcher`` arguments for a
configuration (:func:`launcher_args`) and checks a running deployment (:func:`check_deployment`).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError, HostError
from .remote import Failure, RemoteGenerator, RemoteHost, Sample, retry_after, status_kind

# TGI's launcher defaults and accepted values (text-generation-inference, launcher/src/main.rs).
DEFAULT_MAX_BEST_OF = 2
DEFAULT_MAX_STOP_SEQUENCES = 4
DEFAULT_MAX_TOP_N_TOKENS = 5
KV_CACHE_DTYPES = ("fp8_e4m3fn", "fp8_e5m2")
QUANTIZE = ("awq", "compressed-tensors", "eetq", "exl2", "gptq", "marlin", "bitsandbytes",
            "bitsandbytes-nf4", "bitsandbytes-fp4", "fp8")
IMAGE = "ghcr.io/huggingface/text-generation-inference:latest"
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


def check_settings(config, launching: bool = False) -> None:
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
        if not _sampling(config):
            raise HostError("[host] best_of > 1 makes TGI pick the sample with the highest mean token "
                            "log-probability among best_of samples, which needs sampling: set "
                            "[generation] do_sample = true or configure a sampling processor")
    if host.get("top_n_tokens", 0) > limits.max_top_n_tokens and not launching:
        raise HostError(f"[host] top_n_tokens = {host['top_n_tokens']} exceeds the deployment's "
                        f"--max-top-n-tokens ({limits.max_top_n_tokens}); raise [host] max_top_n_tokens")


def _sampling(config) -> bool:
    """Whether requests sample: [generation] do_sample, else whether a sampling processor is set
    (the transformers host's rule)."""
    if "do_sample" in config.generation:
        return bool(config.generation["do_sample"])
    from .. import get_registry

    registry = get_registry()
    return any(registry.get("logits_processors", e["name"]).sampling for e in config.processors)


# -- the Generator -----------------------------------------------------------------------------


class TGIGenerator(RemoteGenerator):
    """One request per sample; stop strings beyond the server's cap are enforced while streaming."""

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

    async def _stream(self, url: str, text: str, params: dict[str, Any], client_stops: list[str]) -> Sample:
        """Read ``/generate_stream`` until EOS, the token limit, or a client-side stop string;
        leaving the ``async with`` closes the connection, so TGI stops generating."""
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
                    if event.details is not None:
                        finish, prompt_tokens, seed = (event.details.finish_reason, event.details.input_length,
                                                       event.details.seed)
                        break
                    if any(s in "".join(pieces) for s in client_stops):
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
        self._clients: dict[str, Any] = {}  # replica URL -> its client
        super().__init__(config, registry, model, tokenizer)
        self.sampling = _sampling(config)

    def check(self) -> None:
        check_settings(self.config)

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


# -- launcher configuration --------------------------------------------------------------------


def launcher_args(config) -> list[str]:
    """The ``text-generation-launcher`` arguments a deployment needs to serve ``config``."""
    check_settings(config, launching=True)
    host = config.host
    if "model_id" not in host:
        raise ConfigError("set [host] model_id (the Hub id or local path TGI serves) to build the "
                          "launcher arguments")
    args = ["--model-id", host["model_id"]]
    if host.get("speculate"):
        args += ["--speculate", str(host["speculate"])]
    if "kv_cache" in host:
        args += ["--kv-cache-dtype", host["kv_cache"]]
    if "quantize" in host:
        args += ["--quantize", host["quantize"]]
    best_of = max(host.get("max_best_of", 0), host.get("best_of", 1))
    if best_of > DEFAULT_MAX_BEST_OF or "max_best_of" in host:
        args += ["--max-best-of", str(best_of)]
    stops = sum(len(e.get("stop", [])) for e in config.stopping if e["name"] == "stop_strings")
    stops = max(stops, host.get("max_stop_sequences", 0))
    if stops > DEFAULT_MAX_STOP_SEQUENCES or "max_stop_sequences" in host:
        args += ["--max-stop-sequences", str(stops)]
    top_n = max(host.get("max_top_n_tokens", 0), host.get("top_n_tokens", 0))
    if top_n > DEFAULT_MAX_TOP_N_TOKENS or "max_top_n_tokens" in host:
        args += ["--max-top-n-tokens", str(top_n)]
    for entry in config.processors:
        if entry["name"] == "watermark":  # per request TGI only switches it on; these are global
            args += ["--watermark-gamma", f"{entry.get('greenlist_ratio', 0.25):g}",
                     "--watermark-delta", f"{entry.get('bias', 2.0):g}"]
    return args


def launcher_command(config) -> str:
    """``text-generation-launcher`` with :func:`launcher_args`, quoted for a POSIX shell."""
    return shlex.join(["text-generation-launcher", *launcher_args(config)])


def docker_command(config, image: str = IMAGE) -> str:
    """The equivalent ``docker run`` of TGI's container, publishing the port of ``[host] url``."""
    args = launcher_args(config)
    port = urlsplit(config.host["url"]).port if "url" in config.host else None
    return (f"docker run --gpus all --shm-size 1g -p {port or 8080}:80 -v \"$PWD/data:/data\" "
            f"{shlex.quote(image)} {shlex.join(args)}")


# -- checking a deployment ---------------------------------------------------------------------


@dataclass
class CheckLine:
    status: str  # ok, FAIL or note
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"{self.status:<4}  {self.subject}: {self.detail}"


def check_deployment(url: str, config=None, timeout: float = 10.0) -> tuple[dict[str, Any], list[CheckLine]]:
    """Read ``/info`` and ``/health`` of the deployment at ``url``; say which limits and which
    configured components it supports. Returns the /info document and the report lines."""
    from huggingface_hub import InferenceClient

    client = InferenceClient(model=url.rstrip("/"), provider="hf-inference", timeout=timeout,
                             token=config.host.get("api_key") if config is not None else None)
    try:
        info = client.get_endpoint_info()
        healthy = client.health_check()
    except Exception as exc:
        failure = classify(exc)
        raise HostError(f"cannot read {url.rstrip('/')}/info: {failure}") from None
    lines = [CheckLine("ok" if healthy else "FAIL", "health", "GET /health answered 200" if healthy
                       else "GET /health did not answer 200: the model is not ready")]
    lines.append(CheckLine("note", "model", f"{info.get('model_id')} (TGI {info.get('version')}, "
                                            f"router {info.get('router')})"))
    for key in ("max_input_tokens", "max_total_tokens", "max_concurrent_requests", "max_client_batch_size",
                "max_best_of", "max_stop_sequences"):
        if key in info:
            lines.append(CheckLine("note", key, str(info[key])))
    if config is None:
        return info, lines
    lines += _config_lines(info, config)
    return info, lines


def _config_lines(info: dict[str, Any], config) -> list[CheckLine]:
    host, out = config.host, []
    if "model_id" in host and info.get("model_id") not in (None, host["model_id"]):
        out.append(CheckLine("FAIL", "model_id", f"configured {host['model_id']!r}, the server serves "
                                                 f"{info.get('model_id')!r}"))
    best_of = host.get("best_of", 1)
    if best_of > 1:
        ok = best_of <= info.get("max_best_of", DEFAULT_MAX_BEST_OF)
        out.append(CheckLine("ok" if ok else "FAIL", "best_of", f"{best_of} (server max_best_of "
                             f"{info.get('max_best_of')}){'' if ok else ': relaunch with --max-best-of'}"))
    for key in ("max_best_of", "max_stop_sequences"):
        if key in host and key in info and host[key] != info[key]:
            out.append(CheckLine("FAIL", key, f"configured {host[key]}, the server says {info[key]}: "
                                              f"set [host] {key} = {info[key]}"))
    cap = info.get("max_stop_sequences", DEFAULT_MAX_STOP_SEQUENCES)
    for key, default in (("max_best_of", DEFAULT_MAX_BEST_OF), ("max_stop_sequences", DEFAULT_MAX_STOP_SEQUENCES)):
        if key not in host and info.get(key, default) > default:
            out.append(CheckLine("note", key, f"the server allows {info[key]}; set [host] {key} = {info[key]} "
                                              f"to use them (metagen assumes TGI's default {default})"))
    for entry in config.processors + config.stopping:
        name = entry["name"]
        if name == "stop_strings" and len(entry.get("stop", [])) > cap:
            out.append(CheckLine("ok", name, f"{len(entry['stop'])} stop strings, server takes {cap}: "
                                             f"the rest are enforced client-side over /generate_stream"))
        elif name == "watermark":
            out.append(CheckLine("note", name, "supported (watermark=true); /info does not show the "
                                               "server's --watermark-gamma/--watermark-delta"))
        else:
            out.append(CheckLine("ok", name, "supported as request parameters"))
    if "top_n_tokens" in host:
        out.append(CheckLine("note", "top_n_tokens", f"{host['top_n_tokens']}: /info does not report "
                             f"--max-top-n-tokens (default {DEFAULT_MAX_TOP_N_TOKENS})"))
    for key in ("speculate", "kv_cache", "quantize"):
        if key in host:
            out.append(CheckLine("note", key, f"{host[key]}: a launcher setting /info does not report"))
    if host.get("concurrency", TGIHost.requests_per_replica) > info.get("max_concurrent_requests", 1 << 30):
        out.append(CheckLine("FAIL", "concurrency", f"[host] concurrency {host['concurrency']} exceeds "
                             f"max_concurrent_requests {info['max_concurrent_requests']}: requests would "
                             f"be refused with 429"))
    budget = info.get("max_total_tokens", 0) - info.get("max_input_tokens", 0)
    wanted = config.generation.get("max_new_tokens")
    if wanted and budget > 0 and wanted > budget:
        out.append(CheckLine("FAIL", "max_new_tokens", f"{wanted} > max_total_tokens - max_input_tokens "
                                                      f"({budget}): TGI rejects such requests"))
    return out


def run_check(url: str, config=None) -> int:
    """`metagen tgi check`: print the report; 1 if anything failed."""
    _, lines = check_deployment(url, config)
    for line in lines:
        print(line)
    return 1 if any(line.status == "FAIL" for line in lines) else 0


__all__ = ["TGIHost", "TGIGenerator", "classify", "launcher_args", "launcher_command", "docker_command",
           "check_deployment"]
