"""A prefix's KV for the engine: taken from the prefix cache as far as it holds it, computed
past that (prefixes the cache knows nothing of together, in one forward pass), and a finished
request's rows remembered, so extending one later pays only for its new tokens.

With ``[host] kv_cache = "int8"`` / ``"int4"`` every prefix is quantized as soon as it is
computed (``kv_quant.QuantPrefix``): the engine and the prefix cache hold only that; a prefix
extended past a cached one shares the cached one's quantized segments.

The engine is handed one ``Prefixes`` object (the host's): it asks it for prefixes and gives it
finished rows; it calls nothing else of the host.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from .attention import Prefix, SharedPrefixLayer, kv_shape
from .kv_quant import KVQuant, QuantPrefix
from .prefix_cache import PrefixCache

# Prefill batches stay under this many (padded) tokens.
_PREFILL_TOKENS = 8192


class Prefixes:
    """The host's prefix store: ``cache`` (a PrefixCache of ``max_bytes``; 0 keeps nothing)
    and the model that computes what it lacks."""

    def __init__(self, model, max_bytes: int, *, eos_ids: set[int], pad_id: int,
                 kv: KVQuant | None = None) -> None:
        self.model = model
        self.kv = kv
        self.cache = PrefixCache(max_bytes, model.config)
        self.eos_ids, self.pad_id = eos_ids, pad_id

    @property
    def remembers(self) -> bool:
        return self.cache.max_bytes > 0

    def prefill(self, prefixes: list[list[int]]) -> list[tuple[Prefix, int]]:
        """Each prefix's KV as one row, with how many of its tokens the prefix cache held: taken
        from the cache as far as it holds it, computed past that; prefixes the cache knows nothing
        of are computed together, right-padded, in one forward pass (per chunk of tokens)."""
        out: list[tuple[Prefix, int] | None] = [None] * len(prefixes)
        fresh: dict[tuple[int, ...], list[int]] = {}
        for index, tokens in enumerate(prefixes):
            if not tokens:  # a one-token prompt: no prefix at all
                out[index] = self._empty_prefix(), 0
                continue
            hit, cache = self.cache.longest(tuple(tokens))
            if hit == 0:
                fresh.setdefault(tuple(tokens), []).append(index)
                continue
            if self.kv is not None:
                out[index] = self._extend_quantized(tokens, hit, cache), hit
                continue
            if hit < len(tokens):
                cache = self.model(torch.tensor([tokens[hit:]]), cache=cache, use_cache=True).cache
                self.cache.put(tuple(tokens), cache, 0)
            out[index] = Prefix([layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]), hit
        pending = sorted(fresh, key=len)
        while pending:
            chunk = [pending.pop()]  # longest first; add prefixes while the padded batch stays small
            while pending and (len(chunk) + 1) * len(chunk[0]) <= _PREFILL_TOKENS:
                chunk.append(pending.pop())
            for tokens, prefix in zip(chunk, self._prefill_batch(chunk)):
                for index in fresh[tokens]:
                    out[index] = prefix, 0
        return out

    def _prefill_batch(self, chunk: list[tuple[int, ...]]) -> list[Prefix]:
        """One forward pass over prefixes right-padded to the longest (padding sits after every
        real token, so causal attention never sees it); the batch cache is kept once in the prefix
        cache, each prefix a row of it."""
        length = len(chunk[0])
        ids = torch.full((len(chunk), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, tokens in enumerate(chunk):
            ids[row, :len(tokens)] = torch.tensor(tokens)
            mask[row, :len(tokens)] = 1
        cache = self.model(ids, attention_mask=mask if len(chunk) > 1 else None, use_cache=True).cache
        prefixes = []
        for row, tokens in enumerate(chunk):
            if self.kv is not None:  # only the quantized prefix is kept
                prefixes.append(QuantPrefix.quantized(self.kv, [layer.keys[row:row + 1, :, :len(tokens)]
                                                                for layer in cache.layers],
                                                      [layer.values[row:row + 1, :, :len(tokens)]
                                                       for layer in cache.layers]))
                self.cache.put(tokens, prefixes[-1], 0)
                continue
            self.cache.put(tokens, cache, row)
            prefixes.append(Prefix([layer.keys[row:row + 1, :, :len(tokens)] for layer in cache.layers],
                                    [layer.values[row:row + 1, :, :len(tokens)] for layer in cache.layers]))
        return prefixes

    def _extend_quantized(self, tokens: list[int], hit: int, cached: QuantPrefix) -> QuantPrefix:
        """A quantized prefix of ``tokens`` from a cached one of their first ``hit``: the model
        runs the rest on it (dequantized for that forward pass), and the new positions extend it."""
        if hit == len(tokens):
            return cached
        past = DynamicCache(ddp_cache_data=cached.dequantize(), config=self.model.config)
        cache = self.model(torch.tensor([tokens[hit:]]), cache=past, use_cache=True).cache
        prefix = cached.extended([layer.keys[:, :, hit:] for layer in cache.layers],
                                 [layer.values[:, :, hit:] for layer in cache.layers])
        self.cache.put(tuple(tokens), prefix, 0)
        return prefix

    def _empty_prefix(self) -> Prefix | QuantPrefix:
        config = self.model.config
        heads, dim = kv_shape(config)
        empty = next(self.model.parameters()).new_zeros(1, heads, 0, dim)
        if self.kv is not None:
            return QuantPrefix.quantized(self.kv, [empty] * config.num_hidden_layers, [empty] * config.num_hidden_layers)
        return Prefix([empty] * config.num_hidden_layers, [empty] * config.num_hidden_layers)

    def remember(self, tokens: list[int], prefix: Prefix, own: list[tuple[torch.Tensor, torch.Tensor]],
                 rows: list[tuple[list[int], list[float]]]) -> None:
        """Keep each finished row of a request (``tokens``: what it continued, ``prefix``: their
        KV but the last; ``own``: per layer, what its rows wrote; ``rows``: their new tokens) in
        the prefix cache, so extending it later pays only for new tokens."""
        if isinstance(prefix, QuantPrefix):  # each row: the shared prefix, then its own positions
            for row, (new, _) in enumerate(rows):
                kept = next((i for i, t in enumerate(new) if t in self.eos_ids), len(new))
                fed = len(new)  # its columns: the prompt's last token and every generated one but the last
                extended = prefix.extended([keys[row:row + 1, :, :fed] for keys, _ in own],
                                           [values[row:row + 1, :, :fed] for _, values in own])
                self.cache.put(tuple(tokens + new[:kept])[:len(tokens) - 1 + fed], extended, 0)
            return
        cache = DynamicCache(config=self.model.config)
        layers = []
        for (keys, values), prefix_keys, prefix_values in zip(own, prefix.keys, prefix.values):
            layer = SharedPrefixLayer(prefix_keys, prefix_values)
            layer.keys, layer.values = keys.clone(), values.clone()
            layer.is_initialized = True
            layers.append(layer)
        cache.layers = layers
        for row, (new, _) in enumerate(rows):
            kept = next((i for i, t in enumerate(new) if t in self.eos_ids), len(new))
            length = len(tokens) - 1 + len(new)  # every generated token but the last was fed
            self.cache.put(tuple(tokens + new[:kept])[:length], cache, row)

