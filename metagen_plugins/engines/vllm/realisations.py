"""How the built-in components run on a vLLM server: each one's request parameters, by section
and name, registered with the vLLM host (``register(..., realisations=REALISATIONS)``).

Sampling parameters vLLM implements itself (temperature, top-k/p, min-p, penalties, logit bias,
structured outputs) are passed through; a component only metagen implements runs inside the
server through the metagen-vllm plugin (:func:`metagen_hooks.engines.server_side`). Stop strings
need nothing here: the vLLM host realises them natively (``Capabilities(stop_strings=True)``).
"""

from __future__ import annotations

import json

from metagen_hooks.engines import server_side


def same(key: str, engine_key: str | None = None):
    """A realiser passing one parameter straight through (under the engine's own name)."""

    def realise(**params):
        return {engine_key or key: params[key]}

    return realise


def grammar(regex: str | None = None, json_schema: dict | str | None = None, lark: str | None = None,
            json_whitespace: bool = False) -> dict:
    """vLLM's own structured outputs (``structured_outputs`` request field; its ``guidance``
    backend is llguidance, as metagen's in-process grammar)."""
    if regex is not None:
        return {"structured_outputs": {"regex": regex}}
    if lark is not None:
        return {"structured_outputs": {"grammar": lark}}
    schema = json.loads(json_schema) if isinstance(json_schema, str) else json_schema
    return {"structured_outputs": {"json": schema, "disable_any_whitespace": not json_whitespace}}


REALISATIONS = {
    "processors": {
        "temperature": same("temperature"),
        "top_k": same("top_k"),
        "top_p": same("top_p"),
        "min_p": same("min_p"),
        "repetition_penalty": same("penalty", "repetition_penalty"),
        "frequency_penalty": same("penalty", "frequency_penalty"),
        "presence_penalty": same("penalty", "presence_penalty"),
        "logit_bias": lambda bias: {"logit_bias": {str(k): float(v) for k, v in bias.items()}},  # vLLM clamps to ±100
        "grammar": grammar,
        # metagen's own, inside the server (metagen-vllm); multi-model ones need their side
        # models at the same paths on the server
        "typical": server_side("typical"),
        "epsilon": server_side("epsilon"),
        "eta": server_side("eta"),
        "no_repeat_ngram": server_side("no_repeat_ngram"),
        "sequence_bias": server_side("sequence_bias"),
        "bad_words": server_side("bad_words"),
        "mirostat": server_side("mirostat"),
        "contrastive": server_side("contrastive"),
        "logit_arithmetic": server_side("logit_arithmetic"),
        "dexperts": server_side("dexperts"),
        "proxy_tuning": server_side("proxy_tuning"),
    },
    "stopping": {
        "token_budget": lambda max_tokens: {"max_tokens": max_tokens},
        "regex": server_side("regex", "stopping"),
        "answer_complete": server_side("answer_complete", "stopping"),
        "confidence": server_side("confidence", "stopping"),
    },
}
