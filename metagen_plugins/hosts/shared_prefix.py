"""Shared-prefix attention for N samples of one prompt (after Hydragen, Juravsky et al., 2024).

Expanding a prompt's KV cache to N rows makes every decoding step read (and, in a growing
DynamicCache, copy) N copies of the prompt's keys and values. Here the prompt's KV is kept once;
each row's cache holds only its own continuation. Attention splits in two: all N rows' queries
against the shared prefix as one matrix product (the prefix is read once per step), and each
row against its own suffix; the two softmax parts are merged exactly (a common max and sum).

Used only while metagen's Generator decodes, for model types whose attention goes through
transformers' attention interface with full (non-sliding) layers; everything else keeps the
expanded cache.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import DynamicLayer

NAME = "metagen_shared_prefix"
SUPPORTED_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3"}

_active: contextvars.ContextVar["list[SharedPrefixLayer] | None"] = contextvars.ContextVar(NAME, default=None)


class SharedPrefixLayer(DynamicLayer):
    """A cache layer whose first ``P`` positions are one shared row; ``keys``/``values`` hold
    only each row's own positions after them."""

    def __init__(self, prefix_keys: torch.Tensor, prefix_values: torch.Tensor) -> None:
        super().__init__()
        self.prefix_keys, self.prefix_values = prefix_keys, prefix_values  # [1, heads, P, dim]

    @property
    def prefix_length(self) -> int:
        return self.prefix_keys.shape[-2]

    def get_seq_length(self) -> int:
        return self.prefix_length + super().get_seq_length()

    def row(self, row: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``length`` positions of ``row``, prefix included, as ordinary tensors."""
        own = max(0, length - self.prefix_length)
        keys = [self.prefix_keys[:, :, :length]]
        values = [self.prefix_values[:, :, :length]]
        if own:
            keys.append(self.keys[row:row + 1, :, :own])
            values.append(self.values[row:row + 1, :, :own])
        return torch.cat(keys, dim=-2), torch.cat(values, dim=-2)


def supported(model) -> bool:
    config = model.config
    if config.model_type not in SUPPORTED_MODEL_TYPES or getattr(config, "sliding_window", None):
        return False
    return all(t == "full_attention" for t in (getattr(config, "layer_types", None) or []))


def shared_cache(prefix: DynamicCache, config) -> DynamicCache:
    """A cache for generate() whose layers share ``prefix`` (a one-row cache) among all rows."""
    cache = DynamicCache(config=config)
    cache.layers = [SharedPrefixLayer(layer.keys, layer.values) for layer in prefix.layers]
    return cache


@contextlib.contextmanager
def decoding(model, cache: DynamicCache):
    """Within this block ``model`` attends through the shared prefix of ``cache``."""
    token = _active.set(cache.layers)
    previous = model.config._attn_implementation
    model.config._attn_implementation = NAME
    try:
        yield
    finally:
        model.config._attn_implementation = previous
        _active.reset(token)


def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention of ``query`` [B, Hq, q, D] over the shared prefix and each row's own ``key`` /
    ``value`` [B, Hkv, S, D]; returns [B, q, Hq, D] as transformers' attention functions do."""
    layer = _active.get()[module.layer_idx]
    batch, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    scaling = dim ** -0.5 if scaling is None else scaling
    # Prefix: every row's queries against one copy of the prefix, per KV head, in one product.
    q_by_kv = query.reshape(batch, kv_heads, groups * q_len, dim)
    q_flat = q_by_kv.transpose(0, 1).reshape(kv_heads, batch * groups * q_len, dim)
    prefix_scores = torch.matmul(q_flat, layer.prefix_keys[0].transpose(-1, -2)) * scaling
    prefix_scores = prefix_scores.reshape(kv_heads, batch, groups * q_len, -1).transpose(0, 1)
    own_scores = torch.matmul(q_by_kv, key.transpose(-1, -2)) * scaling  # [B, Hkv, g*q, S]
    if q_len > 1:  # causal within the new positions
        own_len = key.shape[-2]
        positions = torch.arange(own_len, device=query.device)
        query_pos = own_len - q_len + torch.arange(q_len, device=query.device)
        blocked = (positions[None, :] > query_pos[:, None]).repeat(groups, 1)
        own_scores = own_scores.masked_fill(blocked, float("-inf"))
    peak = torch.maximum(prefix_scores.amax(-1, keepdim=True), own_scores.amax(-1, keepdim=True))
    prefix_weights = (prefix_scores - peak).exp()
    own_weights = (own_scores - peak).exp()
    total = prefix_weights.sum(-1, keepdim=True) + own_weights.sum(-1, keepdim=True)
    w_flat = prefix_weights.transpose(0, 1).reshape(kv_heads, batch * groups * q_len, -1)
    from_prefix = torch.matmul(w_flat, layer.prefix_values[0]).reshape(kv_heads, batch, groups * q_len, dim)
    out = (from_prefix.transpose(0, 1) + torch.matmul(own_weights, value)) / total
    out = out.to(query.dtype).reshape(batch, heads, q_len, dim)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, attention)
