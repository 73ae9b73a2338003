"""A cache of KV states keyed by token prefix, bounded in bytes, least recently used out first.

The transformers host asks it for the longest cached prefix of the tokens it must run, so a
prompt shared by N samples is computed once, and a step-level search that extends a branch pays
only for the branch's new tokens. Entries may be views into one batch cache (one row each, up
to a length): a generate() call's whole cache is stored once, without copying, and sliced only
when a row is reused. A quantized prefix (``kv_quant.QuantPrefix``, one row, immutable) is an
entry of its own, sliced by views; entries that share its segments each count them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .attention import SharedPrefixLayer
from .kv_quant import QuantPrefix, held_bytes


@dataclass
class _Entry:
    cache: DynamicCache  # possibly a batch; the entry is row ``row`` up to ``length`` tokens
    row: int
    length: int


def cache_bytes(cache: DynamicCache | QuantPrefix) -> int:
    if isinstance(cache, QuantPrefix):
        return held_bytes(cache.tensors())
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in _tensors(layer))


def _tensors(layer) -> tuple[torch.Tensor, ...]:
    if isinstance(layer, SharedPrefixLayer):
        return layer.keys, layer.values, layer.prefix_keys, layer.prefix_values
    return layer.keys, layer.values


def _row(layer, row: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(layer, SharedPrefixLayer):
        return layer.row(row, length)
    return layer.keys[row:row + 1, :, :length].clone(), layer.values[row:row + 1, :, :length].clone()


def sliceable(cache) -> bool:
    """Only full-attention dynamic layers (and quantized prefixes) can be sliced and extended freely."""
    if isinstance(cache, QuantPrefix):
        return True
    return isinstance(cache, DynamicCache) and all(
        not layer.is_sliding and getattr(layer, "keys", None) is not None for layer in cache.layers)


def take(cache: DynamicCache | QuantPrefix, row: int, length: int, config) -> DynamicCache | QuantPrefix:
    """A new single-row cache holding the first ``length`` positions of ``row`` (copied; a
    quantized prefix's first positions, as views: it is never mutated)."""
    if isinstance(cache, QuantPrefix):
        return cache.head(length)
    return DynamicCache(ddp_cache_data=[_row(layer, row, length) for layer in cache.layers], config=config)


class PrefixCache:
    """Token prefix -> KV cache, LRU-bounded by ``max_bytes``."""

    def __init__(self, max_bytes: int, config) -> None:
        self.max_bytes = max_bytes
        self.config = config
        self.entries: "OrderedDict[tuple[int, ...], _Entry]" = OrderedDict()
        self._users: dict[int, int] = {}  # id(cache) -> number of entries using it
        self._sizes: dict[int, int] = {}
        self.bytes = 0

    def longest(self, tokens: tuple[int, ...]) -> tuple[int, DynamicCache | None]:
        """The longest cached prefix of ``tokens`` (an entry may also extend past them):
        (its length, a private single-row copy of its KV)."""
        best_key, best_row, best_length = None, None, 0
        for key, entry in self.entries.items():
            m = _common_prefix(key, tokens)
            if m > best_length:
                best_key, best_row, best_length = key, entry, m
        if best_row is None:
            return 0, None
        self.entries.move_to_end(best_key)
        return best_length, take(best_row.cache, best_row.row, best_length, self.config)

    def put(self, tokens: tuple[int, ...], cache: DynamicCache, row: int = 0) -> None:
        """Remember that ``row`` of ``cache`` holds the KV of ``tokens``; the cache must not be
        mutated afterwards (callers pass a cache they are done with)."""
        if self.max_bytes <= 0 or not tokens or not sliceable(cache):
            return
        if tokens in self.entries:
            self.entries.move_to_end(tokens)
            return
        key = id(cache)
        if key not in self._users:
            size = cache_bytes(cache)
            if size > self.max_bytes:
                return
            self._users[key], self._sizes[key] = 0, size
            self.bytes += size
        self._users[key] += 1
        self.entries[tokens] = _Entry(cache, row, len(tokens))
        while self.bytes > self.max_bytes and self.entries:
            _, old = self.entries.popitem(last=False)
            self._release(old.cache)

    def _release(self, cache: DynamicCache) -> None:
        key = id(cache)
        self._users[key] -= 1
        if self._users[key] == 0:
            self.bytes -= self._sizes.pop(key)
            del self._users[key]

    def clear(self) -> None:
        self.entries.clear()
        self._users.clear()
        self._sizes.clear()
        self.bytes = 0


def _common_prefix(a: tuple, b: tuple) -> int:
    """Length of the longest common prefix, by binary search over C-speed slice comparisons."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def extend_cache(model, cache: DynamicCache | None, tokens: torch.Tensor) -> DynamicCache | None:
    """Run ``tokens`` ([1, k]) on top of ``cache`` (mutated) and return the cache."""
    if tokens.shape[1] == 0:
        return cache
    return model(tokens, cache=cache, use_cache=True).cache
