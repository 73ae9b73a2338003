"""The calculator verifier: claims found in free text, checked exactly, never by eval."""

from fractions import Fraction

import pytest

import metagen_plugins
from metagen_hooks import Candidate
from metagen_hooks import Budget
from metagen_plugins.builtin.scorers.calculator import (Calculator, UnsafeExpression, claims, evaluate, final_answer,
                                                        repair)
from metagen_plugins.builtin.strategies.calculator_vote import CalculatorVote


def found(text):
    return [(c.left, c.right, c.holds) for c in claims(text)]


@pytest.mark.parametrize("text, expected", [
    ("12 + 7 = 19", [("12 + 7", "19", True)]),
    ("5 + 3 = 9", [("5 + 3", "9", False)]),
    ("He has 20 - 4 = 16 cards left.", [("20 - 4", "16", True)]),
    ("Tom has 5 apples + 3 apples = 8 apples.", [("5 + 3", "8", True)]),
    ("$4 x 3 = $12, so he pays 12", [("4 * 3", "12", True)]),
    ("3 \u00d7 4 = 13", [("3 * 4", "13", False)]),
    # LaTeX, as instruction models write it (Qwen2.5-Coder): operators, \text{} units, \( \) and \[ \]
    (r"\[77 \times 15 = 1105\]", [("77 * 15", "1105", False)]),
    (r"\( 968 \cdot 62 = 60016 \)", [("968 * 62", "60016", True)]),
    (r"\[ 837 \div 3 = 279 \]", [("837 / 3", "279", True)]),
    (r"so \(2986 + 83 \times 44 = 6708\)", [("2986 + 83 * 44", "6708", False)]),
    (r"\[ 1100 \text{ dollars} - 1000 \text{ dollars} = 100 \text{ dollars} \]", [("1100 - 1000", "100", True)]),
    (r"\timesx 3 = 4", []),
    ("1,200 + 300 = 1,500", [("1200 + 300", "1500", True)]),
    ("2 * (3 + 4) = 14", [("2 * ( 3 + 4 )", "14", True)]),
    ("10 / 3 = 3.33", [("10 / 3", "3.33", True)]),  # a written decimal is rounded to its places
    ("10 / 3 = 3.4", [("10 / 3", "3.4", False)]),
    ("5 - 8 = -3", [("5 - 8", "- 3", True)]),
    ("25% of 80 = 20", [("(25/100) * 80", "20", True)]),
    ("7 / 0 = 0", [("7 / 0", "0", False)]),
    # a chain: each "=" claims its neighbours are equal ...
    ("12 + 7 = 19 = 20", [("12 + 7", "19", True), ("19", "20", False)]),
    # ... unless it is written as running totals
    ("15 + 1 = 16 + 75 = 91", [("15 + 1", "16", True), ("16 + 75", "91", True)]),
    ("15 + 1 = 17 + 75 = 92", [("15 + 1", "17", False), ("17 + 75", "92", True)]),
    (" 37+48=85. 85-19=66. #### 66", [("37 + 48", "85", True), ("85 - 19", "66", True)]),
    ("Step 1: 12 + 7 = 19.\nStep 2: 19 - 4 = 14.", [("12 + 7", "19", True), ("19 - 4", "14", False)]),
    # no calculation to check
    ("x = 5", []), ("The answer is 19.", []), ("16 = 16", []), ("2**10 = 1024", []),
    ("Tom has 5 apples and 3 pears = 8 fruits", []),
])
def test_claims_in_free_text(text, expected):
    assert found(text) == expected


def test_evaluator_is_exact_and_refuses_everything_but_arithmetic():
    assert evaluate("0.1 + 0.2") == Fraction(3, 10)
    assert evaluate("-(2 + 3) * 4 / 8") == Fraction(-5, 2)
    for bad in ("__import__('os').system('true')", "2 ** 10", "abs(-1)", "1 if 1 else 2", "x + 1", "[1][0]",
                "'a' * 3", "10 ** 100"):
        with pytest.raises(UnsafeExpression):
            evaluate(bad)
    with pytest.raises(UnsafeExpression):
        evaluate("9" * 14 + " * 9")  # past the size limit
    with pytest.raises(ZeroDivisionError):
        evaluate("1 / 0")


