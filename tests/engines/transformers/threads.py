"""Each prompt's sample() from its own thread, so the prompts share the engine's batch."""

from __future__ import annotations

import threading

from metagen_hooks import Budget


def sample_concurrently(h, prompts, n: int, max_new_tokens: int, **kwargs) -> list[list]:
    """Every prompt's candidates, in prompt order; ``h`` (a TransformersHost) is closed after."""
    out: dict[int, list] = {}

    def one(i):
        out[i] = h.generator(Budget()).sample([prompts[i]], n=n, max_new_tokens=max_new_tokens, **kwargs)[0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    h.close()
    return [out[i] for i in range(len(prompts))]
