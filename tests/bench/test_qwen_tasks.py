"""The Qwen benchmarks' tasks (bench/qwen_tasks.py): the arithmetic generator's answers are right
and its questions in the intended ranges; every code task's visible and hidden tests pass on a
reference solution written here (so a failing candidate fails on its own code, not on a wrong
test) and fail on a plausible wrong one."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from qwen_tasks import ANSWER_PATTERN, KINDS, CodeTask, arithmetic, code_tasks  # noqa: E402

from metagen_hooks import answers  # noqa: E402


def test_arithmetic_is_seeded_distinct_and_cycles_through_the_kinds():
    first, again, other = arithmetic(40, seed=3), arithmetic(40, seed=3), arithmetic(40, seed=4)
    assert first == again and first != other
    assert len({q.prompt for q in first}) == 40
    assert [q.kind for q in first[:8]] == list(KINDS) * 2


def test_arithmetic_answers_are_the_computed_ones():
    for q in arithmetic(200, seed=0):
        numbers = [int(x) for x in re.findall(r"\d+", q.prompt.split("Be brief")[0])]
        if q.kind == "mul":
            a, b = numbers
            expected = a * b
            assert 10 <= a < 100 and 10 <= b < 100
        elif q.kind == "expr":
            expected = numbers[0] * numbers[1] - numbers[2] if "-" in q.prompt else numbers[0] + numbers[1] * numbers[2]
        elif q.kind == "word2":
            boxes, price, paid = numbers
            expected = paid - boxes * price
        else:
            rows, per_row, sold, crates = numbers
            assert (rows * per_row - sold) % crates == 0
            expected = (rows * per_row - sold) // crates
        assert int(q.answer) == expected and expected >= 0, q


def test_the_answer_is_the_last_boxed_number_else_the_last_number():
    assert answers.extract("First 12 * 3 = 36, so \\boxed{36}? No: \\boxed{1,234}. Check: 7", ANSWER_PATTERN) == "1234"
    assert answers.extract("80 * 19 = 1520", ANSWER_PATTERN) == "1520"
    assert answers.extract("12.5 and then 1,000 left", ANSWER_PATTERN) == "1000"
    assert answers.extract("no number here", ANSWER_PATTERN) is None


REFERENCE = '''
def run_length_encode(s):
    out, i = [], 0
    while i < len(s):
        j = i
        while j < len(s) and s[j] == s[i]:
            j += 1
        out.append(s[i] + str(j - i))
        i = j
    return "".join(out)

def second_largest(xs):
    d = sorted(set(xs))
    return d[-2] if len(d) >= 2 else None

def is_balanced(s):
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for c in s:
        if c in "([{":
            stack.append(c)
        elif c in pairs:
            if not stack or stack.pop() != pairs[c]:
                return False
    return not stack

def digit_root(n):
    while n >= 10:
        n = sum(int(c) for c in str(n))
    return n

def merge_intervals(xs):
    out = []
    for a, b in sorted(xs):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out

def caesar_shift(t, k):
    def shift(c):
        if c.islower():
            return chr((ord(c) - 97 + k) % 26 + 97)
        if c.isupper():
            return chr((ord(c) - 65 + k) % 26 + 65)
        return c
    return "".join(shift(c) for c in t)

def count_vowel_words(s):
    return sum(w[0].lower() in "aeiou" for w in s.split())

def flatten(xs):
    out = []
    for x in xs:
        out.extend(flatten(x) if isinstance(x, list) else [x])
    return out

def roman_to_int(s):
    v = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}
    return sum(-v[c] if i + 1 < len(s) and v[c] < v[s[i + 1]] else v[c] for i, c in enumerate(s))

def int_to_roman(n):
    table = [(1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"), (50, "L"),
             (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")]
    out = ""
    for value, sym in table:
        while n >= value:
            out, n = out + sym, n - value
    return out

def most_frequent_char(s):
    return max(s, key=lambda c: (s.count(c), -s.index(c)))

def chunk_list(xs, n):
    return [xs[i:i + n] for i in range(0, len(xs), n)]

def is_prime(n):
    return n >= 2 and all(n % d for d in range(2, int(n ** 0.5) + 1))

def title_case(s):
    small = {"a", "an", "the", "of", "and"}
    words = s.lower().split(" ")
    return " ".join(w if i and w in small else w[:1].upper() + w[1:] for i, w in enumerate(words))

def pairs_with_sum(xs, t):
    return sum(xs[i] + xs[j] == t for i in range(len(xs)) for j in range(i + 1, len(xs)))

def rotate_matrix(m):
    return [list(r) for r in zip(*m[::-1])]

def longest_common_prefix(xs):
    if not xs:
        return ""
    p = xs[0]
    for x in xs[1:]:
        while not x.startswith(p):
            p = p[:-1]
    return p

def moving_average(xs, k):
    return [sum(xs[i:i + k]) / k for i in range(len(xs) - k + 1)] if k <= len(xs) else []

def word_frequencies(t):
    out = {}
    for w in t.lower().translate(str.maketrans("", "", ".,!?")).split():
        out[w] = out.get(w, 0) + 1
    return out

def binary_gap(n):
    b = bin(n)[2:].strip("0")
    return max((len(z) for z in b.split("1")), default=0)

def compress_ranges(xs):
    parts, i = [], 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        parts.append(f"{xs[i]}-{xs[j]}" if j > i else str(xs[i]))
        i = j + 1
    return ",".join(parts)

def valid_ipv4(s):
    parts = s.split(".")
    return len(parts) == 4 and all(p.isdigit() and p.isascii() and (p == "0" or not p.startswith("0"))
                                   and int(p) <= 255 for p in parts)

def spiral_order(m):
    out = []
    m = [list(r) for r in m]
    while m:
        out += m.pop(0)
        m = [list(r) for r in zip(*m)][::-1]
    return out

def next_palindrome(n):
    n += 1
    while str(n) != str(n)[::-1]:
        n += 1
    return n

def dedupe_keep_last(xs):
    seen, out = set(), []
    for x in reversed(xs):
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out[::-1]

def bowling_score(rolls):
    score, i = 0, 0
    for _ in range(10):
        if rolls[i] == 10:
            score, i = score + 10 + rolls[i + 1] + rolls[i + 2], i + 1
        elif rolls[i] + rolls[i + 1] == 10:
            score, i = score + 10 + rolls[i + 2], i + 2
        else:
            score, i = score + rolls[i] + rolls[i + 1], i + 2
    return score

def balance_after(ops):
    balance = 0
    for kind, amount in ops:
        if kind == "deposit":
            balance += amount
        elif amount <= balance:
            balance -= amount
    return balance
'''

# A plausible wrong answer per task that the visible tests let through and a hidden test catches:
# the tasks reward reading the description, not just fitting the examples shown.
WRONG = {
    "second_largest": "def second_largest(xs):\n    return sorted(xs)[-2] if len(set(xs)) > 1 else None",
    "digit_root": "def digit_root(n):\n    return n % 9 if n > 9 else n",
    "merge_intervals": ("def merge_intervals(xs):\n    out = []\n    for a, b in xs:\n"
                        "        if out and a < out[-1][1]:\n            out[-1][1] = max(out[-1][1], b)\n"
                        "        else:\n            out.append([a, b])\n    return out"),
    "is_prime": "def is_prime(n):\n    return all(n % d for d in range(2, n))",
    "most_frequent_char": "def most_frequent_char(s):\n    return max(sorted(set(s)), key=s.count)",
}


def run(source: str, tests: list[str]) -> list[bool]:
    namespace: dict = {}
    exec(source, namespace)  # trusted reference code written above, not model output
    outcome = []
    for test in tests:
        try:
            exec(test, dict(namespace))
            outcome.append(True)
        except AssertionError:
            outcome.append(False)
    return outcome


TASKS = code_tasks()


@pytest.mark.parametrize("task", TASKS, ids=[t.name for t in TASKS])
def test_every_test_passes_on_a_reference_solution(task: CodeTask):
    assert all(run(REFERENCE, task.visible + task.hidden))
    assert 2 <= len(task.visible) <= 3 and 3 <= len(task.hidden) <= 6
    assert all(test in task.prompt for test in task.visible)
    assert not any(test in task.prompt for test in task.hidden)


@pytest.mark.parametrize("name", sorted(WRONG))
def test_a_wrong_solution_passes_the_visible_tests_and_fails_a_hidden_one(name):
    task = next(t for t in TASKS if t.name == name)
    assert all(run(WRONG[name], task.visible))
    assert not all(run(WRONG[name], task.hidden))


def test_bad_task_files_are_refused_with_the_task_named(tmp_path):
    path = tmp_path / "tasks.json"
    path.write_text('[{"name": "f", "description": "d", "visible": ["assert f(1) == 1"], '
                    '"hidden": ["assert g(2) == 2"]}]')
    with pytest.raises(ValueError, match=r"task 0 \('f'\).*not an assert that calls f\(\)"):
        code_tasks(path)
    path.write_text('[{"name": "f", "description": "d", "visible": ["assert f(1) == 1"], "hidden": []}]')
    with pytest.raises(ValueError, match="needs visible and hidden tests"):
        code_tasks(path)
