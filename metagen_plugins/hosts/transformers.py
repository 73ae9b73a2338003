"""The in-process host: metagen components as ordinary ``model.generate()`` arguments, and a
Generator that shares one prefill among the N samples of a prompt."""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessorList,
    StoppingCriteriaList,
)

from metagen_hooks import Budget, Candidate

from ..config import Config, build
from ..errors import HostError
from ..models import resolve
from ..registry import Registry

# With sampling on, these neutralise generate()'s own warpers (and top_k's default of 50), so
# only the configured processors apply, in the configured order.
_NEUTRAL_WARPERS = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "typical_p": 1.0, "min_p": None}


def load_model(path: str, *, gguf_file: str | None = None, dtype: str | None = None,
               what: str = "model"):
    """``from_pretrained`` from a local directory (or a built-in model name), with clear errors."""
    path = resolve(path)
    kwargs: dict[str, Any] = {}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if dtype:
        if not hasattr(torch, dtype):
            raise HostError(f"[host] dtype = {dtype!r} is not a torch dtype (e.g. 'float32', 'bfloat16')")
        kwargs["dtype"] = getattr(torch, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise HostError(f"could not load the {what} from {path!r}: {exc}") from None
    model.eval()
    return model


def load_tokenizer(path: str, gguf_file: str | None = None):
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        return AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise HostError(f"could not load a tokenizer from {path!r}: {exc}") from None


def generate_kwargs(config: Config, registry: Registry, model=None, tokenizer=None) -> dict[str, Any]:
    """The keyword arguments ``model.generate()`` takes for this configuration."""
    context = {"model": model, "tokenizer": tokenizer}
    kwargs: dict[str, Any] = {}
    processors = []
    sampling = False
    for i, entry in enumerate(config.processors):
        info = registry.get("logits_processors", entry["name"])
        params = {k: v for k, v in entry.items() if k != "name"}
        processors.append(build(info, params, context, prefix=f"processors[{i}]: "))
        sampling = sampling or info.sampling
    criteria = []
    for i, entry in enumerate(config.stopping):
        info = registry.get("stopping_criteria", entry["name"])
        params = {k: v for k, v in entry.items() if k != "name"}
        criteria.append(build(info, params, context, prefix=f"stopping[{i}]: "))
    if processors:
        kwargs["logits_processor"] = LogitsProcessorList(processors)
    if criteria:
        kwargs["stopping_criteria"] = StoppingCriteriaList(criteria)
    do_sample = config.generation.get("do_sample", sampling)
    kwargs["do_sample"] = do_sample
    if do_sample:
        kwargs.update(_NEUTRAL_WARPERS)
    if "max_new_tokens" in config.generation:
        kwargs["max_new_tokens"] = config.generation["max_new_tokens"]
    return kwargs


class TransformersHost:
    """Holds the model and tokenizer (given, or loaded from ``[host] model``) for a run."""

    name = "transformers"

    def __init__(self, config: Config, registry: Registry, model=None, tokenizer=None) -> None:
        self.config = config
        self.registry = registry
        settings = config.host
        if model is None:
            if "model" not in settings:
                raise HostError("no model: set [host] model = \"/path/to/local/model\" or pass model=")
            model = load_model(settings["model"], gguf_file=settings.get("gguf_file"),
                               dtype=settings.get("dtype"))
        if tokenizer is None:
            source = settings.get("tokenizer") or settings.get("model")
            if source is None:
                raise HostError("no tokenizer: set [host] tokenizer (or model), or pass tokenizer=")
            tokenizer = load_tokenizer(resolve(source),
                                       settings.get("gguf_file") if source == settings.get("model") else None)
        self.model = model
        self.tokenizer = tokenizer
        chat = settings.get("chat_template", "auto")
        self.chat = bool(getattr(tokenizer, "chat_template", None)) if chat == "auto" else chat
        self.params = sum(p.numel() for p in model.parameters())

    def format(self, prompt: str) -> str:
        """The text the model sees: the prompt as a user turn of the chat template, when on."""
        if not self.chat:
            return prompt
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)

    def generator(self, budget: Budget) -> "TransformersGenerator":
        """A Generator charging ``budget``; seeds torch first when ``[generation] seed`` is set,
        so each prompt's run is reproducible on its own."""
        seed = self.config.generation.get("seed")
        if seed is not None:
            torch.manual_seed(seed)
        return TransformersGenerator(self, budget)


