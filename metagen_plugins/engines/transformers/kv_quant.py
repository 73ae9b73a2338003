"""Quantized KV for the batched engine, after KIVI (Liu et al., 2024): int8 or int4 (two per
byte), keys treated per channel and values per token, the most recent positions kept in full
precision and quantized in groups as they fill.

Keys have outlier *channels*, so each key channel is first divided by its largest magnitude over
the positions quantized together (a per-channel scale); each position is then quantized over its
normalised channels (a per-position step and offset). Values are quantized per position. So
every scale factors out of a dot product: the per-channel key scale folds into the query, the
per-position ones into the scores and the attention weights, and the kernel
(``quant_attention``) multiplies integers without expanding the cache to floats.

Two holders:

- ``QuantPrefix``: a request's prefix KV, one row, held once for all its rows and in the prefix
  cache: quantized ``Segment``s (immutable, shared by the prefixes that extend them) and a full-
  precision tail of the last ``residual`` positions (the prompt's end, which every row reads);
- ``QuantOwnLayer``: each row's own positions in the engine, each quantized once it is older than
  the last ``residual`` (with the row's prefix's channel scale, so a position's codes depend
  only on its row).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicLayer

from ...errors import ConfigError

SEGMENT_MAX = 65536  # positions per segment: 127 x 127 x this stays within int32 sums


@dataclass(frozen=True)
class KVQuant:
    """``[host] kv_cache = "int8"`` / ``"int4"`` or ``{bits, group, residual}``."""

    bits: int = 8
    group: int = 32  # a prefix's positions quantized together once past the residual
    residual: int = 32  # the most recent positions kept in full precision

    @property
    def levels(self) -> tuple[int, int]:
        return (-128, 127) if self.bits == 8 else (0, 15)


ENGINE_KINDS = {"int8": 8, "int4": 4}
_KEYS = {"bits", "group", "residual"}


def kv_quant(setting) -> KVQuant | None:
    """The engine's quantized KV for ``[host] kv_cache``, or None when the setting is absent or
    names one of generate()'s caches (``"quantized"``, a table with ``implementation``)."""
    if setting is None:
        return None
    if isinstance(setting, str):
        return KVQuant(bits=ENGINE_KINDS[setting]) if setting in ENGINE_KINDS else None
    table = dict(setting)
    if not _KEYS & set(table):
        return None
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise ConfigError(f"[host] kv_cache: unknown key(s) {unknown} beside {sorted(_KEYS & set(table))}; the "
                          f"engine's quantized KV takes bits (8 or 4), group and residual, e.g. "
                          f"kv_cache = {{bits = 4, group = 32, residual = 32}} (generate()'s own caches: "
                          f"{{implementation = \"quantized\", backend = ..., nbits = ...}})")
    spec = KVQuant(**table)
    if spec.bits not in (4, 8) or isinstance(spec.bits, bool):
        raise ConfigError(f"[host] kv_cache: bits = {spec.bits!r}; use 8 (int8) or 4 (int4, two per byte)")
    for name in ("group", "residual"):
        value = getattr(spec, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < (1 if name == "group" else 0):
            raise ConfigError(f"[host] kv_cache: {name} = {value!r}; give a whole number of positions "
                              f"({'>= 1' if name == 'group' else '>= 0'}), e.g. {name} = 32")
    return spec


# -- formats ------------------------------------------------------------------------------------


def _rows(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row of ``x`` (its last dim) as ``u * step + offset``, ``u`` int8 on 2**bits levels."""
    qmin, qmax = (-128, 127) if bits == 8 else (0, 15)
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    step = (hi - lo).clamp(min=1e-12) / (qmax - qmin)
    u = ((x - lo) / step).round_().clamp_(0, qmax - qmin).add_(qmin).to(torch.int8)
    return u, step, lo - qmin * step


def pack(u: torch.Tensor, dim: int) -> torch.Tensor:
    """int4 codes (0..15) two per byte: the first half of ``dim`` in the low nibbles."""
    half = u.shape[dim] // 2
    low, high = u.narrow(dim, 0, half).to(torch.uint8), u.narrow(dim, half, half).to(torch.uint8)
    return low | (high << 4)


def unpack(p: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.cat([p & 15, p >> 4], dim).view(torch.int8)


def quantize_keys(k: torch.Tensor, bits: int):
    """``k`` [..., T, D] -> codes [..., T, D] (int4: packed [..., T, D/2]), the channel scale
    [..., 1, D] over the T positions, and each position's step and offset [..., T, 1]:
    ``k ~ (u * step + offset) * scale``."""
    scale = k.abs().amax(-2, keepdim=True).clamp(min=1e-6)
    u, step, offset = _rows(k / scale, bits)
    return (pack(u, -1) if bits == 4 else u), scale, step, offset


def quantize_values(v: torch.Tensor, bits: int):
    """``v`` [..., T, D] -> codes (int4 packed along D) and each position's step and offset."""
    u, step, offset = _rows(v, bits)
    return (pack(u, -1) if bits == 4 else u), step, offset


def codes(u: torch.Tensor, bits: int, dim: int = -1) -> torch.Tensor:
    return unpack(u, dim) if bits == 4 else u


@dataclass
class Segment:
    """One stretch of a prefix's quantized positions in one layer (one row; immutable, shared)."""

    bits: int
    keys: torch.Tensor  # int8 [H, D, T], transposed for the kernel (int4: uint8 [H, D/2, T])
    key_scale: torch.Tensor  # [H, 1, D] per channel
    key_step: torch.Tensor  # [H, 1, T] per position
    key_offset: torch.Tensor  # [H, 1, T]
    values: torch.Tensor  # int8 [H, T, D] (int4: uint8 [H, T, D/2])
    value_step: torch.Tensor  # [H, 1, T]
    value_offset: torch.Tensor  # [H, 1, T]

    @classmethod
    def of(cls, keys: torch.Tensor, values: torch.Tensor, bits: int) -> "Segment":
        """From full-precision ``keys``/``values`` [H, T, D]."""
        k, scale, k_step, k_offset = quantize_keys(keys.float(), bits)
        v, v_step, v_offset = quantize_values(values.float(), bits)
        return cls(bits, k.transpose(-1, -2).contiguous(), scale, k_step.transpose(-1, -2).contiguous(),
                   k_offset.transpose(-1, -2).contiguous(), v, v_step.transpose(-1, -2).contiguous(),
                   v_offset.transpose(-1, -2).contiguous())

    @property
    def length(self) -> int:
        return self.key_step.shape[-1]

    def int_keys(self) -> torch.Tensor:
        """[H, D, T] int8 codes."""
        return codes(self.keys, self.bits, -2)

    def int_values(self) -> torch.Tensor:
        """[H, T, D] int8 codes."""
        return codes(self.values, self.bits, -1)

    def head(self, length: int) -> "Segment":
        """Its first ``length`` positions (views)."""
        if length >= self.length:
            return self
        return Segment(self.bits, self.keys[..., :length], self.key_scale, self.key_step[..., :length],
                       self.key_offset[..., :length], self.values[:, :length], self.value_step[..., :length],
                       self.value_offset[..., :length])

    def dequantize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-precision keys and values [H, T, D]."""
        keys = (self.int_keys().float() * self.key_step + self.key_offset) * self.key_scale.transpose(-1, -2)
        values = self.int_values().float() * self.value_step.transpose(-1, -2) + self.value_offset.transpose(-1, -2)
        return keys.transpose(-1, -2), values

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.keys, self.key_scale, self.key_step, self.key_offset, self.values, self.value_step,
                self.value_offset)


class QuantPrefix:
    """A prefix's KV, one row: per layer its quantized ``segments`` and a full-precision
    ``tail`` ([1, H, t, D] keys and values), in that order of positions."""

    def __init__(self, spec: KVQuant, segments: list[list[Segment]], tail_keys: list[torch.Tensor],
                 tail_values: list[torch.Tensor]) -> None:
        self.spec, self.segments = spec, segments
        self.tail_keys, self.tail_values = tail_keys, tail_values

    @classmethod
    def quantized(cls, spec: KVQuant, keys: list[torch.Tensor], values: list[torch.Tensor]) -> "QuantPrefix":
        """From per-layer full-precision keys/values [1, H, P, D]: all but the last ``residual``
        positions quantized (when at least ``group`` of them)."""
        empty = cls(spec, [[] for _ in keys], [k[:, :, :0] for k in keys], [v[:, :, :0] for v in values])
        return empty.extended(keys, values)

    @property
    def length(self) -> int:
        return sum(s.length for s in self.segments[0]) + self.tail_keys[0].shape[-2]

    @property
    def heads(self) -> int:
        return self.tail_keys[0].shape[1]

    @property
    def dim(self) -> int:
        return self.tail_keys[0].shape[3]

    def extended(self, keys: list[torch.Tensor], values: list[torch.Tensor]) -> "QuantPrefix":
        """This prefix followed by full-precision ``keys``/``values`` [1, H, k, D] per layer: its
        segments shared, the tail grown, and quantized into new segments once it holds
        ``residual + group`` positions (all but the last ``residual``)."""
        segments, tails_k, tails_v = [], [], []
        for layer, (k, v) in enumerate(zip(keys, values)):
            tail_k = torch.cat([self.tail_keys[layer], k.float()], -2)
            tail_v = torch.cat([self.tail_values[layer], v.float()], -2)
            own = list(self.segments[layer])
            body = tail_k.shape[-2] - self.spec.residual
            if body >= self.spec.group:
                for start in range(0, body, SEGMENT_MAX):
                    end = min(body, start + SEGMENT_MAX)
                    own.append(Segment.of(tail_k[0, :, start:end], tail_v[0, :, start:end], self.spec.bits))
                tail_k, tail_v = tail_k[:, :, body:].clone(), tail_v[:, :, body:].clone()
            segments.append(own)
            tails_k.append(tail_k)
            tails_v.append(tail_v)
        return QuantPrefix(self.spec, segments, tails_k, tails_v)

    def head(self, length: int) -> "QuantPrefix":
        """Its first ``length`` positions (views of its tensors)."""
        if length >= self.length:
            return self
        segments, tails_k, tails_v = [], [], []
        for layer, layer_segments in enumerate(self.segments):
            kept, left = [], length
            for segment in layer_segments:
                if left <= 0:
                    break
                kept.append(segment.head(left))
                left -= segment.length
            segments.append(kept)
            tails_k.append(self.tail_keys[layer][:, :, :max(0, left)])
            tails_v.append(self.tail_values[layer][:, :, :max(0, left)])
        return QuantPrefix(self.spec, segments, tails_k, tails_v)

    def dequantize(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, full-precision keys and values [1, H, P, D] (to run the model past it)."""
        out = []
        for layer, layer_segments in enumerate(self.segments):
            parts = [s.dequantize() for s in layer_segments]
            keys = torch.cat([k[None] for k, _ in parts] + [self.tail_keys[layer]], -2)
            values = torch.cat([v[None] for _, v in parts] + [self.tail_values[layer]], -2)
            out.append((keys, values))
        return out

    def key_scale(self, layer: int) -> torch.Tensor:
        """[H, 1, D]: the largest magnitude of each key channel over the prefix in ``layer`` (the
        channel scale its rows' own keys are quantized with; ones for an empty prefix)."""
        parts = [s.key_scale for s in self.segments[layer]]
        tail = self.tail_keys[layer][0]
        if tail.shape[-2]:
            parts.append(tail.abs().amax(-2, keepdim=True))
        if not parts:
            return torch.ones(tail.shape[0], 1, tail.shape[-1])
        return torch.stack(parts).amax(0).clamp(min=1e-6)

    def tensors(self) -> list[torch.Tensor]:
        out = [t for layer in self.segments for s in layer for t in s.tensors()]
        return out + list(self.tail_keys) + list(self.tail_values)


def held_bytes(tensors) -> int:
    """Bytes of the storage behind ``tensors``, each storage once (views share theirs)."""
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


class QuantOwnLayer(DynamicLayer):
    """Each row's own positions in one layer: all but the last ``residual`` quantized (a
    position moves once it is that old), the last ``residual`` in full precision (``keys`` /
    ``values``). Keys are divided by the row's own per-channel scale (its prefix's, so the same
    whatever shares the batch) and quantized per position, values per position: a position's
    codes depend on nothing but the row, so seeded results do not depend on the batch company.
    ``update`` returns the layer's keys and values in full precision for this step's attention
    (this layer only, then dropped)."""

    def __init__(self, spec: KVQuant, heads: int, dim: int) -> None:
        super().__init__()
        self.spec = spec
        width = dim // 2 if spec.bits == 4 else dim
        kind = torch.uint8 if spec.bits == 4 else torch.int8
        self.scale = torch.ones(0, heads, 1, dim)  # [B, H, 1, D] each row's channel scale
        self.key_codes = torch.zeros(0, heads, 0, width, dtype=kind)
        self.value_codes = torch.zeros(0, heads, 0, width, dtype=kind)
        self.key_params = torch.zeros(0, heads, 0, 2)  # per position: step, offset
        self.value_params = torch.zeros(0, heads, 0, 2)
        self.keys, self.values = torch.zeros(0, heads, 0, dim), torch.zeros(0, heads, 0, dim)  # the residual
        self.is_initialized = True
        self.dtype, self.device = torch.float32, torch.device("cpu")

    @property
    def quantized(self) -> int:
        return self.key_codes.shape[2]

    def update(self, key_states, value_states, *args, **kwargs):
        self.keys = torch.cat([self.keys, key_states.float()], dim=-2)
        self.values = torch.cat([self.values, value_states.float()], dim=-2)
        old = self.keys.shape[-2] - self.spec.residual
        if old > 0:
            self._quantize(self.keys[:, :, :old], self.values[:, :, :old])
            # copies, so the positions just quantized are not kept alive under a view
            self.keys, self.values = self.keys[:, :, old:].clone(), self.values[:, :, old:].clone()
        if not self.quantized:
            return self.keys, self.values
        keys, values = self._dequantized()
        return torch.cat([keys, self.keys], -2), torch.cat([values, self.values], -2)

    def _quantize(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        bits = self.spec.bits
        k, k_step, k_offset = _rows(keys / self.scale, bits)
        v, v_step, v_offset = _rows(values, bits)
        self.key_codes = torch.cat([self.key_codes, pack(k, -1) if bits == 4 else k], -2)
        self.value_codes = torch.cat([self.value_codes, pack(v, -1) if bits == 4 else v], -2)
        self.key_params = torch.cat([self.key_params, torch.cat([k_step, k_offset], -1)], -2)
        self.value_params = torch.cat([self.value_params, torch.cat([v_step, v_offset], -1)], -2)

    def _dequantized(self, rows=slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        bits = self.spec.bits
        kp, vp = self.key_params[rows], self.value_params[rows]
        keys = (codes(self.key_codes[rows], bits).float() * kp[..., :1] + kp[..., 1:]) * self.scale[rows]
        values = codes(self.value_codes[rows], bits).float() * vp[..., :1] + vp[..., 1:]
        return keys, values

    # -- what the engine does to its own KV (OwnLayer has the same) --

    def add_rows(self, rows: int, scale: torch.Tensor | None = None) -> None:
        """``rows`` new rows with every column invalid (zeros); ``scale`` [rows, H, 1, D] their
        channel scales."""
        def grow(t: torch.Tensor) -> torch.Tensor:
            return torch.cat([t, t.new_zeros(rows, *t.shape[1:])], 0)
        for name in ("key_codes", "value_codes", "key_params", "value_params", "keys", "values"):
            setattr(self, name, grow(getattr(self, name)))
        self.scale = torch.cat([self.scale, scale if scale is not None else self.scale.new_ones(rows, *self.scale.shape[1:])])

    def droppable(self, first: int) -> int:
        return first

    def select(self, index: torch.Tensor, first: int) -> None:
        """Keep rows ``index`` and drop the first ``first`` columns."""
        quantized = min(first, self.quantized)
        for name in ("key_codes", "value_codes", "key_params", "value_params"):
            setattr(self, name, getattr(self, name)[index][:, :, quantized:])
        self.keys = self.keys[index][:, :, first - quantized:]
        self.values = self.values[index][:, :, first - quantized:]
        self.scale = self.scale[index]

    def rows(self, rows, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-precision keys and values of ``rows`` from column ``start`` on."""
        if not self.quantized:
            return self.keys[rows, :, start:].clone(), self.values[rows, :, start:].clone()
        keys, values = self._dequantized(rows)
        return (torch.cat([keys, self.keys[rows]], -2)[:, :, start:],
                torch.cat([values, self.values[rows]], -2)[:, :, start:])

    def tensors(self) -> list[torch.Tensor]:
        return [self.scale, self.key_codes, self.value_codes, self.key_params, self.value_params, self.keys,
                self.values]
