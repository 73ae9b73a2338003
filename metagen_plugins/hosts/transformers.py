"""The in-process host: metagen components as ordinary ``model.generate()`` arguments, and a
Generator that shares one prefill among the N samples of a prompt."""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

import torch
from transformers import LogitsProcessorList, StoppingCriteriaList

from metagen_hooks import Budget, Candidate

from ..components import built, sampling
from ..config import Config
from ..errors import ConfigError, HostError
from ..models import load_model, load_model_cached, load_tokenizer, resolve  # noqa: F401 (re-exported)
from ..text_stop import stop_strings
from .prefix_cache import PrefixCache, extend_cache, sliceable
from .shared_prefix import decoding, shared_cache, supported
from ..registry import Registry

# With sampling on, these neutralise generate()'s own warpers (and top_k's default of 50), so
# only the configured processors apply, in the configured order.
_NEUTRAL_WARPERS = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "typical_p": 1.0, "min_p": None}


def generate_kwargs(config: Config, registry: Registry, model=None, tokenizer=None) -> dict[str, Any]:
    """The keyword arguments ``model.generate()`` takes for this configuration."""
    objects = built(config, registry, {"model": model, "tokenizer": tokenizer})
    processors, criteria = objects["processors"], objects["stopping"]
    kwargs: dict[str, Any] = {}
    if processors:
        kwargs["logits_processor"] = LogitsProcessorList(processors)
    if criteria:
        kwargs["stopping_criteria"] = StoppingCriteriaList(criteria)
    do_sample = sampling(config, registry)
    kwargs["do_sample"] = do_sample
    if do_sample:
        kwargs.update(_NEUTRAL_WARPERS)
    if "max_new_tokens" in config.generation:
        kwargs["max_new_tokens"] = config.generation["max_new_tokens"]
    if config.generation.get("token_healing"):
        # transformers' own token healing (Lundberg, 2023): back up the prompt's last token and
        # let the model regenerate it as any token that extends it.
        if tokenizer is None:
            raise ConfigError("[generation] token_healing needs the tokenizer: pass tokenizer= to generate_kwargs")
        kwargs.update(token_healing=True, tokenizer=tokenizer)
    settings = config.host
    if "draft_model" in settings:
        kwargs["assistant_model"] = load_model_cached(settings["draft_model"], what="[host] draft_model")
    if "prompt_lookup_num_tokens" in settings:
        kwargs["prompt_lookup_num_tokens"] = settings["prompt_lookup_num_tokens"]
    if "kv_cache" in settings:
        kwargs.update(cache_kwargs(settings["kv_cache"]))
    return kwargs


def cache_kwargs(kv_cache: str | dict) -> dict[str, Any]:
    """``cache_implementation`` (and ``cache_config``) for ``[host] kv_cache``.

    ``"quantized"`` picks a backend that runs on this machine: quanto int4 when optimum-quanto is
    installed, else fp8 (needs nothing). A table passes its keys through:
    ``{implementation = "quantized", backend = "quanto", nbits = 2}``.
    """
    if isinstance(kv_cache, str):
        if kv_cache != "quantized":
            return {"cache_implementation": kv_cache}
        try:
            import optimum.quanto  # noqa: F401

            return {"cache_implementation": "quantized", "cache_config": {"backend": "quanto", "nbits": 4}}
        except ImportError:
            return {"cache_implementation": "quantized", "cache_config": {"backend": "fp8"}}
    table = dict(kv_cache)
    implementation = table.pop("implementation", "quantized")
    return {"cache_implementation": implementation, **({"cache_config": table} if table else {})}


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
            tokenizer = load_tokenizer(resolve(source, what="[host] tokenizer"),
                                       settings.get("gguf_file") if source == settings.get("model") else None)
        self.model = model
        self.tokenizer = tokenizer
        self.shared_prefix = settings.get("shared_prefix_attention", True) and supported(model)
        chat = settings.get("chat_template", "auto")
        self.chat = bool(getattr(tokenizer, "chat_template", None)) if chat == "auto" else chat
        self.params = sum(p.numel() for p in model.parameters())

    def context(self) -> dict[str, Any]:
        """What components may ask the host for (their ``model`` / ``tokenizer`` parameters)."""
        return {"model": self.model, "tokenizer": self.tokenizer}

    def format(self, prompt: str) -> str:
        """The text the model sees: the prompt as a user turn of the chat template, when on."""
        if not self.chat:
            return prompt
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)

    def generator(self, budget: Budget, config: Config | None = None) -> "TransformersGenerator":
        """A Generator charging ``budget``, with ``config``'s components (the host's own when
        ``None``); seeds torch first when ``[generation] seed`` is set, so each prompt's run is
        reproducible on its own."""
        config = config or self.config
        seed = config.generation.get("seed")
        if seed is not None:
            torch.manual_seed(seed)
        return TransformersGenerator(self, budget, config)


