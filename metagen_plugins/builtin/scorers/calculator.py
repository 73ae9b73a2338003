"""The calculator verifier: a tool as verifier for arithmetic written in free text.

It finds the arithmetic claims a candidate makes (``12 + 7 = 19``, chains such as
``15 + 1 = 16 + 75 = 91``, numbers with words and units around them such as
``5 apples + 3 apples = 8 apples`` or ``$4 x 3 = $12``), evaluates both sides with an exact
evaluator that walks Python's AST over numbers and ``+ - * / ( )`` only (never ``eval``), and
scores the candidate by whether its claims hold and whether its final answer (``\\boxed{}``,
``#### N``, "the answer is N", else the last number) is the result of a claim that holds.

Scores (``score``), highest first::

    1.0   every claim holds and the final answer is the result of one of them
    0.75  every claim holds, but the final answer is not a checked result (or there is none)
    0.5   no claim to check
    < 0.5 some claim is false: 0.5 x (share of claims that hold)

``score_steps`` splits a candidate at ``delimiter`` and gives, per step, 1.0 while every claim
so far holds and 0.0 from the first false one on (a rule-based process reward), so it serves
step-level search as the demo's ``step_checker`` does, on any text.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

from metagen_hooks import Candidate

_NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+"
_OPERATOR = {"+": "+", "-": "-", "\u2212": "-", "\u2013": "-", "*": "*", "x": "*", "X": "*", "\u00d7": "*",
             "\u22c5": "*", "\u00b7": "*", "/": "/", "\u00f7": "/", "(": "(", ")": ")",
             "\\times": "*", "\\cdot": "*", "\\div": "/"}
_TOKEN = re.compile(
    rf"(?P<num>{_NUMBER})(?P<pct>%)?"
    r"|(?P<op>[+\-\u2212\u2013*\u00d7\u22c5\u00b7/\u00f7()])"
    r"|(?P<times>(?<![A-Za-z])[xX](?![A-Za-z]))"
    r"|(?P<latexop>\\(?:times|cdot|div)(?![A-Za-z]))"
    r"|(?P<latexword>\\(?:text|mathrm|mbox)\{[^{}]*\})"
    r"|(?P<latexdelim>\\[()\[\]])"
    r"|(?P<eq>==|=)"
    r"|(?P<cur>[$\u20ac\u00a3])"
    r"|(?P<word>[A-Za-z][A-Za-z'\u2019]*)"
    r"|(?P<stop>[\n;:!?,]|\.(?!\d)|\\\\)"
    r"|(?P<space>[ \t]+)"
    r"|(?P<other>.)",
    re.S,
)
_FINAL = [re.compile(p, re.I) for p in (
    r"\\boxed\{\s*\$?(-?" + _NUMBER + r")\s*\}",
    r"####\s*\$?(-?" + _NUMBER + r")",
    r"answer\s*(?:is|:|=)\s*:?\s*\$?(-?" + _NUMBER + r")",
)]
_LAST_NUMBER = re.compile(r"-?(?:" + _NUMBER + r")")
_UNIT_WORDS = 2  # at most this many words between a number and the next operator or "="
_LIMIT = 10 ** 12  # larger operands or results are not checked (no big-number work on a verifier)


class UnsafeExpression(ValueError):
    """An expression the calculator does not evaluate (anything but numbers and + - * / ( ))."""


def evaluate(expression: str) -> Fraction:
    """The exact value of ``expression``: numbers, ``+ - * /``, unary minus and parentheses only.

    Walks the parsed AST and refuses every other node (names, calls, attributes, powers,
    comparisons, ...), so no input can run code; operands and results past 10**12 are refused
    too. Raises :class:`UnsafeExpression` for what it refuses and ``ZeroDivisionError`` for x/0.
    """
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError) as exc:
        raise UnsafeExpression(f"not an arithmetic expression: {expression!r}") from exc
    return _walk(tree.body)


def _walk(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        value = Fraction(str(node.value)) if isinstance(node.value, float) else Fraction(node.value)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _walk(node.operand)
        value = -value if isinstance(node.op, ast.USub) else value
    elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        left, right = _walk(node.left), _walk(node.right)
        if isinstance(node.op, ast.Add):
            value = left + right
        elif isinstance(node.op, ast.Sub):
            value = left - right
        elif isinstance(node.op, ast.Mult):
            value = left * right
        else:
            value = left / right  # ZeroDivisionError for x / 0
    else:
        raise UnsafeExpression(f"the calculator evaluates numbers and + - * / ( ) only, not {type(node).__name__}")
    if abs(value) > _LIMIT:
        raise UnsafeExpression("number too large to check")
    return value


@dataclass(frozen=True)
class Claim:
    """One checked equality: ``left = right`` as written (units removed), and whether it holds."""

    left: str
    right: str
    holds: bool
    value: Fraction  # the right-hand side's value: the result the text claims
    end: int  # where the claim ends in the text
    computed: Fraction | None = None  # the left-hand side's value (None: undefined, e.g. x / 0)
    result_span: tuple[int, int] | None = None  # where the claimed result is written, when it is one number


def _segments(text: str) -> list[list[tuple[str, str, int, int]]]:
    """Runs of arithmetic between stops: lists of (kind, text, start, end) tokens, where kind is
    ``num``, ``op`` or ``eq``. Words between a number and the next operator or ``=`` (units:
    ``5 apples + 3 apples``) are skipped; any other word ends the current expression."""
    runs: list[list[tuple[str, str, int, int]]] = [[]]
    pending_words = 0
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        if kind in ("space", "cur"):
            continue
        if kind == "pct":
            kind = "num"
        if kind == "num":
            value = match.group("num").replace(",", "")
            if match.group("pct"):
                value = f"({value}/100)"
            run = runs[-1]
            if run and run[-1][0] == "num":  # two numbers with no operator between: a new expression
                runs.append([])
            elif run and pending_words:
                runs.append([])
            runs[-1].append(("num", value, match.start(), match.end()))
            pending_words = 0
        elif kind in ("op", "times", "latexop"):
            symbol = _OPERATOR[match.group(kind)]
            run = runs[-1]
            if kind == "times" and not (run and run[-1][0] == "num"):
                pending_words += 1  # a lone "x" not after a number is a word
                if pending_words > _UNIT_WORDS:
                    runs.append([])
                continue
            runs[-1].append(("op", symbol, match.start(), match.end()))
            pending_words = 0
        elif kind == "eq":
            runs[-1].append(("eq", "=", match.start(), match.end()))
            pending_words = 0
        elif kind in ("word", "latexword"):  # LaTeX's \text{dollars} is a word too
            run = runs[-1]
            if match.group().lower() == "of" and run and run[-1][0] == "num" and run[-1][1].endswith("/100)"):
                run.append(("op", "*", match.start(), match.end()))  # "25% of 80" is 25/100 * 80
                pending_words = 0
                continue
            if run and run[-1][0] == "num" and pending_words < _UNIT_WORDS:
                pending_words += 1  # maybe a unit: kept only if an operator or "=" follows
                continue
            if run:
                runs.append([])
            pending_words = 0
        else:  # a stop or any other character ends the expression
            if runs[-1]:
                runs.append([])
            pending_words = 0
    return [r for r in runs if any(t[0] == "eq" for t in r)]


def _split_sides(run: list[tuple[str, str, int, int]]) -> list[tuple[str, int, tuple[int, int] | None]]:
    """The sides of a chain: (expression, end offset, span of its leading number with its sign)."""
    sides, current, end, lead, start = [], [], 0, None, None
    for kind, token, begin, stop in run:
        if kind == "eq":
            sides.append((" ".join(current), end, lead))
            current, lead, start = [], None, None
        else:
            if start is None:
                start = begin
            if kind == "num" and lead is None:
                lead = (start, stop)
            current.append(token)
            end = stop
    sides.append((" ".join(current), end, lead))
    return sides


_UNDEFINED = object()  # a division by zero: a calculation that cannot hold


def _value(expression: str):
    expression = expression.strip()
    while expression and expression[-1] in "+-*/(":
        expression = expression[:-1].strip()  # "... 12 + = 19" or a dangling operator
    while expression and expression[0] in "+*/)":
        expression = expression[1:].strip()
    if not expression or not re.search(r"\d", expression):
        return None
    try:
        return evaluate(expression)
    except ZeroDivisionError:
        return _UNDEFINED
    except UnsafeExpression:
        return None


def _equal(computed: Fraction, written: str, value: Fraction) -> bool:
    """Does the written result match the computed one? A written decimal counts as rounded to
    its own number of places (``10 / 3 = 3.33`` holds)."""
    if computed == value:
        return True
    places = written.split(".")[1] if "." in written and re.fullmatch(r"-?[\d.]+", written) else ""
    if places:
        step = Fraction(1, 10 ** len(places))
        return abs(computed - value) <= step / 2
    return False


def claims(text: str) -> list[Claim]:
    """Every arithmetic claim in ``text``, in order. In a chain ``a = b = c`` each ``=`` is a
    claim between its neighbours; a chain written as running totals (``15 + 1 = 16 + 75 = 91``)
    is read as ``15 + 1 = 16`` and ``16 + 75 = 91``."""
    out: list[Claim] = []
    for run in _segments(text):
        sides = _split_sides(run)
        for index, ((left, _, _), (right, end, lead_span)) in enumerate(zip(sides, sides[1:])):
            if not right or not left or (index == 0 and not re.search(r"\d\s*[-+*/]", left)):
                continue  # "x = 5", "Total: 20 = ...": a bare number is no calculation
            computed = _value(left)
            lead = re.match(r"\s*(\(?\s*-?\s*[\d.]+(?:\s*/\s*100\))?)", right)
            written_value = _value(right)
            if computed is None or written_value is None or written_value is _UNDEFINED:
                continue
            single = bool(re.fullmatch(r"-?\s*[\d.]+", right.strip()))
            if computed is _UNDEFINED:
                out.append(Claim(left.strip(), right.strip(), False, written_value, end))
                continue
            holds = _equal(computed, right.strip(), written_value)
            claimed = written_value
            if not holds and lead and lead.group(1).strip() != right.strip():
                # a running total: "a + b = c + d" claims a + b = c, then continues from c
                first = _value(lead.group(1))
                if first is not None and first is not _UNDEFINED:
                    holds, claimed, right = _equal(computed, lead.group(1).strip(), first), first, lead.group(1)
                    single = bool(re.fullmatch(r"-?\s*[\d.]+", right.strip()))
            out.append(Claim(left.strip(), right.strip(), holds, claimed, end, computed,
                             lead_span if single else None))
    return out


def _format(value: Fraction, written: str) -> str:
    """``value`` written as the text wrote its result: to the written decimal places, else as an
    integer when it is one, else to at most 4 decimal places."""
    places = len(written.split(".")[1]) if "." in written else 0
    if places:
        return f"{float(value):.{places}f}"
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.4f}".rstrip("0").rstrip(".")


def repair(text: str, rounds: int = 8) -> tuple[str, list[dict]]:
    """The calculator as a tool (as GSM8K's calculator annotations are used, Cobbe et al., 2021):
    every false claim's written result is replaced by the computed one, and a final answer
    (``\\boxed{}``, ``####``, "answer is") that repeats a replaced result is replaced too.
    Repeats until every claim holds (a corrected running total can make the next step false),
    at most ``rounds`` times. Returns the new text and the corrections made (``{"claim",
    "written", "computed"}``)."""
    corrections: list[dict] = []
    for _ in range(rounds):
        text, made = _repair_once(text)
        if not made:
            break
        corrections += made
    return text, corrections


def _repair_once(text: str) -> tuple[str, list[dict]]:
    edits, corrections, replaced = [], [], {}
    for claim in claims(text):
        if claim.holds or claim.computed is None or claim.result_span is None:
            continue
        start, end = claim.result_span
        written = text[start:end]
        new = _format(claim.computed, written.replace(" ", ""))
        edits.append((start, end, new))
        replaced[_number(written.replace(" ", ""))] = new
        corrections.append({"claim": f"{claim.left} = {claim.right}", "written": written, "computed": new})
    for pattern in _FINAL:
        for match in pattern.finditer(text):
            value = _number(match.group(1))
            if value in replaced and not any(s <= match.start(1) < e for s, e, _ in edits):
                edits.append((match.start(1), match.end(1), replaced[value]))
    for start, end, new in sorted(edits, reverse=True):
        text = text[:start] + new + text[end:]
    return text, corrections


def final_answer(text: str) -> Fraction | None:
    """The final answer: ``\\boxed{N}``, ``#### N``, "answer is N", else the last number."""
    for pattern in _FINAL:
        found = list(pattern.finditer(text))
        if found:
            return _number(found[-1].group(1))
    numbers = _LAST_NUMBER.findall(text)
    return _number(numbers[-1]) if numbers else None


def _number(token: str) -> Fraction | None:
    try:
        return Fraction(token.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


class Calculator:
    """The calculator verifier (registered as ``calculator``): see the module docstring for the
    scores. ``delimiter`` splits steps for ``score_steps`` (default: a line break or the end of
    a sentence)."""

    def __init__(self, delimiter: str | None = None) -> None:
        if delimiter is not None and not delimiter:
            raise ValueError("calculator: delimiter must be a non-empty string (or unset for sentence ends)")
        self.delimiter = delimiter

    def verdict(self, text: str) -> float:
        found = claims(text)
        if not found:
            return 0.5
        holding = [c for c in found if c.holds]
        if len(holding) < len(found):
            return 0.5 * len(holding) / len(found)
        answer = final_answer(text)
        return 1.0 if answer is not None and any(c.value == answer for c in holding) else 0.75

    def score(self, prompt: str, candidates: Sequence[Candidate]) -> list[float]:
        return [self.verdict(c.text) for c in candidates]

    def _steps(self, text: str) -> list[str]:
        if self.delimiter is not None:
            pieces = text.split(self.delimiter)
        else:
            pieces = re.split(r"(?<=[.!?])\s+(?=\D)|\n+", text)
        return [p for p in pieces if p.strip()] or [text]

    def score_steps(self, prompt: str, candidates: Sequence[Candidate]) -> list[list[float]]:
        out = []
        for c in candidates:
            ok, scores = True, []
            for step in self._steps(c.text):
                ok = ok and all(claim.holds for claim in claims(step))
                scores.append(1.0 if ok else 0.0)
            out.append(scores)
        return out


def register_all(register) -> None:
    register("calculator", Calculator, reads_logprobs=False)
