"""One batched decode loop for every sequence in flight on the in-process host.

Strategies run in many worker threads (the runner); each ``sample``/``extend`` call becomes one
:class:`Request` per prefix: ``n`` rows continuing the same token prefix. A single engine
thread decodes all admitted requests' rows together, one token per step (continuous batching:
a request joins at the next step after it arrives, and its result is delivered as soon as all
its rows are done; finished rows are dropped from the batch in bulk, when enough have gathered
or new requests join, rather than reshaping every tensor whenever one request ends).

Memory layout (a generalisation of Hydragen-style shared-prefix attention to many prefixes):
each request's prefix KV is computed once (or taken from the host's prefix cache) and held
once, as one row; the batch's own KV holds only what each row generated. Attention splits in
two parts merged exactly: every row's query against its request's prefix (all prefixes
stacked and padded, one batched product; a prefix is read once per step for all its rows), and
each row against its own positions.

Per-row semantics follow ``generate()``: the request's logits processors see its rows'
``input_ids`` (prefix + generated, rectangular: finished rows are padded until the whole
request is done) and scores; stopping criteria, EOS and ``max_new_tokens`` end rows. Each row
samples from its own ``torch.Generator``, so its tokens do not depend on which other requests
share the batch.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import torch
from transformers import DynamicCache

from metagen_hooks import BudgetExceeded

from ...errors import HostError
from .accounting import fresh
from .attention import Layout, OwnLayer, attach, detach, laid_out
from .kv_quant import KVQuant, QuantOwnLayer, held_bytes
from .choice import choose, criteria, kept, non_finite, report
from .harvest import generated, request_kv, row_kv
from .requests import Progress, Request, draw, request_generator  # noqa: F401 (re-exported)
from .speculation import Speculation, row_seeds

GATHER_GAP, GATHER_MAX = 0.005, 0.05  # seconds: how an idle loop waits for a batch to assemble


class Engine:
    """The decode loop, in its own thread. ``submit`` a Request and wait on its future, which
    holds ``(rows, computed, reused, passes)``: each row's new tokens (up to and including EOS)
    and their log-probs under the model, prompt tokens computed and reused, forward passes."""

    def __init__(self, model, prefixes, *, eos_ids: set[int], pad_id: int, max_batch_tokens: int,
                 kv: KVQuant | None = None, speculation: Speculation | None = None) -> None:
        self.model = model
        self.speculation = speculation  # drafts verified several tokens a step (speculation.py), or None
        self.kv = kv  # the rows' own KV quantized (kv_quant), as the prefix store quantizes prefixes
        self.measure = False  # record the peak bytes held each step (the benchmark's memory figures)
        self.peak_kv_bytes = self.peak_layout_bytes = 0
        self.eos = torch.tensor(sorted(eos_ids)) if eos_ids else torch.tensor([], dtype=torch.long)
        self._eos_ids = frozenset(eos_ids)
        self.pad_id = pad_id
        self.max_batch_tokens = max_batch_tokens
        # the host's prefix store (prefixes.Prefixes): each new request's prefix KV from it, and
        # finished rows back to it when it remembers
        self.prefixes = prefixes
        self.num_layers = model.config.num_hidden_layers
        self._pending: list[Request] = []
        self._active: list[Request] = []
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="metagen-decode", daemon=True)
        self._reset()
        attach(model)
        self._thread.start()

    def submit(self, request: Request) -> Future:
        if request.on_token is not None and request.n != 1:
            raise ValueError(f"on_token streams a one-row request; this one has {request.n} rows")
        if request.cost() > self.max_batch_tokens:
            raise HostError(f"one request needs {request.cost()} tokens of KV cache ({len(request.tokens)} "
                            f"prefix tokens + {request.n} rows x {request.max_new_tokens} new tokens), more than "
                            f"[host] max_batch_tokens = {self.max_batch_tokens}; raise max_batch_tokens (memory "
                            f"allowing) or ask for fewer samples or tokens per call")
        with self._wake:
            if self._closed:
                raise HostError("the transformers host is closed")
            self._pending.append(request)
            self._wake.notify()
        return request.future

    def close(self) -> None:
        with self._wake:
            if self._closed:
                return
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=30)
        detach(self.model)
        if self.speculation is not None:
            self.speculation.drafter.close()

    # -- the loop --------------------------------------------------------------------------

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._pending and not self._active and not self._closed:
                        self._wake.wait()
                    if self._closed:
                        for r in self._pending + self._active:
                            if not r.future.done():
                                r.future.set_exception(HostError("the transformers host was closed"))
                        return
                    if not self._active:
                        self._gather()
                    admitted = self._admit()
                try:
                    self._join(admitted)
                    self._cut()
                    if self._active:
                        self._step()
                except BaseException as exc:  # the model itself failed: every request in flight fails
                    for r in self._active:
                        if not r.future.done():
                            r.future.set_exception(exc)
                    self._reset()

    def _gather(self) -> None:
        """With nothing decoding, wait while requests keep arriving (each within GATHER_GAP of
        the last, for at most GATHER_MAX), so prompts submitted together start in one batch with
        one prefill instead of trickling in one forward pass each. Called holding the lock."""
        deadline = time.monotonic() + GATHER_MAX
        while not self._closed:
            seen = len(self._pending)
            self._wake.wait(timeout=GATHER_GAP)
            if len(self._pending) == seen or time.monotonic() >= deadline:
                return

    def _admit(self) -> list[Request]:
        """Pending requests that fit under max_batch_tokens, in arrival order (back-pressure:
        the rest wait for rows to leave)."""
        for request in [r for r in self._pending if r.cancelled is not None and r.cancelled()]:
            self._pending.remove(request)  # cancelled while it waited: it never takes a slot
            request.future.set_exception(BudgetExceeded(f"the run was cancelled: {request.cancelled()}"))
        for request in [r for r in self._pending if r.progress is not None and len(r.progress.cancel) == r.n]:
            self._pending.remove(request)  # its strategy cancelled every row before it started
            request.cut = set(range(request.n))
            request.future.set_result(([([], [])] * request.n, 0, 0, 0))
        used = sum(r.cost() for r in self._active if not r.zombie)
        admitted = []
        while self._pending and (used + self._pending[0].cost() <= self.max_batch_tokens or not (used or admitted)):
            request = self._pending.pop(0)
            used += request.cost()
            admitted.append(request)
        return admitted

    def _join(self, requests: list[Request]) -> None:
        """Prefill each new request's prefix (all its tokens but the last, which each row feeds
        as its first step) and add its rows to the batch with no own positions yet."""
        if not requests:
            return
        try:
            prefixes = self.prefixes.prefill([r.tokens[:-1] for r in requests])
        except BaseException as exc:
            for request in requests:
                request.future.set_exception(exc)
            return
        if self._active and bool(self._done.any()):
            self._compact()  # the layout is rebuilt anyway: drop finished rows now
        width = self._valid.shape[1]
        rows = sum(r.n for r in requests)
        heads, dim = prefixes[0][0].heads, prefixes[0][0].dim
        if not self._own:
            empty = prefixes[0][0].tensors()[0].new_zeros(0, heads, 0, dim)
            self._own = [QuantOwnLayer(self.kv, heads, dim) if self.kv else OwnLayer(empty, empty)
                         for _ in range(self.num_layers)]
        last, pos, limit = [], [], []
        for request, (prefix, hit) in zip(requests, prefixes):
            request.prefix = prefix
            prefix_len = len(request.tokens) - 1
            request.computed, request.reused, prefill = fresh(len(request.tokens), hit, request.n)
            request.passes += prefill
            if request.slow:
                request.ids = torch.tensor([request.tokens]).repeat(request.n, 1)
            if self.speculation is not None:
                self.speculation.drafter.join(request)
                if request.generator is not None:
                    request.seeds = row_seeds(request.generator, request.n)
            last += [request.tokens[-1]] * request.n
            pos += [prefix_len] * request.n
            limit += [request.max_new_tokens] * request.n
        first_k = self.speculation.first_length() if self.speculation is not None else 0
        for index, layer in enumerate(self._own):
            if self.kv:  # each row's own keys quantized with its prefix's channel scale
                layer.add_rows(rows, torch.cat([prefix.key_scale(index).expand(r.n, -1, -1, -1)
                                                for r, (prefix, _) in zip(requests, prefixes)]))
            else:
                layer.add_rows(rows)
        self._valid = torch.cat([self._valid, self._valid.new_zeros(rows, width)], 0)
        self._tokens = torch.cat([self._tokens, self._tokens.new_zeros(rows, width)], 0)
        self._logprobs = torch.cat([self._logprobs, self._logprobs.new_zeros(rows, width)], 0)
        self._last = torch.cat([self._last, torch.tensor(last, dtype=torch.long)])
        self._pos = torch.cat([self._pos, torch.tensor(pos, dtype=torch.long)])
        self._limit = torch.cat([self._limit, torch.tensor(limit, dtype=torch.long)])
        self._age = torch.cat([self._age, self._age.new_zeros(rows)])
        self._k = torch.cat([self._k, torch.full((rows,), first_k, dtype=torch.long)])
        self._done = torch.cat([self._done, self._done.new_zeros(rows)])
        self._active.extend(requests)
        if self.speculation is not None:
            self.speculation.drafter.rows_added(self, rows)
        self._renumber()

    def _renumber(self) -> None:
        """Each request's first row, and the owner of each row (after rows join or leave)."""
        first, owners = 0, []
        for index, r in enumerate(self._active):
            r.first = first
            first += r.width
            owners.append(torch.full((r.width,), index, dtype=torch.long))
        self._owner = torch.cat(owners) if owners else torch.zeros(0, dtype=torch.long)
        self._sizes = torch.tensor([r.width for r in self._active], dtype=torch.long)
        self._layout = None

    def _cut(self) -> None:
        """Rows their strategies cancelled (``Progress.cancel``) end now: they stop counting and
        leave the batch at the next compaction; a request with no row left is done."""
        for r in list(self._active):
            if r.zombie or r.progress is None or not r.progress.cancel:
                continue
            for row in list(r.progress.cancel):
                if row in r.cut or row not in r.live:
                    continue  # cancelled already, or finished and gone
                i = r.first + r.live.index(row)
                if not bool(self._done[i]):
                    r.cut.add(row)
                    self._done[i] = True
                    self._limit[i] = 0
            if bool(self._done[r.first:r.first + r.width].all()):
                self._finish(r)
        if self._active and bool(self._done.all()):
            self._reset()  # every row ended: nothing left to decode

    def _step(self) -> None:
        """One forward pass over every row (its last token, and on a speculative step its
        drafts), then: argmax for the whole batch; each request with processors, sampling or
        stopping criteria on its own rows; how many tokens each row keeps, EOS, lengths and
        bookkeeping for the whole batch at once."""
        if self._layout is None:
            self._layout = Layout(self._active, self._valid, self.num_layers)
        else:
            self._layout.valid = self._valid
        running = ~self._done
        spec = self.speculation is not None and self.speculation.start(int(running.sum()))
        drafts, drafted = self.speculation.draft(self) if spec else (None, None)
        inputs = self._last[:, None] if drafts is None else torch.cat([self._last[:, None], drafts], 1)
        width = inputs.shape[1]
        cache = DynamicCache(config=self.model.config)
        cache.layers = self._own
        # A prepared 4D mask is passed through untouched; the attention reads the layout.
        mask = torch.ones(self._last.shape[0], 1, 1, 1, dtype=torch.bool)
        positions = self._pos[:, None] + torch.arange(width)
        with laid_out(self._layout):
            logits = self.model(input_ids=inputs, position_ids=positions, attention_mask=mask, cache=cache,
                                use_cache=True).logits.float()
        if self.measure:
            self.peak_kv_bytes = max(self.peak_kv_bytes, self.kv_bytes())
            self.peak_layout_bytes = max(self.peak_layout_bytes, held_bytes(self._layout.tensors()))
        chosen = logits.argmax(-1)  # [B, width]: the token each position chooses
        failed: dict[int, tuple[Request, BaseException]] = {}  # id(request) -> its error
        for r in self._active:
            if r.zombie:
                continue
            r.steps += 1
            r.passes += 1
            reason = r.cancelled() if r.cancelled is not None else None
            if reason is not None:  # its run was cancelled (a deadline, a client gone): drop its rows
                failed[id(r)] = r, BudgetExceeded(f"the run was cancelled: {reason}")
                continue
            if r.slow:
                rows = slice(r.first, r.first + r.width)
                try:
                    chosen[rows] = choose(r, logits[rows], None if drafts is None else drafts[rows],
                                          self._age[rows], self.pad_id)
                except BaseException as exc:  # a component failed: this request fails alone
                    failed[id(r)] = r, exc
        count, emit, stop = kept(chosen, drafts, running, eos=self.eos, left=self._limit - self._age,
                                 owner=self._owner, requests=len(self._active))
        for r in self._active:
            if r.slow and not r.zombie and id(r) not in failed:
                try:
                    criteria(r, chosen, emit, stop, self.pad_id)
                except BaseException as exc:
                    failed[id(r)] = r, exc
        new = torch.arange(width)[None, :] < emit[:, None]  # [B, width]: the positions each row keeps
        log_probs = logits.log_softmax(-1)
        logprobs = log_probs.gather(2, chosen.clamp(min=0)[..., None])[..., 0]
        if not bool(torch.isfinite(logprobs[new]).all()):  # one check for every request's rows
            non_finite(self._active, logprobs, new, failed)
        self._age += emit
        kept_columns = int(emit.max()) if width > 1 else 1  # later columns: rejected drafts in every row
        if kept_columns < width:
            for layer in self._own:
                layer.truncate(layer.keys.shape[2] - (width - kept_columns))
        for r in self._active:
            r.cols += kept_columns
        self._valid = torch.cat([self._valid, new[:, :kept_columns]], 1)
        self._tokens = torch.cat([self._tokens, torch.where(new, chosen, self.pad_id)[:, :kept_columns]], 1)
        self._logprobs = torch.cat([self._logprobs, logprobs[:, :kept_columns]], 1)
        self._last = torch.where(emit > 0, chosen.gather(1, (emit - 1).clamp(min=0)[:, None])[:, 0], self.pad_id)
        self._pos += emit
        for r in self._active:
            if r.on_token is not None and not r.zombie and id(r) not in failed:
                try:
                    for token in chosen[r.first, :int(emit[r.first])].tolist():
                        if token not in self._eos_ids:
                            r.on_token(token)
                except BaseException as exc:  # e.g. its client went away: stop its work
                    failed[id(r)] = r, exc
        self._done |= stop
        for r in self._active:
            if r.progress is not None and not r.zombie and id(r) not in failed:
                report(r, chosen, logprobs, log_probs, emit, self._done, self._eos_ids)
        if self.speculation is not None:
            self._k = self.speculation.stepped(self, inputs[:, :kept_columns], positions[:, :kept_columns], chosen, emit,
                                               running, drafted, count, spec)
        for r, exc in failed.values():
            r.future.set_exception(exc)
            self._retire(r)
        counts = torch.zeros(len(self._active), dtype=torch.long).index_add_(0, self._owner, self._done.long())
        for index in (counts == self._sizes).nonzero()[:, 0].tolist():
            r = self._active[index]
            if not r.zombie:
                self._finish(r)
        dead = int(self._done.sum())
        if dead == self._last.shape[0]:
            self._reset()
        elif dead >= max(4, self._last.shape[0] // 4):
            self._compact()

    def _finish(self, r: Request) -> None:
        """A request whose rows are all done: its tokens, remembered KV, and its future."""
        rows = slice(r.first, r.first + r.width)
        start = self._tokens.shape[1] - r.cols
        out: list = [None] * r.n
        for row, kept in zip(r.live, generated(self._valid, self._tokens, self._logprobs, rows, start)):
            out[row] = kept
        for row, (kept, kept_logprobs, _) in r.left.items():
            out[row] = kept, kept_logprobs
        if self.prefixes.remembers:
            try:
                own = row_kv(self._own, self._valid, rows, start, gather=self.speculation is not None)
                self.prefixes.remember(r.tokens, r.prefix, request_kv(r, own), out)
            except Exception:  # remembering is an optimisation; never lose a result over it
                pass
        r.future.set_result((out, r.computed, r.reused, r.passes))
        self._retire(r)

    def _retire(self, r: Request) -> None:
        """Its rows stay in the batch, finished, until the next compaction (cheaper than
        reshaping every tensor whenever one request ends)."""
        r.zombie = True
        self._done[r.first:r.first + r.width] = True
        self._limit[r.first:r.first + r.width] = 0

    def _compact(self) -> None:
        """Drop finished rows (those of requests that ended, and those of running requests that
        are done or cancelled, keeping what they generated), and own columns no row needs."""
        width = self._tokens.shape[1]
        keep: list[int] = []
        kept = []
        for r in self._active:
            if r.zombie:
                continue
            live = []
            for i, row in enumerate(r.live):
                at = r.first + i
                if bool(self._done[at]):
                    self._leave(r, row, at, width)
                else:
                    keep.append(at)
                    live.append(row)
            r.live = live
            kept.append(r)
        if not kept:
            self._reset()
            return
        index = torch.tensor(keep, dtype=torch.long)
        valid = self._valid[index]
        used = valid.any(0)
        first = int(used.nonzero()[0, 0]) if bool(used.any()) else valid.shape[1]
        first = self._own[0].droppable(first)
        for layer in self._own:
            layer.select(index, first)
        self._valid = valid[:, first:]
        self._tokens = self._tokens[index][:, first:]
        self._logprobs = self._logprobs[index][:, first:]
        for name in ("_last", "_pos", "_limit", "_age", "_k", "_done"):
            setattr(self, name, getattr(self, name)[index])
        if self.speculation is not None:
            self.speculation.drafter.kept(index, first)
        self._active = kept
        self._renumber()

    def _leave(self, r: Request, row: int, at: int, width: int) -> None:
        """Keep what a finished row of a running request generated (and its KV, when the host
        remembers finished rows) before the row leaves the batch."""
        start = width - r.cols
        (tokens, logprobs), = generated(self._valid, self._tokens, self._logprobs, slice(at, at + 1), start)
        kv = None
        if self.prefixes.remembers:
            kv = [tuple(t.clone() for t in layer)
                  for layer in row_kv(self._own, self._valid, slice(at, at + 1), start, gather=self.speculation is not None)]
        r.left[row] = tokens, logprobs, kv

    def kv_bytes(self) -> int:
        """Bytes of KV the loop holds now: its requests' prefixes and the rows' own positions
        (each storage once; the layout's stacked copy of unquantized prefixes is not counted)."""
        tensors = [t for layer in self._own for t in layer.tensors()]
        tensors += [t for r in self._active if r.prefix is not None for t in r.prefix.tensors()]
        return held_bytes(tensors)

    def _reset(self) -> None:
        self._active = []
        self._own = []
        self._valid = torch.zeros(0, 0, dtype=torch.bool)  # [B, S] own columns each row may attend to
        self._tokens = torch.zeros(0, 0, dtype=torch.long)  # [B, S] the token each step chose
        self._logprobs = torch.zeros(0, 0)  # [B, S] its log-probability under the model
        self._last = torch.zeros(0, dtype=torch.long)  # [B] the next input of each row
        self._pos = torch.zeros(0, dtype=torch.long)  # [B] its position
        self._limit = torch.zeros(0, dtype=torch.long)  # [B] max_new_tokens
        self._age = torch.zeros(0, dtype=torch.long)  # [B] tokens the row generated
        self._k = torch.zeros(0, dtype=torch.long)  # [B] its next draft's length (speculation)
        self._done = torch.zeros(0, dtype=torch.bool)  # [B]
        if self.speculation is not None:
            self.speculation.drafter.reset()
        self._renumber()