class TransformersGenerator:
    """Samples with the configured components. The N samples of a prompt share one prefill, and
    every prefix it has computed (prompts, and each sample's prompt + continuation) stays in a
    prefix cache for this run, so ``extend`` pays only for tokens it has not seen."""

    def __init__(self, host: TransformersHost, budget: Budget, config: Config | None = None) -> None:
        self.host = host
        self.config = config or host.config
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
        self.prefix_cache = PrefixCache(self.config.host.get("prefix_cache_bytes", 512 * 2**20),
                                        self.model.config)
        self._prompt_tokens: dict[str, list[int]] = {}

    def sample(self, prompts: Sequence[str], n: int = 1, *, max_new_tokens: int | None = None,
               stop: Sequence[str] | None = None) -> list[list[Candidate]]:
        return [self._generate(prompt, [], n, max_new_tokens, stop) for prompt in prompts]

    def extend(self, prefixes: Sequence[Candidate], n: int = 1, *, max_new_tokens: int | None = None,
               stop: Sequence[str] | None = None) -> list[list[Candidate]]:
        return [self._generate(p.prompt, self._continuation(p), n, max_new_tokens, stop, p) for p in prefixes]

    def _continuation(self, prefix: Candidate) -> list[int]:
        """A prefix's token ids; one given as text only is tokenized (and keeps no log-probs)."""
        if prefix.token_ids or not prefix.text:
            return list(prefix.token_ids)
        return self.tokenizer(prefix.text, add_special_tokens=False).input_ids

    def prompt_tokens(self, prompt: str) -> list[int]:
        """The token ids the model sees for ``prompt`` (chat template applied when on)."""
        if prompt not in self._prompt_tokens:
            ids = self.tokenizer(self.host.format(prompt), add_special_tokens=not self.host.chat).input_ids
            if not ids:
                raise ValueError("the prompt is empty after tokenization; give at least one token")
            if self.config.generation.get("token_healing") and len(ids) > 1:
                with torch.no_grad():
                    ids = self.model.heal_tokens(torch.tensor([ids]), self.tokenizer)[0].tolist()
                self.budget.charge(prompt_tokens_computed=len(ids) - 1, forward_passes=1, params=self.host.params)
            self._prompt_tokens[prompt] = list(ids)
        return self._prompt_tokens[prompt]

    def _generate(self, prompt: str, continuation: list[int], n: int, max_new_tokens, stop,
                  parent: Candidate | None = None) -> list[Candidate]:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        tokens = self.prompt_tokens(prompt) + continuation
        kwargs = generate_kwargs(self.config, self.host.registry, model=self.model, tokenizer=self.tokenizer)
        if max_new_tokens is not None:
            kwargs["max_new_tokens"] = max_new_tokens
        kwargs.setdefault("max_new_tokens", 64)
        kwargs["max_new_tokens"] = self._fit_context(tokens, continuation, kwargs["max_new_tokens"])
        if kwargs.get("logits_processor"):
            kwargs["logits_processor"] = _checked(kwargs["logits_processor"], self.config, self.host.registry)
        n, kwargs["max_new_tokens"] = self.budget.allow(n, kwargs["max_new_tokens"], len(tokens),
                                                        self.host.params)
        kwargs.pop("token_healing", None)  # prompt_tokens() has healed the prompt already
        for component in [*kwargs.get("logits_processor", []), *kwargs.get("stopping_criteria", [])]:
            if hasattr(component, "begin"):  # it tracks the continuation since the prompt
                component.begin(len(tokens) - len(continuation))
        if stop:
            criteria = StoppingCriteriaList(kwargs.get("stopping_criteria", []))
            criteria.append(stop_strings(list(stop), tokenizer=self.tokenizer))
            kwargs["stopping_criteria"] = criteria
        passes = [0]
        hook = self.model.register_forward_pre_hook(lambda *_: passes.__setitem__(0, passes[0] + 1))
        try:
            with torch.no_grad():
                if "assistant_model" in kwargs or "prompt_lookup_num_tokens" in kwargs:
                    rows, computed, reused = self._assisted(tokens, n, kwargs)
                elif "cache_implementation" in kwargs:
                    rows, computed, reused = self._plain(tokens, n, kwargs)
                else:
                    rows, computed, reused = self._shared(tokens, n, kwargs)
        finally:
            hook.remove()
        candidates, generated = [], 0
        for new, logprobs in rows:
            cut = self._eos_at(new)
            kept = new[:cut]
            generated += cut + (cut < len(new))  # the EOS itself was generated too
            finish = "stop" if cut < len(new) or len(new) < kwargs["max_new_tokens"] else "length"
            ids = continuation + kept
            candidates.append(Candidate(
                prompt=prompt,
                text=self.tokenizer.decode(ids, skip_special_tokens=True),
                token_ids=ids,
                logprobs=(list(parent.logprobs) if parent and parent.token_ids else
                          [0.0] * len(continuation)) + logprobs[: len(kept)],
                finish_reason=finish,
            ))
        self.budget.charge(prompt_tokens_computed=computed, prompt_tokens_reused=reused,
                           tokens_generated=generated, forward_passes=passes[0], samples=n,
                           params=self.host.params)
        return candidates

    def _fit_context(self, tokens: list[int], continuation: list[int], max_new_tokens: int) -> int:
        """``max_new_tokens`` cut to what the model's context leaves; a clear error, before any
        generation, when the prompt alone fills it."""
        limit = context_length(self.model)
        if limit is None:
            return max_new_tokens
        if len(tokens) >= limit:
            what = "prompt" + (f" with its {len(continuation)}-token continuation" if continuation else "")
            raise HostError(f"the {what} is {len(tokens)} tokens; the model's context is {limit} tokens "
                            f"(max_position_embeddings in its config), so nothing can be generated. "
                            f"Shorten the prompt (or use a model with a longer context)")
        return min(max_new_tokens, limit - len(tokens))

    def _eos_at(self, tokens: list[int]) -> int:
        """Index of the first EOS in ``tokens`` (its length when there is none)."""
        return next((i for i, t in enumerate(tokens) if t in self.eos_ids), len(tokens))

    def _shared(self, tokens: list[int], n: int, kwargs) -> tuple[list, int, int]:
        """Prefill (or fetch) the prefix once and decode n rows on it: through shared-prefix
        attention where the model supports it, else on the prefix KV expanded to n rows."""
        length = len(tokens)
        ids = torch.tensor([tokens])
        hit, cache, context = 0, None, contextlib.nullcontext()
        if length > 1:
            # generate() must see at least one uncached token: cache all but the last.
            hit, cache = self.prefix_cache.longest(tuple(tokens[:-1]))
            cache = extend_cache(self.model, cache, ids[:, hit:length - 1])
            if self.host.shared_prefix:
                cache = shared_cache(cache, self.model.config)
                context = decoding(self.model, cache)
            elif n > 1:
                cache.batch_repeat_interleave(n)
            kwargs["past_key_values"] = cache
        rows = ids.repeat(n, 1)
        with context:
            out = self.model.generate(rows, attention_mask=torch.ones_like(rows), pad_token_id=self.pad_id,
                                      return_dict_in_generate=True, output_logits=True, **kwargs)
        new = out.sequences[:, length:]
        results = _rows(new, out.logits)
        final = out.past_key_values
        if final is not None and sliceable(final):
            cached = final.get_seq_length()
            self.prefix_cache.put(tuple(tokens[:-1]), final, 0)
            for row, (row_new, _) in enumerate(results):
                self.prefix_cache.put(tuple(tokens + row_new[:self._eos_at(row_new)])[:cached], final, row)
        computed = (length - 1 - hit) + n  # the last prompt token runs once per row
        reused = hit + (length - 1) * (n - 1)
        return results, computed, reused

    def _plain(self, tokens: list[int], n: int, kwargs) -> tuple[list, int, int]:
        """A cache of generate()'s own making (e.g. quantized): plain num_return_sequences,
        each row prefilling the prompt itself."""
        ids = torch.tensor([tokens])
        out = self.model.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=self.pad_id,
                                  num_return_sequences=n, return_dict_in_generate=True,
                                  output_logits=True, **kwargs)
        return _rows(out.sequences[:, len(tokens):], out.logits), len(tokens) * n, 0

    def _assisted(self, tokens: list[int], n: int, kwargs) -> tuple[list, int, int]:
        """Speculative decoding (draft model or prompt lookup): transformers runs it for one
        row at a time, so each sample is its own call, without prefix sharing."""
        ids = torch.tensor([tokens])
        results = []
        for _ in range(n):
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=self.pad_id,
                                      return_dict_in_generate=True, output_logits=True, **kwargs)
            results.extend(_rows(out.sequences[:, len(tokens):], out.logits))
        return results, len(tokens) * n, 0


