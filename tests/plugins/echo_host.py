"""A fixture plugin: a whole host (settings, factory, realiser key) and a processor realised on it."""

from metagen_hooks import Candidate, hookimpl


class EchoHost:
    """Answers every prompt with [host] reply, followed by the request parameters it was given."""

    def __init__(self, config, registry, model=None, tokenizer=None):
        from metagen_plugins.components import realised

        self.reply = config.host.get("reply", "echo")
        self.parameters = {}
        for info, values in realised(config, registry, "echo"):
            self.parameters.update(values)

    def generator(self, budget, config=None):
        host = self

        class Generator:
            def __init__(self):
                self.budget = budget

            def sample(self, prompts, n=1, *, max_new_tokens=None, stop=None):
                budget.charge(samples=n * len(prompts), tokens_generated=n * len(prompts))
                text = host.reply + "".join(f" {k}={v}" for k, v in sorted(host.parameters.items()))
                return [[Candidate(prompt=p, text=text, finish_reason="stop") for _ in range(n)] for p in prompts]

            def extend(self, prefixes, n=1, *, max_new_tokens=None, stop=None):
                return self.sample([p.prompt for p in prefixes], n)

        return Generator()

    def context(self):
        return {}

    def close(self):
        pass


class Shout:
    def __call__(self, input_ids, scores):
        return scores


@hookimpl
def register_hosts(register):
    register("echo", EchoHost, settings={"reply": str, "times": int})


@hookimpl
def register_logits_processors(register):
    register("shout", Shout, echo=lambda: {"shout": True})
