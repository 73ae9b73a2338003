"""The prefix half of shared-prefix attention over quantized prefixes (``kv_quant.QuantPrefix``),
with integer matrix products and no full-precision copy of the cache.

Per prefix, layer and KV head, the scores against a segment's keys are one int8 x int8 product:
the query times the per-channel key scale, quantized per row to int8 (its scale kept), against
the key codes; the per-position step and offset are applied to the scores. The attention weights
times the per-position value step are split into two int8 parts (``w ~ b * (hi + lo / 254)``,
relative error below 1/64,516 of the row's largest weight, so the many small weights of a long
context are not lost) and multiplied with the value codes the same way. ``torch._int_mm`` runs
these on the CPU's integer units; measured here it beats reading the full-precision cache
(``bench/kv_quant.py``). The prefix's full-precision tail is an ordinary float product. The
results are a softmax part (max, sum, weighted values) that ``attention`` merges with the rows'
own positions exactly as for an unquantized prefix.
"""

from __future__ import annotations

import torch

from .kv_quant import QuantPrefix

_LOWEST = torch.finfo(torch.float32).min


def _int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int8 [M, K] x int8 [K, N] -> int32 [M, N] (in float where torch lacks the integer kernel)."""
    if hasattr(torch, "_int_mm"):
        return torch._int_mm(a, b)
    return (a.float() @ b.float()).round_().to(torch.int32)


class QuantLayout:
    """Quantized prefixes side by side: each one's segments in place (at ``offsets`` among the
    padded body columns), and their full-precision tails stacked and padded."""

    def __init__(self, prefixes: list[QuantPrefix], num_layers: int) -> None:
        self.prefixes = prefixes
        self.offsets: list[list[int]] = []
        lengths = []
        for prefix in prefixes:
            at, offsets = 0, []
            for segment in prefix.segments[0]:
                offsets.append(at)
                at += segment.length
            self.offsets.append(offsets)
            lengths.append(at)
        self.body = max(lengths)
        tails = [p.tail_keys[0].shape[-2] for p in prefixes]
        self.tail = max(1, max(tails))
        mask = torch.zeros(len(prefixes), 1, 1, self.body + self.tail, dtype=torch.bool)
        for g, (body, tail) in enumerate(zip(lengths, tails)):
            mask[g, :, :, :body] = True
            mask[g, :, :, self.body:self.body + tail] = True
        self.mask = mask
        # added to the scores: 0 where a prefix has a position, the lowest float where it is padding
        self.bias = torch.zeros(mask.shape).masked_fill_(~mask, _LOWEST)
        self.empty = not all(body or tail for body, tail in zip(lengths, tails))  # a prefix with no position
        self.tail_keys = [_stack([p.tail_keys[layer] for p in prefixes], self.tail) for layer in range(num_layers)]
        self.tail_values = [_stack([p.tail_values[layer] for p in prefixes], self.tail) for layer in range(num_layers)]


def _stack(tensors: list[torch.Tensor], length: int) -> torch.Tensor:
    first = tensors[0]
    out = first.new_zeros(len(tensors), first.shape[1], length, first.shape[3])
    for g, t in enumerate(tensors):
        out[g, :, :t.shape[-2]] = t[0]
    return out


def prefix_part(layout: QuantLayout, layer: int, query: torch.Tensor, scaling: float):
    """``query`` [G, H_kv, M, D] (float32: each prefix's rows and query heads) against each
    prefix's quantized KV in ``layer``: (max, sum, weighted values) of the softmax, shaped
    [G, H_kv, M, 1], [G, H_kv, M, 1], [G, H_kv, M, D]."""
    groups, heads, rows, _ = query.shape
    body = layout.body
    scores = query.new_zeros(groups, heads, rows, body + layout.tail)
    for g, prefix in enumerate(layout.prefixes):
        q = query[g]
        for segment, at in zip(prefix.segments[layer], layout.offsets[g]):
            scaled = q * segment.key_scale  # [H, M, D]: the per-channel key scale folded in
            qscale = scaled.abs().amax(-1, keepdim=True).clamp(min=1e-30) / 127
            qi = (scaled / qscale).round_().to(torch.int8)
            keys = segment.int_keys()
            ints = torch.stack([_int_mm(qi[h], keys[h]) for h in range(heads)])  # [H, M, T]
            scores[g, :, :, at:at + segment.length] = (
                ints.float() * (qscale * segment.key_step) + scaled.sum(-1, keepdim=True) * segment.key_offset)
    scores[..., body:] = torch.matmul(query, layout.tail_keys[layer].transpose(-1, -2))
    scores = scores.mul_(scaling).add_(layout.bias)
    peak = scores.amax(-1, keepdim=True)
    weights = (scores - peak).exp_()  # padding: exp(lowest - peak) = 0, unless a row has no position
    if layout.empty:
        weights.mul_(layout.mask)
    total = weights.sum(-1, keepdim=True)
    out = torch.matmul(weights[..., body:], layout.tail_values[layer])
    for g, prefix in enumerate(layout.prefixes):
        for segment, at in zip(prefix.segments[layer], layout.offsets[g]):
            w = weights[g, :, :, at:at + segment.length]  # [H, M, T]
            scaled = w * segment.value_step  # the per-position value step folded into the weights
            wscale = scaled.amax(-1, keepdim=True).clamp(min=1e-30) / 127
            x = scaled / wscale
            high = x.round()
            low = (x - high).mul_(254).round_()
            wi = torch.cat([high, low], 1).to(torch.int8)  # [H, 2M, T]
            values = segment.int_values()
            ints = torch.stack([_int_mm(wi[h], values[h]) for h in range(heads)]).float()  # [H, 2M, D]
            out[g] += wscale * (ints[:, :rows] + ints[:, rows:] / 254) + (w * segment.value_offset).sum(-1, keepdim=True)
    return peak, total, out
