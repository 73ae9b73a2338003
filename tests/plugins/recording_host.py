"""A fixture plugin for the runner's tests: a host with no model (its generators are
metagen_hooks.testing.ScriptedGenerator) that records what the runner does with it, and two
scorers living beside it in this one module.

``RecordingHost.made`` lists the hosts made; a host's ``events`` are, in order, the generators
it handed out (with the keyword arguments the runner passed), each prompt answered, and its
closing. Every answer is "#### <the prompt's length>"; the prompt "host fails" raises in the
host's own code; a prompt in ``RecordingHost.gates`` waits for that threading.Event first.
Settings: ``default_concurrency``, ``streams`` and ``conversations`` become the host object's
attributes of those names, which the runner asks before the declared capabilities."""

import threading

from metagen_hooks import Capabilities, hookimpl
from metagen_hooks.testing import ScriptedGenerator


class RecordingHost:
    made: list["RecordingHost"] = []
    gates: dict[str, threading.Event] = {}

    def __init__(self, config, registry, model=None, tokenizer=None):
        self.events: list[tuple] = []
        for setting in ("default_concurrency", "streams", "conversations"):
            if setting in config.host:
                setattr(self, setting, config.host[setting])
        RecordingHost.made.append(self)

    def generator(self, budget, **extras):  # extras: config=, conversation=, on_text=, as the runner passes them
        self.events.append(("generator", extras))
        return ScriptedGenerator(self.answer, budget)

    def answer(self, prompt, prefix, i):
        if prompt == "host fails":
            raise RuntimeError("the recording host cannot answer this")
        gate = self.gates.get(prompt)
        if gate is not None and not gate.wait(timeout=30):
            raise TimeoutError(f"prompt {prompt!r} waited 30 s for its gate")
        self.events.append(("answered", prompt))
        return f"#### {len(prompt)}"

    def context(self):
        return {"tokenizer": "the recording host's tokenizer"}

    def close(self):
        self.events.append(("closed",))


class TextLength:
    """A scorer that needs nothing of the host: a candidate's text length times ``scale``; it
    raises when scoring with ``fail``. ``TextLength.built`` counts its instances."""

    built = 0

    def __init__(self, scale: float = 1.0, fail: bool = False):
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        TextLength.built += 1
        self.scale, self.fail = scale, fail

    def score(self, prompt, candidates):
        if self.fail:
            raise ArithmeticError("text_length was told to fail")
        return [self.scale * len(c.text) for c in candidates]


class NeedsHost:
    """A scorer built with the host's tokenizer (so only once the host exists); ``refuse``
    makes building it fail."""

    def __init__(self, tokenizer, refuse: bool = False):
        if refuse:
            raise RuntimeError("needs_host refuses to be built")
        self.tokenizer = tokenizer

    def score(self, prompt, candidates):
        return [0.0 for _ in candidates]


@hookimpl
def register_hosts(register):
    register("recording", RecordingHost, settings={"default_concurrency": int, "streams": bool, "conversations": bool},
             capabilities=Capabilities(concurrency=3))


@hookimpl
def register_scorers(register):
    register("text_length", TextLength)
    register("needs_host", NeedsHost)
