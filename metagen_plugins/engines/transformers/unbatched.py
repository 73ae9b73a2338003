"""The paths the batched engine does not take, one ``generate()`` call at a time: speculative
decoding (a draft model, prompt lookup), caches of generate()'s own making (quantized KV), and
``[host] batching = false`` (the N samples of a prompt still share its prefill)."""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from transformers.generation.streamers import BaseStreamer

from .accounting import fresh
from .attention import decoding, shared_cache
from .engine import request_generator
from .prefix_cache import extend_cache, sliceable

class Unbatched:
    """A host's generate() calls, one at a time (under the host's lock); ``host`` is a
    host.TransformersHost."""

    def __init__(self, host) -> None:
        self.host = host
        self.model = host.model
        self.pad_id = host.pad_id
        self.prefix_cache = host.prefixes.cache

    def run(self, tokens: list[int], n: int, kwargs, seed: tuple, logprobs: bool = True) -> tuple[list, int, int, int]:
        """``n`` continuations of ``tokens``: (rows, prompt tokens computed and reused, forward
        passes); ``seed`` the material of the request's random stream. Without ``logprobs``,
        generate() keeps no logits (every step's, for every row: the memory of a long run) and
        the rows carry no log-probabilities."""
        kwargs = {**kwargs, "output_logits": logprobs}
        if kwargs["do_sample"]:  # generate() samples from torch's global generator: seed it
            torch.manual_seed(request_generator(seed).initial_seed())
        passes = [0]
        with self.host.lock, torch.no_grad():
            hook = self.model.register_forward_pre_hook(lambda *_: passes.__setitem__(0, passes[0] + 1))
            try:
                if "assistant_model" in kwargs or "prompt_lookup_num_tokens" in kwargs:
                    rows, computed, reused = self._assisted(tokens, n, kwargs)
                elif "cache_implementation" in kwargs:
                    rows, computed, reused = self._plain(tokens, n, kwargs)
                else:
                    rows, computed, reused = self._shared(tokens, n, kwargs)
            finally:
                hook.remove()
        return rows, computed, reused, passes[0]

    def _shared(self, tokens: list[int], n: int, kwargs) -> tuple[list, int, int]:
        """One generate() call: prefill (or fetch) the prefix once and decode n rows on it,
        through shared-prefix attention where the model supports it, else on the prefix KV
        expanded to n rows."""
        length = len(tokens)
        ids = torch.tensor([tokens])
        hit, context = 0, contextlib.nullcontext()
        if length > 1:
            # generate() must see at least one uncached token: cache all but the last.
            hit, cache = self.prefix_cache.longest(tuple(tokens[:-1]))
            cache = extend_cache(self.model, cache, ids[:, hit:length - 1])
            if self.host.shared_prefix:
                cache = shared_cache(cache, self.model.config)
                context = decoding(self.model, cache, n)
            elif n > 1:
                cache.batch_repeat_interleave(n)
            kwargs["cache"] = cache
        rows = ids.repeat(n, 1)
        with context:
            out = self.model.generate(rows, attention_mask=torch.ones_like(rows), pad_token_id=self.pad_id,
                                      return_dict_in_generate=True, **kwargs)
        new = out.sequences[:, length:]
        results = rows_of(new, out.logits)
        final = out.cache
        if final is not None and sliceable(final):
            cached = final.get_seq_length()
            self.prefix_cache.put(tuple(tokens[:-1]), final, 0)
            for row, (row_new, _) in enumerate(results):
                self.prefix_cache.put(tuple(tokens + row_new[:self.host.eos_at(row_new)])[:cached], final, row)
        computed, reused, _ = fresh(length, hit, n)
        return results, computed, reused

    def _plain(self, tokens: list[int], n: int, kwargs) -> tuple[list, int, int]:
        """A cache of generate()'s own making (e.g. quantized): plain num_return_sequences,
        each row prefilling the prompt itself."""
        ids = torch.tensor([tokens])
        out = self.model.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=self.pad_id,
                                  num_return_sequences=n, return_dict_in_generate=True, **kwargs)
        return rows_of(out.sequences[:, len(tokens):], out.logits), len(tokens) * n, 0

    def _assisted(self, tokens: list[int], n: int, kwargs) -> tuple[list, int, int]:
        """Speculative decoding (draft model or prompt lookup): transformers runs it for one
        row at a time, so each sample is its own call, without prefix sharing."""
        ids = torch.tensor([tokens])
        results = []
        for _ in range(n):
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=self.pad_id,
                                      return_dict_in_generate=True, **kwargs)
            results.extend(rows_of(out.sequences[:, len(tokens):], out.logits))
        return results, len(tokens) * n, 0


class Streamer(BaseStreamer):
    """``generate()``'s streamer interface around an ``on_ids`` callback, for the paths the
    batched loop does not take: the first ``put`` is the prompt (skipped), then each step's
    token; end-of-sequence tokens are left out, as the batched loop leaves them out."""

    def __init__(self, on_ids: Callable[[list[int]], None], eos_ids: set[int]) -> None:
        self.on_ids = on_ids
        self.eos_ids = eos_ids
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        tokens = [t for t in value.reshape(-1).tolist() if t not in self.eos_ids]
        if tokens:
            self.on_ids(tokens)

    def end(self) -> None:
        pass


def rows_of(new: torch.Tensor, logits) -> list[tuple[list[int], list[float]]]:
    """Each row's new tokens (up to its first EOS, padding dropped later) and their log-probs
    under the model (raw logits, before any processor; none when generate() kept no logits)."""
    if new.shape[1] == 0 or logits is None:
        return [(new[r].tolist(), []) for r in range(new.shape[0])]
    logprobs = torch.stack(logits, dim=1).float().log_softmax(-1).gather(2, new.unsqueeze(-1)).squeeze(-1)
    return [(new[r].tolist(), logprobs[r].tolist()) for r in range(new.shape[0])]
