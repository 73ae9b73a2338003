"""Program-aided self-consistency: programs run in the sandbox, the printed answers vote."""

import pytest

import metagen_plugins
from metagen_hooks import Budget, Candidate
from metagen_plugins import sandbox
from metagen_plugins.builtin.strategies.program_aided import ProgramAided, printed_answer

ISOLATION = "full" if sandbox.probe("full") is None else "limits"


class Programs:
    """A Generator that answers every prompt with fixed texts (the model's programs)."""

    def __init__(self, texts):
        self.texts, self.budget, self.prompts = texts, Budget(), []

    def sample(self, prompts, n=1, *, max_new_tokens=None, stop=None):
        self.prompts += list(prompts)
        return [[Candidate(p, self.texts[i % len(self.texts)], finish_reason="stop") for i in range(n)]
                for p in prompts]

    def extend(self, prefixes, n=1, *, max_new_tokens=None, stop=None):
        raise NotImplementedError


@pytest.mark.parametrize("stdout, answer", [
    ("19\n", "19"), ("19.0\n", "19"), ("2.5\n", "2.5"), ("1,024\n", "1024"), ("x\n\n7\n", "7"),
    ("", None), ("  \n", None), ("seven\n", "seven"),
])
def test_printed_answer(stdout, answer):
    assert printed_answer(stdout) == answer


@pytest.mark.parametrize("stdout, answer", [
    ("The answer is 11 books remaining\n", "11"), ("11\n", "11"), ("Answer: 19.0\n", "19"),
    ("a = 3\nb = 4\n", "4"), ("no number here\n", None), ("", None),
])
def test_printed_answer_with_a_pattern_takes_its_last_match(stdout, answer):
    assert printed_answer(stdout, r"(-?\d[\d,]*(?:\.\d+)?)") == answer


def test_an_answer_pattern_merges_a_number_printed_in_a_sentence_with_the_bare_number():
    programs = [
        "```python\nbooks = 18 - 7\nprint(f'The answer is {books} books remaining')\n```",  # 11 in a sentence
        "```python\nprint(18 - 7)\n```",  # 11
        "```python\nprint(18 + 7)\n```",  # 25
        "```python\nprint('Max has 25 books left.')\n```",  # 25 in a sentence
        "```python\nprint(11.0)\n```",  # 11
    ]
    plain = ProgramAided(n=5, isolation=ISOLATION).run("Q", Programs(programs), None, Budget())
    assert plain.best.meta["votes"] == {"The answer is 11 books remaining": 1, "11": 2, "25": 1,
                                        "Max has 25 books left.": 1}
    numeric = ProgramAided(n=5, isolation=ISOLATION, answer_pattern=r"(-?\d+(?:\.\d+)?)")
    result = numeric.run("Q", Programs(programs), None, Budget())
    assert result.best.text == "11" and result.best.meta["votes"] == {"11": 3, "25": 2}


def test_programs_vote_by_what_they_print_not_by_their_text():
    programs = [
        "```python\napples = 12\nmore = 7\nprint(apples + more)\n```",  # 19
        "Here you go:\n```python\nprint(12 + 7)\n```\nThe program prints the answer.",  # 19, other text
        "```python\nprint(12 * 7)\n```",  # 84
        "```python\nprint(1 / 0)\n```",  # raises: no vote
        "```python\nwhile True:\n    pass\n```",  # killed at the time limit: no vote
        "```python\nprint(84.0)\n```",  # 84
        "```python\nprint(19.0)\n```",  # 19 again, written as a float
    ]
    strategy = ProgramAided(n=7, isolation=ISOLATION, timeout=2, cpu_seconds=1, answer_format="#### {answer}")
    generator = Programs(programs)
    result = strategy.run("What is 12 + 7?", generator, None, Budget())
    assert generator.prompts == [strategy.template.format(prompt="What is 12 + 7?")]
    assert result.prompt == "What is 12 + 7?"
    assert result.best.text == "#### 19" and result.best.meta["votes"] == {"19": 3, "84": 2}
    statuses = [c.meta["program_aided"]["status"] for c in result.candidates]
    assert statuses[3] == "error" and statuses[4] in ("timeout", "cpu_limit")
    assert [e["answer"] for e in result.trace if e["event"] == "execution"] == ["19", "19", "84", None, None, "84", "19"]


def test_no_program_printing_keeps_the_first_sample():
    result = ProgramAided(n=2, isolation=ISOLATION).run("Q", Programs(["I cannot write code.", "x = 1"]),
                                                        None, Budget())
    assert result.best.text == "I cannot write code."


def test_programs_cannot_reach_the_network_or_read_files():
    if ISOLATION != "full":
        pytest.skip("full isolation unavailable here")
    spy = ("```python\nimport os, socket\nprint(len(os.listdir('/')))\n"
           "try:\n    socket.create_connection(('1.1.1.1', 80), timeout=1)\n    print('net')\n"
           "except OSError:\n    print('no network')\n```")
    result = ProgramAided(n=1).run("Q", Programs([spy]), None, Budget())
    assert result.best.text == "no network"


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="program_aided: template must contain"):
        ProgramAided(template="no question here")
    with pytest.raises(ValueError, match="program_aided: n must be"):
        ProgramAided(n=0)
    with pytest.raises(ValueError, match="program_aided: answer_format"):
        ProgramAided(answer_format="{result}")
    with pytest.raises(ValueError, match="program_aided: answer_pattern '\\(' is not a regular expression"):
        ProgramAided(answer_pattern="(")
    registry = metagen_plugins.get_registry()
    assert registry.get("strategies", "program_aided") is not None
