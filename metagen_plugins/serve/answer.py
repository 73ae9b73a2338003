"""A strategy's Result as OpenAI's response objects (and SSE chunks), with metagen's extension
field: the selection, the number of candidates, the budget spent and a trace id."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Iterable

from metagen_hooks import Result


def response_id(route: str) -> str:
    """A new answer's id, prefixed as OpenAI's are: ``chatcmpl-`` or ``cmpl-``."""
    return f"{'chatcmpl' if route == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"


def usage(results: Iterable[Result]) -> dict[str, Any]:
    """Everything the strategies spent: every candidate's tokens, not just the chosen one's;
    prompt tokens reused from a prefix cache are reported as cached."""
    computed = reused = generated = 0
    for result in results:
        spent = result.budget
        computed += spent.prompt_tokens_computed
        reused += spent.prompt_tokens_reused
        generated += spent.tokens_generated
    return {"prompt_tokens": computed + reused, "completion_tokens": generated,
            "total_tokens": computed + reused + generated, "prompt_tokens_details": {"cached_tokens": reused}}


def extension(result: Result, profile: str, trace_id: str, with_candidates: bool) -> dict[str, Any]:
    """What the strategy did: its selection event (votes or scores), candidates, budget."""
    selection = next((e for e in reversed(result.trace) if e.get("event") == "select"), None)
    out: dict[str, Any] = {
        "profile": profile,
        "strategy": result.strategy,
        "trace_id": trace_id,
        "num_candidates": len(result.candidates),
        "selection": {k: v for k, v in selection.items() if k != "event"} if selection else None,
        "scores": list(result.scores),
        "budget": {**result.budget.spent(), "limits": {"max_tokens": result.budget.max_tokens,
                                                       "max_samples": result.budget.max_samples,
                                                       "max_flops": result.budget.max_flops}},
    }
    if result.failures:
        out["failures"] = [{k: f.get(k) for k in ("kind", "component", "status", "error") if k in f}
                           for f in result.failures]
    if with_candidates:
        scores = list(result.scores) + [None] * (len(result.candidates) - len(result.scores))
        out["candidates"] = [{"text": c.text, "finish_reason": c.finish_reason, "score": s,
                              "chosen": c is result.best} for c, s in zip(result.candidates, scores)]
    return out


def chat_completion(rid: str, model: str, result: Result, ext: dict[str, Any]) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.best.text},
                         "logprobs": None, "finish_reason": result.best.finish_reason}],
            "usage": usage([result]), "metagen": ext}


def completion(rid: str, model: str, results: list[Result], exts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "system_fingerprint": None,
            "choices": [{"index": i, "text": r.best.text, "logprobs": None, "finish_reason": r.best.finish_reason}
                        for i, r in enumerate(results)],
            "usage": usage(results), "metagen": exts[0] if len(exts) == 1 else exts}


class Stream:
    """The server-sent events of one streamed answer, chat or completions, in OpenAI's shape:
    (chat) the role, the text in pieces, the finish reason carrying metagen's extension, a
    usage chunk when ``stream_options.include_usage`` asked, ``[DONE]``."""

    def __init__(self, route: str, rid: str, model: str, include_usage: bool) -> None:
        self.chat = route == "chat"
        self.rid, self.model, self.include_usage = rid, model, include_usage
        self.created = int(time.time())

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        body = {"id": self.rid, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "system_fingerprint": None,
                "choices": choices, **extra}
        if self.include_usage and "usage" not in extra:
            body["usage"] = None
        return sse(body)

    def _choice(self, text: str | None, finish: str | None = None) -> dict[str, Any]:
        if self.chat:
            return {"index": 0, "delta": {} if text is None else {"content": text}, "logprobs": None,
                    "finish_reason": finish}
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}

    def start(self) -> list[str]:
        return [self._chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None}])] if self.chat else []

    def text(self, text: str) -> list[str]:
        return [self._chunk([self._choice(text)])] if text else []

    def end(self, result: Result, ext: dict[str, Any]) -> list[str]:
        events = [self._chunk([self._choice(None, result.best.finish_reason)], metagen=ext)]
        if self.include_usage:
            events.append(self._chunk([], usage=usage([result])))
        return [*events, "data: [DONE]\n\n"]

    def error(self, body: dict[str, Any]) -> list[str]:
        """A failure after the stream began (its HTTP status is sent already): OpenAI's error
        object as an event, then ``[DONE]``."""
        return [sse(body), "data: [DONE]\n\n"]

    def whole(self, result: Result, ext: dict[str, Any]) -> list[str]:
        """The whole stream of an answer chosen before anything was sent."""
        return [*self.start(), *self.text(result.best.text), *self.end(result, ext)]


def sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body)}\n\n"