class TransformersGenerator:
    """Samples with the configured components; N samples of a prompt share one prefill."""

    def __init__(self, host: TransformersHost, budget: Budget) -> None:
        self.host = host
        self.budget = budget
        self.model = host.model
        self.tokenizer = host.tokenizer
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else ([] if eos is None else [eos]))
        self.pad_id = next(iter(self.eos_ids), None)
        if self.pad_id is None:
            self.pad_id = self.tokenizer.pad_token_id or 0

    def sample(self, prompts: Sequence[str], n: int = 1, *, max_new_tokens: int | None = None,
               stop: Sequence[str] | None = None) -> list[list[Candidate]]:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        return [self._sample_one(prompt, self.host.format(prompt), n, max_new_tokens, stop)
                for prompt in prompts]

    def extend(self, prefixes: Sequence[Candidate], n: int = 1, *, max_new_tokens: int | None = None,
               stop: Sequence[str] | None = None) -> list[list[Candidate]]:
        out = []
        for prefix in prefixes:
            text = self.host.format(prefix.prompt) + prefix.text
            new = self._sample_one(prefix.prompt, text, n, max_new_tokens, stop)
            out.append([Candidate(prompt=prefix.prompt, text=prefix.text + c.text,
                                  token_ids=prefix.token_ids + c.token_ids,
                                  logprobs=prefix.logprobs + c.logprobs,
                                  finish_reason=c.finish_reason, meta=dict(c.meta)) for c in new])
        return out

    def _sample_one(self, prompt: str, text: str, n: int, max_new_tokens, stop) -> list[Candidate]:
        host = self.host
        ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=not host.chat).input_ids
        if ids.shape[1] == 0:
            raise ValueError("the prompt is empty after tokenization; give at least one token")
        kwargs = generate_kwargs(host.config, host.registry, model=self.model, tokenizer=self.tokenizer)
        if max_new_tokens is not None:
            kwargs["max_new_tokens"] = max_new_tokens
        kwargs.setdefault("max_new_tokens", 64)
        if stop:
            kwargs["stop_strings"] = list(stop)
            kwargs["tokenizer"] = self.tokenizer
        length = ids.shape[1]
        passes = 0
        with torch.no_grad():
            if length > 1:
                # Prefill all but the last prompt token once; generate() must see >= 1 uncached token.
                prefill = self.model(ids[:, :-1], use_cache=True)
                cache = prefill.past_key_values
                passes += 1
                if n > 1:
                    cache.batch_repeat_interleave(n)
                kwargs["past_key_values"] = cache
            rows = ids.repeat(n, 1)
            out = self.model.generate(
                rows, attention_mask=torch.ones_like(rows), pad_token_id=self.pad_id,
                return_dict_in_generate=True, output_logits=True, **kwargs,
            )
        new = out.sequences[:, length:]
        steps = new.shape[1]
        logprobs = torch.stack(out.logits, dim=1).float().log_softmax(-1) if steps else None
        candidates = []
        generated = 0
        for row in range(n):
            tokens = new[row].tolist()
            cut = next((i for i, t in enumerate(tokens) if t in self.eos_ids), None)
            kept = tokens if cut is None else tokens[:cut]
            generated += len(kept) + (cut is not None)
            finish = "stop" if cut is not None or steps < kwargs["max_new_tokens"] else "length"
            lp = [logprobs[row, i, t].item() for i, t in enumerate(kept)] if kept else []
            candidates.append(Candidate(
                prompt=prompt,
                text=self.tokenizer.decode(kept, skip_special_tokens=True),
                token_ids=kept,
                logprobs=lp,
                finish_reason=finish,
            ))
        self.budget.charge(
            prompt_tokens_computed=(length - 1) + n,
            prompt_tokens_reused=(length - 1) * (n - 1),
            tokens_generated=generated,
            forward_passes=passes + steps,
            samples=n,
            params=host.params,
        )
        return candidates
