"""What a finished row leaves the engine with: its tokens and their log-probs (the positions it
kept), and the keys and values it wrote, each row's first, for the prefix store to remember.

The engine's batch has one column per position fed; a row's own columns are those its mask
keeps (``valid``): every column since it joined without speculation, and past drafts the model
rejected with it (``gather``: each row's kept columns are gathered to its first).
"""

from __future__ import annotations

import torch

from .requests import Request


def generated(valid: torch.Tensor, tokens: torch.Tensor, logprobs: torch.Tensor, rows: slice,
              start: int) -> list[tuple[list[int], list[float]]]:
    """Each row's tokens and their log-probs: its kept positions since column ``start``."""
    kept = valid[rows, start:].tolist()
    tokens, logprobs = tokens[rows, start:].tolist(), logprobs[rows, start:].tolist()
    return [([t for t, k in zip(ts, ks) if k], [lp for lp, k in zip(lps, ks) if k])
            for ts, lps, ks in zip(tokens, logprobs, kept)]


def row_kv(own: list, valid: torch.Tensor, rows: slice, start: int, *,
           gather: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer of ``own`` (the engine's own KV layers), the keys and values ``rows`` fed since
    column ``start``, each row's first: one run from its first column, or with ``gather`` (a
    speculating engine) each row's kept columns gathered past the holes rejected drafts left."""
    out = [layer.rows(rows, start) for layer in own]
    if not gather:
        return out
    order = torch.sort((~valid[rows, start:]).to(torch.int8), dim=1, stable=True).indices
    gathered = []
    for keys, values in out:
        index = order[:, None, :, None].expand(-1, keys.shape[1], -1, keys.shape[3])
        gathered.append((keys.gather(2, index), values.gather(2, index)))
    return gathered


def request_kv(r: Request, own: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the keys and values each of the request's n rows wrote, in row order: ``own``
    for the rows still in the batch, and those of rows that left early (``r.left``), padded."""
    if not r.left:
        return own
    live = torch.tensor(r.live, dtype=torch.long)
    full = []
    for index, (keys, values) in enumerate(own):
        all_keys = keys.new_zeros(r.n, *keys.shape[1:])
        all_values = values.new_zeros(r.n, *values.shape[1:])
        all_keys[live], all_values[live] = keys, values
        for row, (_, _, kv) in r.left.items():
            if kv is not None:
                gone_keys, gone_values = kv[index]
                all_keys[row, :, :gone_keys.shape[-2]] = gone_keys[0]
                all_values[row, :, :gone_values.shape[-2]] = gone_values[0]
        full.append((all_keys, all_values))
    return full
