"""@dist@: a metagen plugin registering the ``@name@`` host, where strategies sample from a
server speaking OpenAI's ``POST /v1/completions`` (vLLM, SGLang, llama.cpp's server, ...), with
Python's standard library alone.

metagen calls the host's factory once per run with the validated configuration and gets back a
host (``metagen_hooks.Host``: ``generator(budget, config=None)``, ``context()``, ``close()``).
Each prompt gets its own generator (``metagen_hooks.Generator``: ``sample`` and ``extend``), the
one thing strategies talk to; it charges what it spends to the prompt's budget.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Sequence

from metagen_hooks import Budget, Candidate, Capabilities, ConfigError, HostError, Seeds, hookimpl

SETTINGS = {"url": str, "model": str, "timeout": float, "temperature": float}
"""The ``[host]`` settings (name -> type): metagen checks a configuration against them before
the run. ``url`` is the server's root (``http://127.0.0.1:8000``); ``model`` the served model's
name, if the server wants one; ``temperature`` (default 1.0) applies when sampling."""


class CompletionsHost:
    """The server at ``[host] url``, for one run."""

    def __init__(self, config, registry=None, model=None, tokenizer=None) -> None:
        if "url" not in config.host:
            raise ConfigError('the @name@ host needs [host] url, the server\'s root, e.g. url = "http://127.0.0.1:8000"')
        self.config = config
        self.url = config.host["url"].rstrip("/") + "/v1/completions"
        self.timeout = config.host.get("timeout", 60.0)

    def generator(self, budget: Budget, config=None) -> "CompletionsGenerator":
        """A generator charging ``budget``; ``config``: this prompt's configuration (None: the run's)."""
        return CompletionsGenerator(self, budget, config or self.config)

    def context(self) -> dict:
        return {}  # a server lends components no model or tokenizer

    def close(self) -> None:
        pass  # nothing held open: each request opens its own connection

    def post(self, body: dict) -> dict:
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                return json.load(answer)
        except urllib.error.HTTPError as exc:
            raise HostError(f"the @name@ host: {self.url} answered {exc.code}: "
                               f"{exc.read()[:300].decode(errors='replace')}") from None
        except (urllib.error.URLError, TimeoutError) as exc:
            raise HostError(f"the @name@ host cannot reach {self.url} ({getattr(exc, 'reason', exc)}); "
                                  f"is the server running? ([host] url)") from None


class CompletionsGenerator:
    """``sample`` and ``extend`` for one prompt's run, one request per prompt or prefix."""

    def __init__(self, host: CompletionsHost, budget: Budget, config) -> None:
        self.host, self.budget = host, budget
        generation = config.generation  # [generation]: max_new_tokens, do_sample, seed
        self.max_new_tokens = generation.get("max_new_tokens", 64)
        sampling = generation.get("do_sample", False)  # metagen's rule: greedy unless asked
        self.temperature = config.host.get("temperature", 1.0) if sampling else 0.0
        self.model = config.host.get("model")
        self.seeds = Seeds(generation.get("seed"))  # seed, seed + 1, ... one per request (None: unseeded)

    def sample(self, prompts: Sequence[str], n: int = 1, *, max_new_tokens: int | None = None,
               stop: Sequence[str] | None = None) -> list[list[Candidate]]:
        return [self._complete(prompt, "", n, max_new_tokens, stop) for prompt in prompts]

    def extend(self, prefixes: Sequence[Candidate], n: int = 1, *, max_new_tokens: int | None = None,
               stop: Sequence[str] | None = None) -> list[list[Candidate]]:
        return [self._complete(p.prompt, p.text, n, max_new_tokens, stop) for p in prefixes]

    def _complete(self, prompt: str, prefix: str, n: int, max_new_tokens: int | None,
                  stop: Sequence[str] | None) -> list[Candidate]:
        # The budget protocol: ask before (it may grant fewer samples or tokens, or raise
        # BudgetExceeded, which ends the strategy's generation), charge what was spent after.
        n, limit = self.budget.allow(n, max_new_tokens or self.max_new_tokens)
        body = {"prompt": prompt + prefix, "n": n, "max_tokens": limit, "temperature": self.temperature}
        if self.model:
            body["model"] = self.model
        if stop:
            body["stop"] = list(stop)
        seed = self.seeds.next()
        if seed is not None:  # this prompt's generator numbers its own requests: nothing else shares its seeds
            body["seed"] = seed
        answer = self.host.post(body)
        choices = sorted(answer["choices"], key=lambda c: c.get("index", 0))
        usage = answer.get("usage") or {}
        self.budget.charge(samples=len(choices), tokens_generated=int(usage.get("completion_tokens", 0)),
                           prompt_tokens_computed=int(usage.get("prompt_tokens", 0)))
        return [Candidate(prompt=prompt, text=prefix + _text(choice), finish_reason=_finish(choice))
                for choice in choices]


def _text(choice: dict) -> str:
    """The choice's text, with the stop string that ended it (metagen's Generator contract; a
    server that says which one matched, as vLLM's ``stop_reason`` does, lets us put it back)."""
    text, matched = choice["text"], choice.get("stop_reason")
    if choice.get("finish_reason") == "stop" and isinstance(matched, str) and not text.endswith(matched):
        text += matched
    return text


def _finish(choice: dict) -> str:
    return "stop" if choice.get("finish_reason") == "stop" else "length"


def create(config, registry, model=None, tokenizer=None) -> CompletionsHost:
    """A server speaking OpenAI's /v1/completions, through the standard library."""
    return CompletionsHost(config, registry)


@hookimpl
def register_hosts(register):
    # What it realises natively: stop strings (the server's "stop"), so the stop-string components
    # (stop_strings, step_delimiter) run on it; 8 prompts in flight by default. Other processors
    # and stopping criteria are refused before the run, naming the hosts where they work; to
    # accept some, register them with @name@=callable (or fallback=("vllm",) to read vLLM's).
    register("@name@", create, settings=SETTINGS, capabilities=Capabilities(stop_strings=True, concurrency=8))
