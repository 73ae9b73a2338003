"""Structured generation: constrain every sampled row to a regular expression, a JSON schema or
a Lark grammar, through llguidance (the engine behind Guidance; also used by vLLM and
llama.cpp). metagen writes no parser of its own: it asks llguidance for each row's allowed
tokens and masks the rest (Willard & Louf, 2023, "Efficient Guided Generation for LLMs";
Microsoft's llguidance).
"""

from __future__ import annotations

import json
import weakref

_TOKENIZERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _ll_tokenizer(tokenizer):
    """llguidance's view of a transformers tokenizer (built once per tokenizer: ~1 s)."""
    cached = _TOKENIZERS.get(tokenizer)
    if cached is not None:
        return cached
    import llguidance
    import llguidance.hf

    try:
        ll = llguidance.hf.from_tokenizer(tokenizer)
    except ValueError:  # a tokenizer llguidance cannot read directly (e.g. a custom decoder)
        ll = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_VocabView(tokenizer)))
    _TOKENIZERS[tokenizer] = ll
    return ll


class _VocabView:
    """Token bytes and an encode function: what llguidance needs from any tokenizer."""

    def __init__(self, tokenizer) -> None:
        self.eos_token_id = tokenizer.eos_token_id
        self.bos_token_id = tokenizer.bos_token_id
        self.special_token_ids = list(tokenizer.all_special_ids)
        size = len(tokenizer)
        self.tokens = [b"" if i in self.special_token_ids else tokenizer.decode([i]).encode("utf-8")
                       for i in range(size)]
        self._tokenizer = tokenizer

    def __call__(self, text):
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._tokenizer.encode(text, add_special_tokens=False)


class Grammar:
    """Allow only tokens that keep each row inside the grammar; once it is complete, only EOS.

    Give exactly one of ``regex``, ``json_schema`` (a dict or its JSON text) or ``lark``.
    JSON is compact unless ``json_whitespace`` allows whitespace between tokens.
    """

    def __init__(self, regex: str | None = None, json_schema: dict | str | None = None,
                 lark: str | None = None, json_whitespace: bool = False, tokenizer=None) -> None:
        import llguidance

        given = [k for k, v in (("regex", regex), ("json_schema", json_schema), ("lark", lark)) if v is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of regex, json_schema or lark (got {given or 'none'})")
        if regex is not None:
            self.grammar = llguidance.LLMatcher.grammar_from_regex(regex)
        elif lark is not None:
            self.grammar = llguidance.LLMatcher.grammar_from_lark(lark)
        else:
            schema = json.loads(json_schema) if isinstance(json_schema, str) else json_schema
            self.grammar = llguidance.LLMatcher.grammar_from_json_schema(
                schema, defaults={"whitespace_flexible": json_whitespace})
        error = llguidance.LLMatcher.validate_grammar(self.grammar)
        if error and not error.startswith("WARNING"):
            raise ValueError(f"{given[0]} is not a valid grammar: {error}")
        if tokenizer is None:
            raise ValueError("the grammar constraint needs the host's tokenizer")
        self.tokenizer = _ll_tokenizer(tokenizer)
        self.padding = {t for t in (tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None}
        self.matchers = None
        self.finished: set[int] = set()  # rows generate() is padding after a stop
        self.prompt_length: int | None = None

    def begin(self, prompt_length: int) -> None:
        """Called by metagen's Generator before decoding: tokens past ``prompt_length`` are a
        continuation generated earlier (a step-level search's prefix) that the grammar must
        consume first. In a plain generate() call everything before decoding is the prompt."""
        self.prompt_length = prompt_length

    def __call__(self, input_ids, scores):
        import llguidance
        import numpy as np
        import torch

        batch, vocab = scores.shape
        if self.matchers is None or len(self.matchers) != batch:
            self.matchers = [llguidance.LLMatcher(self.tokenizer, self.grammar, log_level=0) for _ in range(batch)]
            if self.prompt_length is not None:
                for row, matcher in enumerate(self.matchers):
                    matcher.consume_tokens(input_ids[row, self.prompt_length:].tolist())
        else:
            for row, (matcher, token) in enumerate(zip(self.matchers, input_ids[:, -1].tolist())):
                if row in self.finished or matcher.is_stopped():
                    continue
                if matcher.try_consume_tokens([token]) == 0:
                    if token not in self.padding:
                        raise RuntimeError(f"grammar constraint: row {row} was given token {token}, which "
                                           f"the grammar does not allow (another processor overrode the mask?)")
                    self.finished.add(row)  # a stopping criterion ended it; generate() pads it now
        allowed = np.zeros((batch, vocab), dtype=bool)
        for row, matcher in enumerate(self.matchers):
            if row in self.finished:
                allowed[row] = True
                continue
            if matcher.is_error():
                raise RuntimeError(f"grammar constraint failed on row {row}: {matcher.get_error()}")
            bits = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
            width = min(vocab, bits.shape[0])
            allowed[row, :width] = bits[:width].astype(bool)
            if not allowed[row].any():
                raise RuntimeError(f"grammar constraint: no token of this tokenizer can continue row "
                                   f"{row}; the grammar needs characters its vocabulary lacks")
        return scores.masked_fill(~torch.from_numpy(allowed).to(scores.device), float("-inf"))


def register_all(register) -> None:
    register("grammar", Grammar, constraint=True)
