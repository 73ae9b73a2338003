"""The in-process Generator: a strategy's ``sample`` / ``extend`` calls become requests to the
host's batched engine (or, for what it cannot run, generate() calls), and the budget is charged
what they computed."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from transformers import StoppingCriteriaList

from metagen_hooks import Budget, Candidate
from metagen_hooks.inflight import CANCELLED, Watch

from ...components import reads_logprobs
from ...config import Config
from ...errors import HostError
from .accounting import Ledger
from .detokenize import TextDeltas
from .engine import Request, request_generator
from .finite import checked
from .kwargs import UNSHARED, context_length, generate_kwargs
from .unbatched import Streamer, Unbatched
from .watching import Watcher


class TransformersGenerator:
    """Samples with the configured components. Every request goes to the host's batched decode
    loop, where it shares forward passes with every other prompt's requests; the N samples of a
    prefix share its prefill, and every prefix computed stays in the host's prefix cache, so
    ``extend`` pays only for tokens it has not seen. ``host`` is its host.TransformersHost."""

    def __init__(self, host, budget: Budget, config: Config, *,
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
        self._ledger = Ledger()  # what this generator computed KV for: its charges (accounting.py)
        self._calls = 0  # numbers this generator's requests, for their rows' random streams
        # generate()'s paths keep every step's logits only for log-probabilities a component reads,
        # or [host] logprobs asks for (the batched loop computes the chosen token's anyway: it is
        # its non-finite check)
        setting = config.host.get("logprobs")
        self._logprobs = reads_logprobs(config, host.registry) if setting is None else setting
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
                        kwargs["streamer"] = Streamer(stream, self.eos_ids)  # ids -> TextDeltas
                    pending.append(None)
                    requests.append(None)
            if watcher is not None:
                watcher.follow([f for f in pending if f is not None])
            for (tokens, rows, kwargs), future in zip(prepared, pending):
                results, computed, reused, passes = (
                    future.result() if future is not None
                    else Unbatched(self.host).run(tokens, rows, kwargs, (self._seed, tokens, self._calls),
                                                  logprobs=self._logprobs))
                if stream is not None:
                    stream.finish()
                if self.prefix_cache.max_bytes > 0 and (future is not None or not UNSHARED & set(kwargs)):
                    computed, reused, passes = self._ledger.charge(tokens, rows, results)  # a path with the cache
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
            kwargs["logits_processor"] = checked(kwargs["logits_processor"], self.config, self.host.registry)
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
            before = list(parent.logprobs) if parent and parent.token_ids else [0.0] * len(continuation)
            candidates.append(Candidate(
                prompt=prompt,
                text=self.tokenizer.decode(ids, skip_special_tokens=True),
                token_ids=ids,
                # none when generate() was not asked for them (no component reads them)
                logprobs=before + logprobs[: len(kept)] if len(logprobs) >= len(kept) and
                len(before) == len(continuation) else [],
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
