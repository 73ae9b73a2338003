"""A draft model inside the batched engine: a smaller model of the same vocabulary that decodes
every row in flight alongside the target, greedily, to propose its next tokens.

The draft keeps its own KV in the engine's layout: each request's prefix once (its own prefix
store), and per row the positions it fed, on the engine's own columns. A column the target
rejected (a draft it did not keep) is invalid for both models alike, so the engine's one mask of
kept columns is the draft's too. The draft lags the target by the columns it has not fed yet
(the last draft of a speculative step, every column of a plain step), and feeds them first, in
the same forward pass as its next input: the attention kernel takes several new positions per
row, causal among themselves, and invalid ones attend to nothing but themselves.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from ...errors import ConfigError
from .attention import Layout, OwnLayer, _Group, attach, detach, kv_shape, laid_out
from .prefixes import Prefixes


class DraftModel:
    """Drafts with ``model`` (greedy), whose vocabulary must be the target's."""

    name = "draft model"
    CONFIDENCE = 0.4  # a draft token under this probability (under the draft) ends its row's draft
    confident = True  # its drafts end by confidence: rows start with the longest (speculation.Speculation)

    def __init__(self, model, target, cache_bytes: int, *, eos_ids: set[int], pad_id: int) -> None:
        if model.config.vocab_size != target.config.vocab_size:
            raise ConfigError(f"[host] draft_model has a vocabulary of {model.config.vocab_size} tokens and the model "
                              f"{target.config.vocab_size}: the batched engine verifies a draft token by its id, so "
                              f"the draft must share the model's tokenizer (e.g. a smaller model of the same family)")
        self.model = model
        self.prefixes = Prefixes(model, cache_bytes, eos_ids=eos_ids, pad_id=pad_id)
        self.num_layers = model.config.num_hidden_layers
        self.pad_id = pad_id
        self._attached = False  # the model's attention goes through the shared-prefix kernel once it drafts
        self.reset()

    def close(self) -> None:
        if self._attached:
            detach(self.model)
            self._attached = False

    def reset(self) -> None:
        self.own: list[OwnLayer] = []
        self.inputs = torch.zeros(0, 0, dtype=torch.long)  # [B, S] the token the engine fed at each column
        self.positions = torch.zeros(0, 0, dtype=torch.long)  # [B, S] at which position
        self._layout_for = None

    def join(self, request) -> None:
        """Nothing yet: a request's prefix enters the draft's KV when a step first drafts for it
        (many requests' together), so requests that only ever decode plainly cost the draft nothing."""
        request.draft_prefix = None

    def rows_added(self, engine, rows: int) -> None:
        if not self.own:
            heads, dim = kv_shape(self.model.config)
            empty = next(self.model.parameters()).new_zeros(0, heads, 0, dim)
            self.own = [OwnLayer(empty, empty) for _ in range(self.num_layers)]
        for layer in self.own:
            layer.add_rows(rows)
        self.inputs = torch.cat([self.inputs, self.inputs.new_zeros(rows, self.inputs.shape[1])], 0)
        self.positions = torch.cat([self.positions, self.positions.new_zeros(rows, self.positions.shape[1])], 0)

    def kept(self, index: torch.Tensor, first: int) -> None:
        """The engine kept rows ``index`` and dropped its first ``first`` columns."""
        for layer in self.own:
            layer.select(index, first)
        self.inputs, self.positions = self.inputs[index][:, first:], self.positions[index][:, first:]

    def fed(self, engine, inputs: torch.Tensor, positions: torch.Tensor, emitted) -> None:
        """The engine's step fed ``inputs`` at ``positions`` [B, width] (the new columns it kept:
        drafts every row rejected leave both models' KV at once)."""
        self.inputs = torch.cat([self.inputs, inputs], 1)
        self.positions = torch.cat([self.positions, positions], 1)
        columns = self.inputs.shape[1]
        for layer in self.own:
            layer.truncate(columns)

    def propose(self, engine, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to ``max(k)`` greedy drafts per row: the columns not fed yet and each row's last
        token in one pass, then one pass per further draft. A row's draft ends after a token the
        draft gives less than ``CONFIDENCE`` (transformers' assisted generation does the same),
        and drafting ends when every row's has."""
        width = int(k.max()) if k.numel() else 0
        if width == 0:
            return torch.zeros(k.shape[0], 0, dtype=torch.long), torch.zeros_like(k)
        missing = [r for r in engine._active if r.draft_prefix is None]
        if missing:  # their prefixes, computed together (or taken from the draft's prefix cache)
            for r, (prefix, _) in zip(missing, self.prefixes.prefill([r.tokens[:-1] for r in missing])):
                r.draft_prefix = prefix
            self._layout_for = None
        if self._layout_for is not engine._layout:
            self._layout = Layout([_Group(r.width, r.draft_prefix) for r in engine._active],
                                  engine._valid, self.num_layers)
            self._layout_for = engine._layout
        if not self._attached:
            attach(self.model)
            self._attached = True
        fed = self.own[0].keys.shape[2]
        inputs = torch.cat([self.inputs[:, fed:], engine._last[:, None]], 1)
        positions = torch.cat([self.positions[:, fed:], engine._pos[:, None]], 1)
        valid = engine._valid  # the lagging columns' own validity; the last input's column is valid
        drafts, drafted = [], torch.zeros_like(k)
        going = (k > 0) & ~engine._done
        for step in range(width):
            self._layout.valid = valid
            cache = DynamicCache(config=self.model.config)
            cache.layers = self.own
            mask = torch.ones(inputs.shape[0], 1, 1, 1, dtype=torch.bool)
            with laid_out(self._layout):
                logits = self.model(input_ids=inputs, position_ids=positions, attention_mask=mask, cache=cache,
                                    use_cache=True).logits[:, -1, :]
            confidence, token = logits.float().softmax(-1).max(-1)
            drafts.append(token)
            drafted += going
            going &= (confidence >= self.CONFIDENCE) & (k > step + 1)
            if not bool(going.any()):
                break
            valid = torch.cat([valid, valid.new_ones(valid.shape[0], 1)], 1)  # this pass's input column
            inputs, positions = token[:, None], positions[:, -1:] + 1
        return torch.stack(drafts, 1), drafted

