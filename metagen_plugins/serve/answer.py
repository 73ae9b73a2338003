"""A strategy's Result as OpenAI's response objects (and SSE chunks), with metagen's extension
field: the selection, the number of candidates, the budget spent and a trace id."""

from __future__ import annotations

import json
import time
from typing import Any, Iterable

from metagen_hooks import Result


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


def chat_chunks(rid: str, model: str, result: Result, ext: dict[str, Any], include_usage: bool) -> Iterable[str]:
    """The SSE events of a streamed chat answer: the role, the chosen text, the finish reason
    (with the extension field), usage when asked, ``[DONE]``."""
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}
        if include_usage:
            body["usage"] = None
        return sse(body)

    yield chunk({"role": "assistant", "content": ""})
    if result.best.text:
        yield chunk({"content": result.best.text})
    yield chunk({}, result.best.finish_reason, metagen=ext)
    if include_usage:
        yield sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                   "system_fingerprint": None, "choices": [], "usage": usage([result])})
    yield "data: [DONE]\n\n"


def completion_chunks(rid: str, model: str, result: Result, ext: dict[str, Any],
                      include_usage: bool) -> Iterable[str]:
    created = int(time.time())

    def chunk(text: str, finish: str | None = None, **extra: Any) -> str:
        body = {"id": rid, "object": "text_completion", "created": created, "model": model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}], **extra}
        if include_usage:
            body["usage"] = None
        return sse(body)

    if result.best.text:
        yield chunk(result.best.text)
    yield chunk("", result.best.finish_reason, metagen=ext)
    if include_usage:
        yield sse({"id": rid, "object": "text_completion", "created": created, "model": model,
                   "system_fingerprint": None, "choices": [], "usage": usage([result])})
    yield "data: [DONE]\n\n"


def sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body)}\n\n"
