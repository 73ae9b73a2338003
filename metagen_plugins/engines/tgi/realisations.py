"""How the built-in components run on a TGI deployment: each one's request parameters, by
section and name, registered with the TGI host (``register(..., realisations=REALISATIONS)``).

TGI has no plugin point, so only what maps onto its fixed request parameters is here; every
other component is refused at validation, naming the host. Stop strings need nothing here: the
TGI host realises them natively (``Capabilities(stop_strings=True)``).
"""

from __future__ import annotations

import json

from metagen_hooks import ConfigError


def same(key: str, engine_key: str | None = None):
    """A realiser passing one parameter straight through (under the engine's own name)."""

    def realise(**params):
        return {engine_key or key: params[key]}

    return realise


def below_one(key: str, engine_key: str | None = None):
    """TGI takes top_p / typical_p only in (0, 1): 1.0 (keep everything) is sent as nothing."""

    def realise(**params):
        return {engine_key or key: params[key]} if params[key] < 1.0 else {}

    return realise


def watermark(greenlist_ratio: float = 0.25, bias: float = 2.0, hashing_key: int = 15485863,
              seeding_scheme: str = "lefthash", context_width: int = 1) -> dict:
    """TGI's watermark is Kirchenbauer's left-hash scheme with its fixed key and one token of
    context (ratio and bias are set at launch: --watermark-gamma/-delta)."""
    fixed = {"hashing_key": (hashing_key, 15485863), "seeding_scheme": (seeding_scheme, "lefthash"),
             "context_width": (context_width, 1)}
    changed = [f"{k} = {v!r}" for k, (v, default) in fixed.items() if v != default]
    if changed:
        raise ConfigError(f"logits processor 'watermark': TGI fixes the hashing key, seeding scheme and "
                          f"context width; {', '.join(changed)} needs an in-process host")
    return {"watermark": True}


def grammar(regex: str | None = None, json_schema: dict | str | None = None, lark: str | None = None,
            json_whitespace: bool = False) -> dict:
    """TGI's ``grammar`` request parameter: {"type": "regex"|"json", "value": ...}. TGI compiles
    it with its own engine (outlines); it has no Lark grammars and chooses JSON whitespace itself."""
    if lark is not None:
        raise ConfigError("logits processor 'grammar': TGI takes a regex or a JSON schema, not a Lark "
                          "grammar; use regex/json_schema, or an in-process host")
    if regex is not None:
        return {"grammar": {"type": "regex", "value": regex}}
    if json_schema is None:
        raise ConfigError("logits processor 'grammar': give exactly one of regex, json_schema or lark")
    schema = json.loads(json_schema) if isinstance(json_schema, str) else json_schema
    return {"grammar": {"type": "json", "value": schema}}


REALISATIONS = {
    "processors": {
        "temperature": same("temperature"),
        "top_k": same("top_k"),
        "top_p": below_one("top_p"),
        "typical": below_one("mass", "typical_p"),
        "repetition_penalty": same("penalty", "repetition_penalty"),
        "frequency_penalty": same("penalty", "frequency_penalty"),
        "watermark": watermark,
        "grammar": grammar,
    },
    "stopping": {
        "token_budget": lambda max_tokens: {"max_new_tokens": max_tokens},
    },
}
