"""Shared-prefix attention (after Hydragen, Juravsky et al., 2024), for the batched engine and
for ``generate()`` alike: one kernel, one registered attention implementation, one context.

Expanding a prompt's KV cache to N rows makes every decoding step read (and, in a growing
DynamicCache, copy) N copies of the prompt's keys and values. Here each prefix's KV is kept once
and each row's cache holds only its own continuation. Attention splits in two parts merged
exactly (a common max and sum): every row's query against its prefix (prefixes stacked and
padded, one batched product; a prefix is read once per step for all its rows), and each row
against its own positions. The engine (``engine.py``) decodes many prefixes at once; the
one-prefix ``generate()`` path (``decoding``) is the same kernel with one prefix.

A forward pass with no layout in context (a prefill, a judge scoring with the host's model, any
other thread) runs plain SDPA. Only for model types whose attention goes through transformers'
attention interface with full (non-sliding) layers (``supported``).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from dataclasses import dataclass

import torch
from transformers import AttentionInterface, AttentionMaskInterface, DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from .kv_quant import QuantPrefix
from .quant_attention import QuantLayout, prefix_part, stack_padded

NAME = "metagen_shared_prefix"
SUPPORTED_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3"}

_active: contextvars.ContextVar["Layout | None"] = contextvars.ContextVar(NAME, default=None)


@dataclass
class Prefix:
    """One request's prefix KV: per layer keys/values [1, kv_heads, P, head_dim]."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def length(self) -> int:
        return self.keys[0].shape[-2]

    @property
    def heads(self) -> int:
        return self.keys[0].shape[1]

    @property
    def dim(self) -> int:
        return self.keys[0].shape[3]

    def tensors(self) -> list[torch.Tensor]:
        return list(self.keys) + list(self.values)