@pytest.mark.parametrize("text, answer", [
    ("so the total is \\boxed{42}.", 42), ("\\boxed{ 7 } then 9", 7), ("... #### 1,024", 1024),
    ("The answer is: 12 apples", 12), ("answer = 3.5", Fraction(7, 2)), ("19", 19), ("no number", None),
])
def test_final_answer(text, answer):
    assert final_answer(text) == answer


def test_scores_rank_right_work_above_unchecked_above_wrong():
    calc = Calculator()
    texts = {
        "right, answer checked": "5 + 3 = 8. The answer is \\boxed{8}.",
        "right, answer unchecked": "5 + 3 = 8. The answer is \\boxed{9}.",
        "nothing to check": "The answer is 8.",
        "half wrong": "5 + 3 = 8 and 8 - 2 = 7. The answer is 7.",
        "all wrong": "5 + 3 = 9. The answer is 9.",
    }
    scores = dict(zip(texts, calc.score("Q", [Candidate("Q", t) for t in texts.values()])))
    assert scores == {"right, answer checked": 1.0, "right, answer unchecked": 0.75, "nothing to check": 0.5,
                      "half wrong": 0.25, "all wrong": 0.0}


def test_step_scores_drop_from_the_first_false_claim():
    calc = Calculator()
    text = "First 12 + 7 = 19. Then 19 - 4 = 14. So he has 14 left. #### 14"
    assert calc.score_steps("Q", [Candidate("Q", text)]) == [[1.0, 0.0, 0.0, 0.0]]
    demo = Calculator(delimiter=". ")
    assert demo.score_steps("Q", [Candidate("Q", " 37+48=85. 85-19=66. #### 66")]) == [[1.0, 1.0, 1.0]]
    with pytest.raises(ValueError, match="calculator: delimiter"):
        Calculator(delimiter="")


def test_registered_and_selects_the_checked_candidate():
    registry = metagen_plugins.get_registry()
    calc = metagen_plugins.build(registry.get("scorers", "calculator"), {})
    candidates = [Candidate("Q", "7 + 5 = 13, so 13"), Candidate("Q", "7 + 5 = 12, so 12")]
    assert calc.score("What is 7 + 5?", candidates) == [0.0, 1.0]


@pytest.mark.parametrize("text, repaired", [
    ("16 - 3 = 11", "16 - 3 = 13"),
    ("Lily has 13 - 5 = 6 pencils left.\n#### 6", "Lily has 13 - 5 = 8 pencils left.\n#### 8"),
    ("The answer is \\boxed{11}. 16-3=11", "The answer is \\boxed{13}. 16-3=13"),
    ("5 - 8 = 3", "5 - 8 = -3"),
    ("10 / 4 = 2", "10 / 4 = 2.5"),
    ("10 / 3 = 3.4", "10 / 3 = 3.3"),  # to the written places
    ("15 + 1 = 17 + 75 = 92", "15 + 1 = 16 + 75 = 91"),  # a running total, corrected step by step
    ("12 + 7 = 19, so 19", "12 + 7 = 19, so 19"),  # nothing false
    ("7 / 0 = 1", "7 / 0 = 1"),  # nothing to put there
    ("12 + 7 = 20 + x", "12 + 7 = 19 + x"),
    (r"\[ 968 \times 62 = 60015 \] so \(\boxed{60015}\)", r"\[ 968 \times 62 = 60016 \] so \(\boxed{60016}\)"),
])
def test_repair_writes_the_computed_results(text, repaired):
    assert repair(text)[0] == repaired


def test_calculator_vote_votes_over_repaired_samples():
    class Samples:
        budget = None

        def sample(self, prompts, n=1, *, max_new_tokens=None, stop=None):
            texts = ["16 - 3 = 11", "16 - 3 = 12", "It is 11.", "16 - 3 = 13"]
            return [[Candidate(p, t) for t in texts[:n]] for p in prompts]

    pattern = r"\A(?:[^=]*?=|.*?answer(?: is)?:?|\s*)\s*(-?\d+)"
    result = CalculatorVote(n=4, answer_pattern=pattern).run("What is 16 - 3?", Samples(), None, Budget())
    assert result.best.text == "16 - 3 = 13" and result.best.meta["original"] == "16 - 3 = 11"
    assert [e["votes"] for e in result.trace if e["event"] == "select"] == [{"13": 3.0}]
    assert result.candidates[0].meta["calculator"] == [{"claim": "16 - 3 = 11", "written": "11", "computed": "13"}]
    with pytest.raises(ValueError, match="calculator_vote: n"):
        CalculatorVote(n=0)
