"""OpenAI's ``POST /v1/completions`` protocol, for the remote hosts that speak it (the vLLM host,
and the ``openai`` host of ``contrib/metagen-openai`` for any OpenAI-compatible server): the
request body, the answer's choices as samples, an error answer as a failure, and a client error
as a failure. What is particular to one engine (vLLM's ``vllm_xargs``, ``return_token_ids``,
neutral sampling defaults) stays in that engine's host, which adds it to the body built here.
"""

from __future__ import annotations

import json
from typing import Any

from .retrying import retry_after, status_kind
from .generator import Failure, RemoteGenerator, Sample
from .remote_watch import Stream, Watching

# A component's request parameter that the host, not the component, decides: whether texts keep
# the stop string that ended them (so that extending a prefix continues after it).
INCLUDE_STOP = "include_stop_str_in_output"


def request_body(text: str, n: int, max_new_tokens: int, stop: list[str], seed: int | None,
                 parameters: dict[str, Any], *, settings: dict[str, Any], sampling: bool,
                 logprobs: int | None, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON body of one completions request: ``n`` samples of ``text``, at most
    ``max_new_tokens`` (or a component's smaller ``max_tokens``), the components' stop strings
    and the request's, ``seed``; the components' other ``parameters`` over ``defaults``;
    ``temperature = 0`` when the configuration does not sample; ``logprobs`` (the number of
    alternatives per token) unless None; ``model`` from ``settings`` when set."""
    params = dict(parameters)
    limit = min(max_new_tokens, params.pop("max_tokens", max_new_tokens))
    stops = list(dict.fromkeys([*params.pop("stop", []), *stop]))
    params.pop(INCLUDE_STOP, None)
    body: dict[str, Any] = {"prompt": text, "n": n, "max_tokens": limit}
    if logprobs is not None:
        body["logprobs"] = logprobs
    if "model" in settings:
        body["model"] = settings["model"]
    body.update(defaults or {})
    body.update(params)
    if not sampling:
        body["temperature"] = 0.0  # greedy, as on the transformers host without sampling
    if stops:
        body["stop"] = stops
    if seed is not None:
        body["seed"] = seed
    return body


def samples(data: dict[str, Any], n: int) -> list[Sample]:
    """The choices of a completions answer, in order. Token ids come only from servers that
    return them (vLLM's ``return_token_ids``); log-probabilities stay on the candidate only
    beside them (the two must align), else in its ``meta["logprobs"]``. A trailing
    end-of-sequence token (finish "stop" with no stop string) is dropped, as every metagen host
    drops it, so token ids, log-probs and text align."""
    choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
    if len(choices) != n:
        raise ValueError(f"asked for {n} choices, got {len(choices)}")
    usage = data.get("usage") or {}
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    computed = int(usage.get("prompt_tokens") or 0) - cached  # the rest came from the server's cache
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
        if choice.get("stop_reason") is not None:
            meta["stop_reason"] = choice["stop_reason"]
        if logprobs and len(logprobs) != len(ids):
            meta["logprobs"], logprobs = logprobs, []
        out.append(Sample(text=choice["text"], token_ids=ids, logprobs=logprobs, finish_reason=finish,
                          prompt_tokens=computed, prompt_tokens_reused=cached, completion_tokens=generated,
                          meta=meta))
    return out


def status_failure(response) -> Failure:
    """An HTTP error answer as a Failure, with the server's own message (OpenAI's error body,
    or a bare ``message`` / ``detail``)."""
    try:
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else error
        if not message and isinstance(body, dict):
            message = body.get("message") or body.get("detail")
        message = message or json.dumps(body)[:500]
    except ValueError:
        message = response.text[:500] or response.reason_phrase
    return Failure(status_kind(response.status_code), str(message), response.status_code,
                   retry_after(response.headers))


class CompletionsGenerator(Watching, RemoteGenerator):
    """A remote generator whose requests go to a completions route (``host.path(url)``) and are
    read by :func:`samples`; ``host.server`` names the server in connection errors. Plain
    decoding streams (:meth:`stream_request`, OpenAI's server-sent events), and so do watched
    samples (:meth:`watch_request`, one per request)."""

    async def request(self, text, n, max_new_tokens, stop, seed, replica) -> list[Sample]:
        import httpx2

        body = self.host.request_body(text, n, max_new_tokens, stop, seed)
        try:
            response = await self.host.http_client(replica.url).post(self.host.path(replica.url), json=body)
        except httpx2.HTTPError as exc:
            raise self.classify(exc, replica.url) from None
        if response.status_code >= 400:
            raise status_failure(response)
        try:
            return samples(response.json(), n)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise Failure("protocol", f"malformed /v1/completions answer ({type(exc).__name__}: {exc}): "
                                      f"{response.text[:300]!r}") from None

    async def stream_request(self, text, max_new_tokens, stop, seed, replica, on_text) -> list[Sample]:
        """One sample, streamed (``"stream": true``): ``on_text`` gets each chunk's text as the
        server sends it; the chunks are assembled into the answer :meth:`request` would read."""
        body = {**self.host.request_body(text, 1, max_new_tokens, stop, seed), "stream": True,
                "stream_options": {"include_usage": True}}
        choice = _choice()

        def add(part) -> None:
            piece = _merge(choice, part)
            if piece:
                on_text(piece)

        return _answer(choice, await self._chunks(body, replica, add))

    async def watch_request(self, text, max_new_tokens, stop, seed, replica, stream: Stream,
                            on_text=None) -> list[Sample]:
        """One watched sample, streamed: each chunk's text, token ids (when the server returns
        them), log-probs and top log-probs to ``stream`` as it comes (:meth:`watch_body` asks
        for them); the answer assembled as :meth:`stream_request` assembles it."""
        k = stream.top_logprobs
        body = self.watch_body({**self.host.request_body(text, 1, max_new_tokens, stop, seed), "stream": True,
                                "stream_options": {"include_usage": True}}, k)
        choice = _choice()

        def add(part) -> None:
            piece = _merge(choice, part)
            lp = part.get("logprobs") or {}
            logprobs = [float(v) if v is not None else float("-inf") for v in lp.get("token_logprobs") or []]
            top = [sorted((float(v) for v in (d or {}).values()), reverse=True)[:k]
                   for d in lp.get("top_logprobs") or []] if k else ()
            ids = part.get("token_ids")
            finish = part.get("finish_reason")
            stream.add(piece, [int(t) for t in ids] if ids is not None else None, logprobs, top,
                       prompt_tokens=len(part.get("prompt_token_ids") or []),
                       finish=None if finish is None else "stop" if finish == "stop" else "length",
                       drop_eos=finish == "stop" and part.get("stop_reason") is None)
            if piece and on_text is not None:
                on_text(piece)

        return _answer(choice, await self._chunks(body, replica, add))

    def watch_body(self, body: dict[str, Any], top_logprobs: int) -> dict[str, Any]:
        """A watched request's body: with ``top_logprobs`` k > 0, ``logprobs`` k (OpenAI's
        ``top_logprobs`` per token: the k likeliest tokens' log-probabilities, and the sampled
        token's)."""
        if top_logprobs > 0:
            body["logprobs"] = max(top_logprobs, body.get("logprobs") or 0)
        return body

    async def _chunks(self, body: dict[str, Any], replica, on_part) -> dict | None:
        """Send ``body`` to ``replica`` and read the server-sent events: ``on_part`` gets each
        chunk's choices as they come; the usage (the last chunk's) is returned. Leaving early
        (an exception, the task cancelled) closes the connection: vLLM aborts the request."""
        import httpx2

        usage = None
        try:
            async with self.host.http_client(replica.url).stream("POST", self.host.path(replica.url),
                                                                 json=body) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise status_failure(response)
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
                        on_part(part)
        except httpx2.HTTPError as exc:
            raise self.classify(exc, replica.url) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise Failure("protocol", f"malformed /v1/completions stream ({type(exc).__name__}: {exc})") from None
        return usage


def _choice() -> dict[str, Any]:
    """An empty choice that a stream's chunks are merged into (:func:`_merge`)."""
    return {"index": 0, "text": "", "token_ids": [], "logprobs": {"token_logprobs": []},
            "finish_reason": None, "stop_reason": None}


def _merge(choice: dict[str, Any], part: dict[str, Any]) -> str:
    """Add one chunk's choice to ``choice``; its new text."""
    piece = part.get("text") or ""
    choice["text"] += piece
    choice["token_ids"] += part.get("token_ids") or []
    choice["logprobs"]["token_logprobs"] += (part.get("logprobs") or {}).get("token_logprobs") or []
    for key in ("finish_reason", "stop_reason"):
        choice[key] = part.get(key) or choice[key]
    return piece


def _answer(choice: dict[str, Any], usage: dict | None) -> list[Sample]:
    """A streamed choice as :func:`samples` reads a whole answer."""
    if choice["finish_reason"] is None:
        raise Failure("protocol", "the /v1/completions stream ended without a finish reason")
    return samples({"choices": [choice], "usage": usage or {}}, 1)
