"""The in-process host: metagen components as ordinary ``model.generate()`` arguments, and a
Generator that shares one prefill among the N samples of a prompt."""

from __future__ import annotations

import bisect
import contextlib
import threading
from typing import Any, Callable, Sequence

import torch
from transformers import DynamicCache, LogitsProcessorList, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from metagen_hooks import Budget, Candidate
from metagen_hooks.inflight import CANCELLED, Watch

from ..components import built, sampling
from ..config import Config
from ..errors import ConfigError, HostError
from ..models import load_model, load_model_cached, load_tokenizer, resolve  # noqa: F401 (re-exported)
from ..text_stop import stop_strings
from .batching import Engine, Request, Prefix, request_generator
from ..hostkit.chat import chat_enabled, chat_format
from .detokenize import TextDeltas
from .prefix_cache import PrefixCache, extend_cache, sliceable
from .watching import Watcher
from .shared_prefix import SharedPrefixLayer, decoding, shared_cache, supported
from ..registry import Registry

# Prefill batches stay under this many (padded) tokens.
_PREFILL_TOKENS = 8192

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
    """Holds the model and tokenizer (given, or loaded from ``[host] model``) for a run, the
    prefix cache every prompt shares, and the batched decode loop (``batching.Engine``) that
    decodes every sequence in flight, whichever prompt's strategy asked for it."""

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
        self.chat = chat_enabled(settings.get("chat_template", "auto"), tokenizer)
        self.params = sum(p.numel() for p in model.parameters())
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else ([] if eos is None else [eos]))
        self.pad_id = next(iter(self.eos_ids), None)
        if self.pad_id is None:
            self.pad_id = tokenizer.pad_token_id or 0
        self.prefix_cache = PrefixCache(settings.get("prefix_cache_bytes", 512 * 2**20), model.config)
        self.lock = threading.Lock()  # generate() calls (paths the engine does not take) one at a time
        self._engine: Engine | None = None
        self._stop_criteria: dict[tuple[str, ...], Any] = {}

    def context(self) -> dict[str, Any]:
        """What components may ask the host for (their ``model`` / ``tokenizer`` parameters)."""
        return {"model": self.model, "tokenizer": self.tokenizer}

    # What the runner may hand this host's generators besides a budget and a configuration.
    streams = True  # on_text: the text of plain decoding, live
    conversations = True  # conversation: earlier chat turns the prompt continues

    def format(self, prompt: str, conversation: Sequence[dict[str, str]] = ()) -> str:
        """The text the model sees: the prompt as a user turn of the chat template, when on,
        after the ``conversation``'s earlier turns (``{"role", "content"}`` dicts: a system
        message, earlier user and assistant turns)."""
        return chat_format(self.tokenizer, self.chat, prompt, conversation,
                           "a conversation of several messages is formatted with the model's chat template, "
                           "which is off here ([host] chat_template = false, or the tokenizer has none): send "
                           "one message, or turn the chat template on")

    def generator(self, budget: Budget, config: Config | None = None, *,
                  conversation: Sequence[dict[str, str]] = (),
                  on_text: Callable[[str], None] | None = None) -> "TransformersGenerator":
        """A Generator charging ``budget``, with ``config``'s components (the host's own when
        ``None``). With ``[generation] seed`` every row samples from its own stream derived from
        the seed, the prompt and the request, so a prompt's run is reproducible on its own.

        ``conversation``: earlier chat turns every prompt of this generator continues (see
        :meth:`format`). ``on_text``: called with each new piece of the text of the generator's
        first one-sample request as its tokens are decoded (the pieces add up to the candidate's
        text), for live streaming of plain decoding; raising from it stops that request."""
        return TransformersGenerator(self, budget, config or self.config, conversation=conversation,
                                     on_text=on_text)

    @property
    def engine(self) -> Engine:
        """The batched decode loop, started on first use."""
        with self.lock:
            if self._engine is None:
                self._engine = Engine(self.model, eos_ids=self.eos_ids, pad_id=self.pad_id,
                                      max_batch_tokens=self.config.host.get("max_batch_tokens", 65536),
                                      prefill=self._prefill, remember=self._remember)
            return self._engine

    def batched(self, kwargs: dict[str, Any]) -> bool:
        """Whether the batched loop can run a request with these generate() arguments (not for
        draft models, prompt lookup or caches of generate()'s own making, nor for model types
        without the shared-prefix attention path)."""
        return (self.shared_prefix and self.config.host.get("batching", True)
                and not _UNSHARED & set(kwargs))

    def _prefill(self, prefixes: list[list[int]]) -> list[tuple[Prefix, int]]:
        """Each prefix's KV as one row, with how many of its tokens the prefix cache held: taken
        from the cache as far as it holds it, computed past that; prefixes the cache knows nothing
        of are computed together, right-padded, in one forward pass (per chunk of tokens)."""
        out: list[tuple[Prefix, int] | None] = [None] * len(prefixes)
        fresh: dict[tuple[int, ...], list[int]] = {}
        for index, tokens in enumerate(prefixes):
            if not tokens:  # a one-token prompt: no prefix at all
                out[index] = self._empty_prefix(), 0
                continue
            hit, cache = self.prefix_cache.longest(tuple(tokens))
            if hit == 0:
                fresh.setdefault(tuple(tokens), []).append(index)
                continue
            if hit < len(tokens):
                cache = self.model(torch.tensor([tokens[hit:]]), cache=cache, use_cache=True).cache
                self.prefix_cache.put(tuple(tokens), cache, 0)
            out[index] = Prefix([layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]), hit
        pending = sorted(fresh, key=len)
        while pending:
            chunk = [pending.pop()]  # longest first; add prefixes while the padded batch stays small
            while pending and (len(chunk) + 1) * len(chunk[0]) <= _PREFILL_TOKENS:
                chunk.append(pending.pop())
            for tokens, prefix in zip(chunk, self._prefill_batch(chunk)):
                for index in fresh[tokens]:
                    out[index] = prefix, 0
        return out

    def _prefill_batch(self, chunk: list[tuple[int, ...]]) -> list[Prefix]:
        """One forward pass over prefixes right-padded to the longest (padding sits after every
        real token, so causal attention never sees it); the batch cache is kept once in the prefix
        cache, each prefix a row of it."""
        length = len(chunk[0])
        ids = torch.full((len(chunk), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, tokens in enumerate(chunk):
            ids[row, :len(tokens)] = torch.tensor(tokens)
            mask[row, :len(tokens)] = 1
        cache = self.model(ids, attention_mask=mask if len(chunk) > 1 else None, use_cache=True).cache
        prefixes = []
        for row, tokens in enumerate(chunk):
            self.prefix_cache.put(tokens, cache, row)
            prefixes.append(Prefix([layer.keys[row:row + 1, :, :len(tokens)] for layer in cache.layers],
                                    [layer.values[row:row + 1, :, :len(tokens)] for layer in cache.layers]))
        return prefixes

    def _empty_prefix(self) -> Prefix:
        config = self.model.config
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        empty = next(self.model.parameters()).new_zeros(1, heads, 0, dim)
        return Prefix([empty] * config.num_hidden_layers, [empty] * config.num_hidden_layers)

    def _remember(self, request: Request, own: list[tuple[torch.Tensor, torch.Tensor]], rows) -> None:
        """Keep each finished row (prefix + what it generated) in the prefix cache, so extending
        it later pays only for new tokens."""
        cache = DynamicCache(config=self.model.config)
        layers = []
        for (keys, values), prefix_keys, prefix_values in zip(own, request.prefix.keys, request.prefix.values):
            layer = SharedPrefixLayer(prefix_keys, prefix_values)
            layer.keys, layer.values = keys.clone(), values.clone()
            layer.is_initialized = True
            layers.append(layer)
        cache.layers = layers
        for row, (new, _) in enumerate(rows):
            kept = self.eos_at(new)
            length = len(request.tokens) - 1 + len(new)  # every generated token but the last was fed
            self.prefix_cache.put(tuple(request.tokens + new[:kept])[:length], cache, row)

    def eos_at(self, tokens: list[int]) -> int:
        """Index of the first EOS in ``tokens`` (its length when there is none)."""
        return next((i for i, t in enumerate(tokens) if t in self.eos_ids), len(tokens))

    def stop_criterion(self, stop: tuple[str, ...]):
        """transformers' StopStringCriteria indexes the vocabulary once per stop list (slow): one
        per distinct list, shared, as it keeps no state; text-matching criteria are per request."""
        criterion = self._stop_criteria.get(stop)
        if criterion is None:
            criterion = stop_strings(list(stop), tokenizer=self.tokenizer)
            if type(criterion).__name__ != "StopStringCriteria":
                return criterion
            self._stop_criteria[stop] = criterion
        return criterion

    def close(self) -> None:
        """Stop the decode loop (``run()`` and the Runner call this when done)."""
        if self._engine is not None:
            self._engine.close()
            self._engine = None


class TransformersGenerator:
    """Samples with the configured components. Every request goes to the host's batched decode
    loop, where it shares forward passes with every other prompt's requests; the N samples of a
    prefix share its prefill, and every prefix computed stays in the host's prefix cache, so
    ``extend`` pays only for tokens it has not seen."""

    def __init__(self, host: TransformersHost, budget: Budget, config: Config, *,
                 conversation: Sequence[dict[str, str]] = (),
                 on_text: Callable[[str], None] | None = None) -> None:
        self.host = host
        self.conversation = [dict(m) for m in conversation]
        self._on_text = on_text  # given to the first one-sample request, then dropped
        self.budget = budget
        self.config = config
        self.model = host.model
        self.tokenizer = host.tokenizer
        self.eos_ids = host.eos_ids
        self.pad_id = host.pad_id
        self.prefix_cache = host.prefix_cache
        self._prompt_tokens: dict[str, list[int]] = {}
        self._seen: list[tuple[int, ...]] = []  # token sequences this generator computed KV for, sorted
        self._calls = 0  # numbers this generator's requests, for their rows' random streams
        seed = config.generation.get("seed")
        # Unseeded runs draw their streams from torch's global generator (torch.manual_seed works).
        self._seed = seed if seed is not None else int(torch.randint(0, 2**62, (1,)))

    watches = True  # sample/extend take watch= (metagen_hooks.inflight)

    def sample(self, prompts: Sequence[str], n: int = 1, *, max_new_tokens: int | None = None,
               stop: Sequence[str] | None = None, watch: Watch | None = None) -> list[list[Candidate]]:
        return self._generate([(prompt, [], None) for prompt in prompts], n, max_new_tokens, stop, watch)

    def extend(self, prefixes: Sequence[Candidate], n: int = 1, *, max_new_tokens: int | None = None,
               stop: Sequence[str] | None = None, watch: Watch | None = None) -> list[list[Candidate]]:
        return self._generate([(p.prompt, self._continuation(p), p) for p in prefixes], n, max_new_tokens, stop,
                              watch)

    def _continuation(self, prefix: Candidate) -> list[int]:
        """A prefix's token ids; one given as text only is tokenized (and keeps no log-probs)."""
        if prefix.token_ids or not prefix.text:
            return list(prefix.token_ids)
        return self.tokenizer(prefix.text, add_special_tokens=False).input_ids

    def prompt_tokens(self, prompt: str) -> list[int]:
        """The token ids the model sees for ``prompt`` (chat template applied when on)."""
        if prompt not in self._prompt_tokens:
            ids = self.tokenizer(self.host.format(prompt, self.conversation),
                                 add_special_tokens=not self.host.chat).input_ids
            if not ids:
                raise ValueError("the prompt is empty after tokenization; give at least one token")
            if self.config.generation.get("token_healing") and len(ids) > 1:
                with self.host.lock, torch.no_grad():
                    ids = self.model.heal_tokens(torch.tensor([ids]), self.tokenizer)[0].tolist()
                self.budget.charge(prompt_tokens_computed=len(ids) - 1, forward_passes=1, params=self.host.params)
            self._prompt_tokens[prompt] = list(ids)
        return self._prompt_tokens[prompt]

    def _generate(self, jobs, n: int, max_new_tokens, stop, watch: Watch | None = None) -> list[list[Candidate]]:
        """``n`` continuations of each job ``(prompt, continuation, parent)``: all of them sent to
        the batched loop at once (so one call's prefixes share forward passes), then collected;
        with ``watch``, the strategy sees them decode and may cancel any (``Watcher``)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self._calls += 1
        prepared, pending, collected, requests = [], [], [], []
        watcher = Watcher(watch, lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True)) if watch else None
        try:
            for prompt, continuation, _ in jobs:
                prepared.append(self._prepare(prompt, continuation, n, max_new_tokens, stop))
                self._reserve(prepared[-1], 1)  # the next job's allowance sees this one's share
            stream = None
            if self._on_text is not None and len(prepared) == 1 and prepared[0][1] == 1:
                stream, self._on_text = TextDeltas(self.tokenizer, self._on_text), None  # only the first
            for index, (tokens, rows, kwargs) in enumerate(prepared):
                batched = self.host.batched(kwargs)
                progress = watcher.progress(jobs[index][0], jobs[index][1], rows, batched) if watcher else None
                if batched:
                    request = Request(tokens=tokens, n=rows, max_new_tokens=kwargs["max_new_tokens"],
                                      processors=list(kwargs.get("logits_processor", [])),
                                      criteria=list(kwargs.get("stopping_criteria", [])),
                                      generator=request_generator((self._seed, jobs[index][0], self._calls, index))
                                      if kwargs["do_sample"] else None,
                                      on_token=(lambda token: stream([token])) if stream else None,
                                      cancelled=lambda budget=self.budget: budget.cancelled, progress=progress)
                    pending.append(self.host.engine.submit(request))
                    requests.append(request)
                else:
                    if stream is not None:
                        kwargs["streamer"] = _Streamer(stream, self.eos_ids)  # ids -> TextDeltas
                    pending.append(None)
                    requests.append(None)
            if watcher is not None:
                watcher.follow([f for f in pending if f is not None])
            for (tokens, rows, kwargs), future in zip(prepared, pending):
                results, computed, reused, passes = (future.result() if future is not None
                                                     else self._unbatched(tokens, rows, kwargs))
                if stream is not None:
                    stream.finish()
                if self.prefix_cache.max_bytes > 0 and (future is not None or not _UNSHARED & set(kwargs)):
                    computed, reused, passes = self._as_alone(tokens, rows, results)  # a path with the cache
                collected.append((results, computed, reused, passes))
        except BaseException:
            if watcher is not None:  # the watch failed, or the run: stop what still decodes
                watcher.cancel_all("the call failed")
            raise
        finally:
            for job in prepared:
                self._reserve(job, -1)
        groups = [self._candidates(prompt, continuation, parent, *outcome, kwargs["max_new_tokens"],
                                   cut=request.cut if request is not None else ())
                  for (prompt, continuation, parent), (_, _, kwargs), outcome, request
                  in zip(jobs, prepared, collected, requests)]
        if watcher is not None:
            watcher.finish(groups)
        return groups

    def _as_alone(self, tokens: list[int], rows: int, results) -> tuple[int, int, int]:
        """Prompt tokens computed and reused, and forward passes, of one request as this prompt
        alone would spend them with the prefix cache keeping all it computed: reuse counts only
        what this generator itself computed before (its prompt, its own candidates), whether or
        not the cache, shared by every prompt, held more (another prompt's work) or less (evicted
        by another prompt's). So a prompt's budget, and every limit it enforces, does not depend
        on what ran beside it. The saving across prompts is real but not charged; an eviction's
        recomputation is real but not charged either (``[host] prefix_cache_bytes`` large enough
        for a prompt's own search avoids it; with 0, no cache, everything is computed and charged)."""
        prefix = len(tokens) - 1
        # in sorted order, the longest common prefix with ``tokens`` is a neighbour's
        at = bisect.bisect_left(self._seen, tuple(tokens))
        hit = min(prefix, max((_common(tokens, seen) for seen in self._seen[max(0, at - 1):at + 1]), default=0))
        for new, _ in results:
            bisect.insort(self._seen, tuple(tokens) + tuple(new[:-1]))  # what has KV: all but the last token
        steps = max((len(new) for new, _ in results), default=0)
        return (prefix - hit) + rows, hit + prefix * (rows - 1), int(prefix > hit) + steps

    def _reserve(self, job, sign: int) -> None:
        """Hold (``sign`` 1) or release (-1) a prepared job's worst-case spending in the budget,
        so the jobs of one call, prepared before any of them runs, never together exceed it; the
        real spending is charged when the job is done."""
        tokens, rows, kwargs = job
        new = rows * kwargs["max_new_tokens"]
        self.budget.tokens_generated += sign * new
        self.budget.samples += sign * rows
        self.budget.flops += sign * 2.0 * self.host.params * (len(tokens) + new)

    def _prepare(self, prompt: str, continuation: list[int], n: int, max_new_tokens, stop):
        """The tokens to continue, the rows the budget allows, and generate()'s arguments (this
        request's own processor and criterion objects)."""
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
        kwargs.pop("tokenizer", None)
        for component in [*kwargs.get("logits_processor", []), *kwargs.get("stopping_criteria", [])]:
            if hasattr(component, "begin"):  # it tracks the continuation since the prompt
                component.begin(len(tokens) - len(continuation))
        if stop:
            criteria = StoppingCriteriaList(kwargs.get("stopping_criteria", []))
            criteria.append(self.host.stop_criterion(tuple(stop)))
            kwargs["stopping_criteria"] = criteria
        return tokens, n, kwargs

    def _candidates(self, prompt, continuation, parent, results, computed, reused, passes,
                    max_new_tokens, cut=()) -> list[Candidate]:
        """Candidates from a request's rows (those in ``cut`` were cancelled by the strategy),
        and the budget charged what they computed."""
        candidates, generated = [], 0
        for row, (new, logprobs) in enumerate(results):
            end = self.host.eos_at(new)
            kept = new[:end]
            generated += end + (end < len(new))  # the EOS itself was generated too
            finish = "stop" if end < len(new) or len(new) < max_new_tokens else "length"
            finish = CANCELLED if row in cut else finish
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
                           tokens_generated=generated, forward_passes=passes, samples=len(results),
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


    # -- the paths the batched loop does not take: one generate() call at a time ---------------

    def _unbatched(self, tokens: list[int], n: int, kwargs) -> tuple[list, int, int, int]:
        kwargs = dict(kwargs)
        if kwargs["do_sample"]:  # generate() samples from torch's global generator: seed it
            torch.manual_seed(request_generator((self._seed, tokens, self._calls)).initial_seed())
        passes = [0]
        with self.host.lock, torch.no_grad():
            hook = self.model.register_forward_pre_hook(lambda *_: passes.__setitem__(0, passes[0] + 1))
            try:
                if "assistant_model" in kwargs or "prompt_lookup_num_tokens" in kwargs:
                    rows, computed, reused = self._assisted(tokens, n, kwargs)
                elif "cache_implementation" in kwargs:
                    rows, computed, reused = self._plain(tokens, n, kwargs)
                else:
                    rows, computed, reused = self._shared(tokens, n, kwargs)
            finally:
                hook.remove()
        return rows, computed, reused, passes[0]

    def _shared(self, tokens: list[int], n: int, kwargs) -> tuple[list, int, int]:
        """One generate() call: prefill (or fetch) the prefix once and decode n rows on it,
        through shared-prefix attention where the model supports it, else on the prefix KV
        expanded to n rows."""
        length = len(tokens)
        ids = torch.tensor([tokens])
        hit, context = 0, contextlib.nullcontext()
        if length > 1:
            # generate() must see at least one uncached token: cache all but the last.
            hit, cache = self.prefix_cache.longest(tuple(tokens[:-1]))
            cache = extend_cache(self.model, cache, ids[:, hit:length - 1])
            if self.host.shared_prefix:
                cache = shared_cache(cache, self.model.config)
                context = decoding(self.model, cache)
            elif n > 1:
                cache.batch_repeat_interleave(n)
            kwargs["cache"] = cache
        rows = ids.repeat(n, 1)
        with context:
            out = self.model.generate(rows, attention_mask=torch.ones_like(rows), pad_token_id=self.pad_id,
                                      return_dict_in_generate=True, output_logits=True, **kwargs)
        new = out.sequences[:, length:]
        results = _rows(new, out.logits)
        final = out.cache
        if final is not None and sliceable(final):
            cached = final.get_seq_length()
            self.prefix_cache.put(tuple(tokens[:-1]), final, 0)
            for row, (row_new, _) in enumerate(results):
                self.prefix_cache.put(tuple(tokens + row_new[:self.host.eos_at(row_new)])[:cached], final, row)
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


# generate() arguments of the paths without the prefix cache: each row prefills by itself
_UNSHARED = {"assistant_model", "prompt_lookup_num_tokens", "cache_implementation"}


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    """The length of the common prefix of two token sequences."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class _Streamer(BaseStreamer):
    """``generate()``'s streamer interface around an ``on_ids`` callback, for the paths the
    batched loop does not take: the first ``put`` is the prompt (skipped), then each step's
    token; end-of-sequence tokens are left out, as the batched loop leaves them out."""

    def __init__(self, on_ids: Callable[[list[int]], None], eos_ids: set[int]) -> None:
        self.on_ids = on_ids
        self.eos_ids = eos_ids
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        tokens = [t for t in value.reshape(-1).tolist() if t not in self.eos_ids]
        if tokens:
            self.on_ids(tokens)

    def end(self) -> None:
        pass


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
