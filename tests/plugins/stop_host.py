"""A fixture plugin: a host that realises stop strings natively and no processor, written with the
contract and the host kit only. Its "model" recites [host] text, seeded: sample i of a request
starts at word (seed + i) mod the number of words."""

from metagen_hooks import Candidate, Capabilities, HostError, Seeds, hookimpl
from metagen_hooks.hosting import DEFAULT_MAX_NEW_TOKENS
from metagen_plugins.hostkit import realised


class StopHost:
    def __init__(self, config, registry, model=None, tokenizer=None):
        if model is not None or tokenizer is not None:
            raise HostError("the stopper host has no model to lend: leave out model= and tokenizer=")
        self.words = config.host.get("text", "one. two. three. four.").split(" ")
        self.config = config
        # the configured stop-string components, as the Generator's own stop strings
        self.stop = [s for _, values in realised(config, registry, "stopper") for s in values.get("stop", [])]

    def generator(self, budget, config=None):
        return StopGenerator(self, budget, (config or self.config).generation)

    def context(self):
        return {}

    def close(self):
        pass


class StopGenerator:
    def __init__(self, host, budget, generation):
        self.host, self.budget = host, budget
        self.max_new_tokens = generation.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
        self.seeds = Seeds(generation.get("seed", 0))

    def sample(self, prompts, n=1, *, max_new_tokens=None, stop=None):
        return [self._one(p, "", n, max_new_tokens, stop) for p in prompts]

    def extend(self, prefixes, n=1, *, max_new_tokens=None, stop=None):
        return [[Candidate(prompt=c.prompt, text=p.text + c.text, finish_reason=c.finish_reason)
                 for c in self._one(p.prompt, p.text, n, max_new_tokens, stop)] for p in prefixes]

    def _one(self, prompt, prefix, n, max_new_tokens, stop):
        n, limit = self.budget.allow(n, max_new_tokens or self.max_new_tokens)  # allow before
        stops = [*self.host.stop, *(stop or [])]
        seed = self.seeds.next()
        out, generated = [], 0
        for i in range(n):
            words = self.host.words
            start = (seed + i) % len(words)
            text, finish = "", "length"
            for word in (words[start:] + words[:start])[:limit]:
                text += (" " if text or prefix else "") + word
                generated += 1
                hit = [text.index(s) + len(s) for s in stops if s in text]
                if hit:  # the text keeps the stop string that ended it
                    text, finish = text[:min(hit)], "stop"
                    break
            out.append(Candidate(prompt=prompt, text=text, finish_reason=finish))
        self.budget.charge(samples=n, tokens_generated=generated)  # charge after
        return out


@hookimpl
def register_hosts(register):
    register("stopper", StopHost, settings={"text": str},
             capabilities=Capabilities(stop_strings=True, concurrency=3))