def context_length(model) -> int | None:
    """The longest sequence the model was built for (its config's position limit), if known."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class _FiniteCheck:
    """Runs after a logits processor (or on the model's raw logits): stops generation with an
    error naming the component when scores hold NaN or +inf, or a row is all -inf, instead of
    sampling from them. Two cheap reductions per step."""

    def __init__(self, what: str, info=None) -> None:
        self.what, self.info, self.step = what, info, 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.step += 1
        problem = None
        if torch.isnan(scores).any():
            problem = "NaN"
        elif torch.isposinf(scores).any():
            problem = "+inf"
        elif torch.isneginf(scores).all(dim=-1).any():
            problem = "only -inf (every token banned) in a row"
        if problem is not None:
            row = _first_bad_row(scores)
            error = HostError(f"{self.what} produced {problem} scores at generation step {self.step} "
                              f"(row {row}); metagen does not sample from them. Fix the component, or "
                              f"remove it from the configuration")
            error.component = self.info
            raise error
        return scores


def _first_bad_row(scores: torch.Tensor) -> int:
    bad = torch.isnan(scores).any(-1) | torch.isposinf(scores).any(-1) | torch.isneginf(scores).all(-1)
    return int(bad.nonzero()[0, 0]) if bad.any() else -1


def _checked(processors, config: Config, registry: Registry) -> LogitsProcessorList:
    """The configured processors, each followed by a finiteness check naming it (and the
    model's raw logits checked first)."""
    checked = LogitsProcessorList([_FiniteCheck("the model's logits (before any processor)")])
    for index, (processor, entry) in enumerate(zip(processors, config.processors)):
        info = registry.get("logits_processors", entry["name"])
        checked.extend([processor, _FiniteCheck(f"processors[{index}]: {info.label()}", info)])
    return checked


def _rows(new: torch.Tensor, logits) -> list[tuple[list[int], list[float]]]:
    """Each row's new tokens (up to its first EOS, padding dropped later) and their log-probs
    under the model (raw logits, before any processor)."""
    if new.shape[1] == 0:
        return [([], []) for _ in range(new.shape[0])]
    logprobs = torch.stack(logits, dim=1).float().log_softmax(-1).gather(2, new.unsqueeze(-1)).squeeze(-1)
    return [(new[r].tolist(), logprobs[r].tolist()) for r in range(new.shape[0])]