def kv_shape(config) -> tuple[int, int]:
    """A model's KV heads and head dimension, from its config."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return heads, getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


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


class OwnLayer(DynamicLayer):
    """Each row's own positions (what it fed since joining); ``update`` appends one column."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.keys, self.values = keys, values
        self.is_initialized = True
        self.dtype, self.device = keys.dtype, keys.device

    def update(self, key_states, value_states, *args, **kwargs):
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        return self.keys, self.values

    # -- what the engine does to its own KV (kv_quant.QuantOwnLayer has the same) --

    def add_rows(self, rows: int) -> None:
        """``rows`` new rows with every column invalid (zeros)."""
        self.keys = torch.cat([self.keys, self.keys.new_zeros(rows, *self.keys.shape[1:])], 0)
        self.values = torch.cat([self.values, self.values.new_zeros(rows, *self.values.shape[1:])], 0)

    def droppable(self, first: int) -> int:
        """How many of the first ``first`` columns (no row needs them) can go: all of them."""
        return first

    def select(self, index: torch.Tensor, first: int) -> None:
        """Keep rows ``index`` and drop the first ``first`` columns."""
        self.keys = self.keys[index][:, :, first:]
        self.values = self.values[index][:, :, first:]

    def rows(self, rows, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``rows`` from column ``start`` on (views)."""
        return self.keys[rows, :, start:], self.values[rows, :, start:]

    def truncate(self, columns: int) -> None:
        """Keep the first ``columns`` columns (a speculative step's drafts every row rejected go)."""
        self.keys, self.values = self.keys[:, :, :columns], self.values[:, :, :columns]

    def tensors(self) -> list[torch.Tensor]:
        return [self.keys, self.values]


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


class Layout:
    """Where each row's prefix is: prefixes stacked (padded to the longest), the padded slot of
    each row among its request's rows, and which own columns each row may attend to."""

    def __init__(self, requests: list, valid: torch.Tensor, num_layers: int) -> None:
        # requests: the engine's Requests (or _Group): each row count ``width`` and ``prefix``
        rows_max = max(r.width for r in requests)
        length = max(1, max(r.prefix.length for r in requests))
        self.groups, self.rows_max = len(requests), rows_max
        self.valid = valid  # [B, S] own columns each row attends to (before this step's column)
        slots = []
        for g, r in enumerate(requests):
            slots.extend(g * rows_max + j for j in range(r.width))
        self.slots = torch.tensor(slots)
        self.quant = None
        self.keys, self.values = [], []
        if isinstance(requests[0].prefix, QuantPrefix):  # quantized prefixes: read where they are
            self.quant = QuantLayout([r.prefix for r in requests], num_layers)
            return
        self.prefix_mask = torch.zeros(len(requests), 1, 1, length, dtype=torch.bool)
        for g, r in enumerate(requests):
            self.prefix_mask[g, :, :, :r.prefix.length] = True
        for layer in range(num_layers):
            self.keys.append(stack_padded([r.prefix.keys[layer] for r in requests], length))
            self.values.append(stack_padded([r.prefix.values[layer] for r in requests], length))

    def tensors(self) -> list[torch.Tensor]:
        """What it holds beside the prefixes themselves (stacked copies, or the quantized tails)."""
        if self.quant is not None:
            return self.quant.tail_keys + self.quant.tail_values
        return self.keys + self.values


def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention of each row's new positions, ``query`` [B, Hq, q, D] (the engine feeds one), over
    the row's prefix (in the layout) and its own ``key``/``value`` [B, Hkv, S, D] (the new
    positions last); returns [B, q, Hq, D] as transformers' attention functions do."""
    layout = _active.get()
    if layout is None:  # a forward pass outside the decode loop (a prefill, a judge): plain SDPA
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    batch, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    scaling = dim ** -0.5 if scaling is None else scaling
    own_len = key.shape[-2]
    # The layout's mask covers the columns before this pass's, and may cover some of its new ones
    # (a draft model's lagging columns); the rest of the new columns are valid.
    own_valid = torch.cat([layout.valid, layout.valid.new_ones(batch, own_len - layout.valid.shape[1])], 1)
    own = own_valid[:, None, None, :]  # [B, 1, q, S]: the own columns each new position attends to
    if q_len > 1:  # several new positions: causal among them, and each attends to itself (valid or not)
        newest = own_len - q_len + torch.arange(q_len, device=query.device)
        columns = torch.arange(own_len, device=query.device)[None, :]
        own = (own & (columns <= newest[:, None])) | (columns == newest[:, None])
    if layout.rows_max == 1 and layout.quant is None:  # no prefix is shared by two rows: one fused attention over [prefix, own]
        prefix_mask = layout.prefix_mask.expand(-1, -1, q_len, -1)
        mask = torch.cat([prefix_mask, own.expand(batch, 1, q_len, own_len)], -1)
        keys = torch.cat([layout.keys[module.layer_idx], key], 2)
        values = torch.cat([layout.values[module.layer_idx], value], 2)
        out = torch.nn.functional.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scaling,
                                                               enable_gqa=groups > 1)
        return out.transpose(1, 2).contiguous(), None
    q = query.float().reshape(batch, kv_heads, groups * q_len, dim)
    lowest = torch.finfo(torch.float32).min
    # Prefix: rows scattered into [G * rows_max] slots, one product per prefix for all its rows.
    padded = q.new_zeros(layout.groups * layout.rows_max, kv_heads, groups * q_len, dim)
    padded[layout.slots] = q
    padded = padded.reshape(layout.groups, layout.rows_max, kv_heads, groups * q_len, dim).transpose(1, 2)
    padded = padded.reshape(layout.groups, kv_heads, layout.rows_max * groups * q_len, dim)
    if layout.quant is not None:
        p_max, p_sum, p_out = prefix_part(layout.quant, module.layer_idx, padded, scaling)
    else:
        prefix_keys = layout.keys[module.layer_idx].float()
        prefix_values = layout.values[module.layer_idx].float()
        p_scores = torch.matmul(padded, prefix_keys.transpose(-1, -2)) * scaling  # [G, Hkv, R*g, P]
        p_scores = p_scores.masked_fill(~layout.prefix_mask, lowest)
        p_max = p_scores.amax(-1, keepdim=True)
        p_weights = (p_scores - p_max).exp() * layout.prefix_mask
        p_sum = p_weights.sum(-1, keepdim=True)
        p_out = torch.matmul(p_weights, prefix_values)  # [G, Hkv, R*g, D]

    def back(t: torch.Tensor) -> torch.Tensor:  # [G, Hkv, R*g, X] -> [B, Hkv, g, X]
        t = t.reshape(layout.groups, kv_heads, layout.rows_max, groups * q_len, -1).transpose(1, 2)
        return t.reshape(layout.groups * layout.rows_max, kv_heads, groups * q_len, -1)[layout.slots]

    p_max, p_sum, p_out = back(p_max), back(p_sum), back(p_out)
    # Own positions: the columns this row wrote (the newest column, this step's, always).
    o_scores = torch.matmul(q, key.float().transpose(-1, -2)) * scaling  # [B, Hkv, g*q, S]
    own = own.repeat(1, 1, groups, 1) if q_len > 1 else own  # row g*q + i: query head group g, position i
    o_scores = o_scores.masked_fill(~own, lowest)
    o_max = o_scores.amax(-1, keepdim=True)
    o_weights = (o_scores - o_max).exp() * own
    o_sum = o_weights.sum(-1, keepdim=True)
    o_out = torch.matmul(o_weights, value.float())
    peak = torch.maximum(p_max, o_max)
    p_scale, o_scale = (p_max - peak).exp(), (o_max - peak).exp()
    out = (p_out * p_scale + o_out * o_scale) / (p_sum * p_scale + o_sum * o_scale)
    out = out.to(query.dtype).reshape(batch, heads, q_len, dim)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, attention)
