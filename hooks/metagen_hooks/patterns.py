"""Regular expressions that run in linear time, whoever wrote them.

A configuration's pattern (an ``answer_pattern``, a ``regex`` stopping criterion) may come from a
request to ``metagen serve``, and Python's ``re`` backtracks: ``(.|.)*§`` over 48 tokens of text
takes minutes and holds the interpreter while it does. Every pattern a component takes from its
parameters is compiled here instead, with RE2 (Google's automaton engine, through the
``google-re2`` binding), whose matching time is linear in the text: no pattern can stall a
thread. RE2 has no backreferences or lookaround; a pattern that needs them is refused with a
message saying so.

    pattern = compile(r"####\\s*(-?\\d+)", "answer_pattern")
    match = pattern.search(text)    # the re module's interface: search, finditer, fullmatch, ...
"""

from __future__ import annotations

import functools
from typing import Any

MAX_PATTERN_CHARS = 4096
"""The longest pattern accepted: RE2 compiles in time and memory linear in it, and a pattern
longer than this is a mistake or an attack."""

MAX_PROGRAM_BYTES = 8 << 20
"""The memory RE2 may use for one compiled pattern (its ``max_mem``)."""


@functools.lru_cache(maxsize=512)
def compile(pattern: str, what: str = "pattern") -> Any:  # noqa: A001 (the re module's name)
    """``pattern`` compiled for linear-time matching; a ``ValueError`` naming ``what`` (the
    parameter) and the reason when it is not a regular expression RE2 accepts."""
    import re2

    if not isinstance(pattern, str):
        raise ValueError(f"{what} must be a string, got {type(pattern).__name__}")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ValueError(f"{what} is {len(pattern)} characters long; the limit is {MAX_PATTERN_CHARS}")
    options = re2.Options()
    options.log_errors = False  # the error is raised, not printed on the user's terminal
    options.max_mem = MAX_PROGRAM_BYTES
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        hint = (" (backreferences and lookaround cannot run in linear time, so metagen does not take them: "
                "rewrite the pattern without them)" if any(s in pattern for s in ("(?=", "(?!", "(?<=", "(?<!"))
                or "escape" in reason else "")
        raise ValueError(f"{what} {pattern[:80]!r} is not a regular expression metagen can run: "
                         f"{reason}{hint}") from None
