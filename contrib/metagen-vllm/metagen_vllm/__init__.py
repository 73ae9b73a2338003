"""metagen components inside a vLLM server.

vLLM loads :class:`MetagenLogitsProcessor` from the entry-point group ``vllm.logits_processors``
when the server starts (no flag needed). A request selects metagen logits processors and
stopping criteria through ``vllm_xargs``; the processor builds them with metagen's registry, once
per request (each of a request's ``n`` samples gets its own, so stateful ones such as Mirostat
keep per-sample state), and runs them on that request's row of the logits at every step:

    vllm_xargs = {"metagen": '[{"section": "processors", "name": "mirostat", "target": 3.0}]'}

The value is a JSON *string*: vLLM's OpenAI server accepts only strings, numbers and flat lists
as ``vllm_xargs`` values, and narrows JSON booleans to 0/1. ``metagen_plugins.engines.vllm``
writes it for you from a metagen configuration.

Components take the transformers interface, ``(input_ids, scores) -> scores``; each request row is
presented as a batch of one (prompt + generated tokens, the row's logits). A stopping criterion
ends its row by leaving only the end-of-sequence token allowed at the next step (the client drops
that EOS, as the transformers host does).
"""

from __future__ import annotations

import json
import logging
from functools import cached_property
from typing import Any

import torch
from metagen_hooks.engines import SECTIONS, XARG  # the contract both ends of vllm_xargs share
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

__all__ = ["XARG", "MetagenLogitsProcessor", "parse", "configuration"]
__version__ = "0.1.0"

logger = logging.getLogger("metagen_vllm")


def parse(extra_args: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    """The components a request names (``None`` when it names none); ``ValueError`` on a
    malformed value, which vLLM returns to the client as HTTP 400."""
    if not extra_args or XARG not in extra_args:
        return None
    raw = extra_args[XARG]
    try:
        entries = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as exc:
        raise ValueError(f"metagen: vllm_xargs[{XARG!r}] is not valid JSON: {exc}") from None
    shape = ('a JSON list of {"section": "processors" | "stopping", "name": ..., parameters...}')
    if not isinstance(entries, list):
        raise ValueError(f"metagen: vllm_xargs[{XARG!r}] must be {shape}, got {type(entries).__name__}")
    for i, entry in enumerate(entries):
        if not (isinstance(entry, dict) and entry.get("section") in SECTIONS and isinstance(entry.get("name"), str)):
            raise ValueError(f"metagen: vllm_xargs[{XARG!r}][{i}] = {entry!r} is not {shape}")
    return entries or None


def configuration(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The metagen configuration (transformers-style components) the entries describe."""
    config: dict[str, Any] = {section: [] for section in SECTIONS}
    for entry in entries:
        config[entry["section"]].append({k: v for k, v in entry.items() if k != "section"})
    return config


def _validated(entries: list[dict[str, Any]]):
    """Check names and parameters with metagen's own validation (which also builds every
    component that needs nothing from the host, so bad values fail here, not in the engine)."""
    import metagen_plugins

    registry = metagen_plugins.get_registry()
    config = metagen_plugins.validate(configuration(entries), registry)
    for section, kind in (("processors", "logits_processors"), ("stopping", "stopping_criteria")):
        for entry in getattr(config, section):
            info = registry.get(kind, entry["name"])
            lacking = [c for c in info.schema.context if c != "tokenizer"]
            if lacking:
                raise ValueError(f"metagen: {info.label()} needs the host's {', '.join(lacking)}, which a "
                                 f"vLLM server cannot lend to a logits processor; run it on the "
                                 f"transformers host")
    return config, registry


class _Row:
    """One request's components, called by vLLM as ``(prompt_ids, output_ids, logits)``."""

    def __init__(self, processors: list, criteria: list, eos_id: int) -> None:
        self.processors, self.criteria, self.eos_id = processors, criteria, eos_id
        self.previous = None  # processed scores of the step that chose the last output token
        self.stopped = False
        self.started = False

    def __call__(self, prompt_ids: list[int], output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        if not self.started:  # everything before the request's output is its prompt
            self.started = True
            for component in self.processors + self.criteria:
                if hasattr(component, "begin"):
                    component.begin(len(prompt_ids))
        ids = torch.tensor([list(prompt_ids) + list(output_ids)], dtype=torch.long, device=logits.device)
        if self.criteria and output_ids and self.previous is not None and not self.stopped:
            # transformers calls criteria after each new token with the scores it was drawn from
            self.stopped = any(bool(c(ids, self.previous).reshape(-1)[0]) for c in self.criteria)
        if self.stopped:
            return _only(logits, self.eos_id)
        scores = logits.unsqueeze(0)
        for processor in self.processors:
            scores = processor(ids, scores)
        if self.criteria:
            self.previous = scores
        return scores[0]


def _only(logits: torch.Tensor, token: int) -> torch.Tensor:
    forced = torch.full_like(logits, float("-inf"))
    forced[token] = 0.0
    return forced


class _Failed:
    """A request whose components could not be built in the engine: it ends at once (an
    exception here would take the whole engine down); the cause is in the server log."""

    def __init__(self, eos_id: int) -> None:
        self.eos_id = eos_id

    def __call__(self, prompt_ids, output_ids, logits):
        return _only(logits, self.eos_id)


class MetagenLogitsProcessor(AdapterLogitsProcessor):
    """vLLM's per-request adapter around metagen components (see the module docstring)."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        super().__init__(vllm_config, device, is_pin_memory)
        self.model_config = vllm_config.model_config

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        entries = parse(sampling_params.extra_args)
        if entries:
            _validated(entries)  # metagen's ConfigError is a ValueError: HTTP 400 with its message

    def is_argmax_invariant(self) -> bool:
        return False  # bans, biases and stops change the greedy choice

    @cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        config = self.model_config
        return AutoTokenizer.from_pretrained(config.tokenizer, revision=config.tokenizer_revision,
                                             trust_remote_code=config.trust_remote_code)

    @cached_property
    def eos_id(self) -> int:
        eos = getattr(self.model_config.hf_config, "eos_token_id", None)
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        return eos if eos is not None else self.tokenizer.eos_token_id

    def new_req_logits_processor(self, params):
        entries = parse(params.extra_args)
        if not entries:
            return None
        try:
            from metagen_plugins.components import built as build_all

            config, registry = _validated(entries)
            needs_tokenizer = any(registry.get(kind, e["name"]).schema.context for section, kind in
                                  (("processors", "logits_processors"), ("stopping", "stopping_criteria"))
                                  for e in getattr(config, section))
            built = build_all(config, registry, {"tokenizer": self.tokenizer} if needs_tokenizer else {})
        except Exception as exc:
            logger.error("metagen: could not build the request's components %s: %s", entries, exc)
            return _Failed(self.eos_id)
        return _Row(built["processors"], built["stopping"], self.eos_id)