AttentionMaskInterface.register(NAME, sdpa_mask)  # masks for the plain-SDPA passes

_attached: dict[int, tuple[int, str]] = {}  # id(model) -> (engines using it, its own implementation)
_attached_lock = threading.Lock()


def attach(model) -> None:
    """Route the model's attention through :func:`attention` while an engine uses it. Set once,
    not around each step: other threads may run the same model at any time (a judge scoring with
    the host's model, a prefill), and outside the decode loop the function is plain SDPA."""
    with _attached_lock:
        count, previous = _attached.get(id(model), (0, model.config._attn_implementation))
        _attached[id(model)] = (count + 1, previous)
        model.config._attn_implementation = NAME


def detach(model) -> None:
    """The model's own attention back when the last engine using it closes."""
    with _attached_lock:
        count, previous = _attached.pop(id(model), (1, model.config._attn_implementation))
        if count > 1:
            _attached[id(model)] = (count - 1, previous)
        else:
            model.config._attn_implementation = previous


@dataclass
class _Group:
    """What a Layout reads of one prefix's rows (the engine's Requests have the same two)."""

    width: int
    prefix: Prefix


@contextlib.contextmanager
def decoding(model, cache: DynamicCache, rows: int):
    """Within this block ``model`` attends through the shared prefix of ``cache`` (whose layers
    are SharedPrefixLayers) for ``rows`` rows: generate()'s path with one prefix."""
    layers = cache.layers
    group = _Group(rows, Prefix([layer.prefix_keys for layer in layers], [layer.prefix_values for layer in layers]))
    token = _active.set(Layout([group], torch.zeros(rows, 0, dtype=torch.bool), len(layers)))
    attach(model)
    try:
        yield
    finally:
        detach(model)
        _active.reset(token)


@contextlib.contextmanager
def laid_out(layout: Layout):
    """Within this block the kernel reads ``layout`` in this thread (the engine, around a step)."""
    token = _active.set(layout)
    try:
        yield
    finally:
        _active.reset(token)
