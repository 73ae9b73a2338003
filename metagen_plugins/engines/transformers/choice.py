"""What one decode step of the engine keeps, row by row: the token each position chooses (a
request's processors, then argmax or the row's own draw), how many of a row's drafts the target
kept, where rows end (EOS, max_new_tokens, stopping criteria), and what a watching strategy sees.

The engine (``engine.py``) runs the forward pass and holds the batch; these functions read the
step's logits and the requests' own state. A step may verify several positions per row (its last
token and its drafts, ``speculation.py``); a plain step is the case of one position.
"""

from __future__ import annotations

import torch

from ...errors import HostError
from .requests import Request, draw, inverse_cdf
from .speculation import uniforms


def choose(r: Request, logits: torch.Tensor, drafts: torch.Tensor | None, age: torch.Tensor,
           pad_id: int) -> torch.Tensor:
    """Request ``r``'s tokens at each position of ``logits`` [rows, positions, vocab]: its
    processors over its rows' ids and scores (a position after the first sees the drafts before
    it as its rows' last tokens), then argmax or a draw, for all n rows (so a row's draws never
    depend on which of its siblings have left). ``age``: tokens each row generated so far (a
    speculating engine's draws are numbered by it). Positions after the first where no row
    chose its draft are not processed (-1)."""
    out = torch.full(logits.shape[:2], -1, dtype=torch.long)
    ids, r.scores = r.ids, []
    live = torch.tensor(r.live) if r.width < r.n else None
    for j in range(logits.shape[1]):
        scores = logits[:, j]
        if live is not None:
            scores = logits.new_zeros(r.n, logits.shape[-1]).index_put_((live,), scores)
        for processor in r.processors:
            scores = processor(ids, scores)
        r.scores.append(scores)
        if r.generator is None:
            picked = scores.argmax(-1)
        elif r.seeds is not None:  # a speculating engine: the row's t-th token's own number
            ages = torch.zeros(r.n, dtype=torch.long)
            ages[r.live] = age
            picked = inverse_cdf(scores.softmax(-1), uniforms(r.seeds, ages + j))
        else:
            picked = draw(scores.softmax(-1), r.generator)
        out[:, j] = picked[live] if live is not None else picked
        if drafts is None or j == drafts.shape[1] or not bool((out[:, j] == drafts[:, j]).any()):
            break
        column = drafts[:, j] if live is None else torch.full((r.n,), pad_id).index_put_((live,), drafts[:, j])
        ids = torch.cat([ids, column[:, None]], 1)
    return out


def kept(chosen: torch.Tensor, drafts: torch.Tensor | None, running: torch.Tensor, *, eos: torch.Tensor,
         left: torch.Tensor, owner: torch.Tensor, requests: int):
    """How many drafts each row keeps (those up to the first its target did not choose), how
    many tokens it emits, and whether it ends (EOS, or ``left`` [rows] tokens before
    max_new_tokens). The rows of one request (``owner``: each row's request, of ``requests``)
    advance together, as their processors and criteria see rectangular ids: a row that goes on
    emits as many tokens as the request's slowest row that goes on; a row that ends within them
    ends."""
    width = chosen.shape[1]
    count = torch.zeros_like(running, dtype=torch.long)
    if drafts is not None:
        count = (chosen[:, :-1] == drafts).long().cumprod(1).sum(1)
    can = count + 1
    at_eos = torch.isin(chosen, eos) & (torch.arange(width)[None, :] < can[:, None])
    end = torch.where(at_eos.any(1), at_eos.long().argmax(1) + 1, width + 1)
    end = torch.minimum(end, left.clamp(min=1))
    ends = end <= can
    if width == 1:
        return count, running.long(), ends & running
    going = torch.where(running & ~ends, can, width + 1)
    pace = torch.full((requests,), width + 1, dtype=torch.long).scatter_reduce(0, owner, going, "amin")[owner]
    emit = torch.where(ends, torch.minimum(end, pace), torch.minimum(can, pace))
    return count, torch.where(running, emit, 0), ends & (end <= pace) & running


def criteria(r: Request, chosen: torch.Tensor, emit: torch.Tensor, stop: torch.Tensor, pad_id: int) -> None:
    """Request ``r``'s ids grow by the tokens its rows emit (pad for rows that emit fewer), one
    position at a time, and its stopping criteria see each: a row they stop emits nothing after
    (``emit`` and ``stop``, the batch's, are updated in place)."""
    rows = slice(r.first, r.first + r.width)
    counts = emit[rows].clone()
    for j in range(int(counts.max()) if r.width else 0):
        picked = torch.where(counts > j, chosen[rows, j], pad_id)
        if r.width < r.n:  # processors and criteria see all n rows; those gone are padding
            picked = torch.full((r.n,), pad_id, dtype=chosen.dtype).index_put_((torch.tensor(r.live),), picked)
        r.ids = torch.cat([r.ids, picked[:, None]], 1)
        scores = r.scores[j] if j < len(r.scores) else r.scores[-1]
        for criterion in r.criteria:
            ended = torch.as_tensor(criterion(r.ids, scores), dtype=torch.bool)
            ended = (ended[r.live] if r.width < r.n else ended) & (counts > j)
            if bool(ended.any()):
                counts = torch.where(ended, j + 1, counts)
                stop[rows] |= ended
    emit[rows] = counts


def report(r: Request, chosen, logprobs, log_probs, emit, done, eos_ids) -> None:
    """A watched request's new tokens (not EOS), their log-probs and top log-probs, and which
    rows ended, for the thread watching it."""
    p = r.progress
    rows = slice(r.first, r.first + r.width)
    tokens, lps, counts, now = chosen[rows].tolist(), logprobs[rows].tolist(), emit[rows].tolist(), done[rows].tolist()
    top = log_probs[rows].topk(p.top_k, -1).values.tolist() if p.top_k else None
    for i, row in enumerate(r.live):
        for j in range(counts[i]):
            if tokens[i][j] not in eos_ids:
                p.tokens[row].append(tokens[i][j])
                p.logprobs[row].append(lps[i][j])
                if top is not None:
                    p.top[row].append(top[i][j])
        if now[i]:
            p.done[row] = True
    with p.wake:
        p.wake.notify_all()


def non_finite(requests: list[Request], logprobs: torch.Tensor, new: torch.Tensor, failed: dict) -> None:
    """Fail the requests whose rows' model logits held NaN or +inf, or were all -inf (the chosen
    token's log-probability is then not finite) at a position they keep, each alone, naming the
    model (``failed``: id(request) -> (request, error), updated)."""
    bad = (~torch.isfinite(logprobs) & new).any(1).tolist()
    for r in requests:
        rows = range(r.first, r.first + r.width)
        if not r.zombie and id(r) not in failed and any(bad[i] for i in rows):
            row = r.live[next(i for i, at in enumerate(rows) if bad[at])]
            failed[id(r)] = r, HostError(
                f"the model's logits held NaN or +inf, or were all -inf, at generation step {r.steps} "
                f"(row {row}); metagen does not sample from them. The model's weights or its dtype "
                f"are the likely cause: try [host] dtype = \"float32\", or check the checkpoint")
