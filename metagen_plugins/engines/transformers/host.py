"""The in-process host: the model and tokenizer of a run, its prefix store, and the batched
engine every prompt's requests share; ``generator()`` hands a strategy its Generator."""

from __future__ import annotations

import threading
from typing import Any, Callable, Sequence

from metagen_hooks import Budget

from ...config import Config
from ...errors import ConfigError, HostError
from ...hostkit.chat import chat_enabled, chat_format
from ...models import load_model, load_model_cached, load_tokenizer, resolve  # noqa: F401 (re-exported)
from ...registry import Registry
from ...text_stop import stop_strings
from .attention import kv_shape, supported
from .engine import Engine
from .generator import TransformersGenerator
from .kv_quant import kv_quant
from .kwargs import SPECULATIVE, UNSHARED, cache_kwargs, context_length, generate_kwargs  # noqa: F401 (re-exported)
from .prefixes import Prefixes
from .speculation import speculation


class TransformersHost:
    """Holds the model and tokenizer (given, or loaded from ``[host] model``) for a run, the
    prefix store every prompt shares (``prefixes.Prefixes``), and the batched decode loop
    (``engine.Engine``) that decodes every sequence in flight, whichever prompt's strategy asked
    for it."""

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
        self.kv = kv_quant(settings.get("kv_cache"))  # the engine's quantized KV, or None
        if self.kv is not None:
            self._check_quantized_kv(settings)
        self.prefixes = Prefixes(model, settings.get("prefix_cache_bytes", 512 * 2**20),
                                 eos_ids=self.eos_ids, pad_id=self.pad_id, kv=self.kv)
        # the engine's own speculation (speculation.py), or None
        self.speculation = speculation(settings, model, shared_prefix=self.shared_prefix, eos_ids=self.eos_ids,
                                       pad_id=self.pad_id) if self.kv is None else None
        self.lock = threading.Lock()  # generate() calls (paths the engine does not take) one at a time
        self._engine: Engine | None = None
        self._stop_criteria: dict[tuple[str, ...], Any] = {}

    def _check_quantized_kv(self, settings) -> None:
        """The engine's quantized KV needs every request in the engine: a clear error otherwise."""
        setting = f"[host] kv_cache = {settings['kv_cache']!r}"
        for key in ("draft_model", "prompt_lookup_num_tokens"):
            if key in settings:
                raise ConfigError(f"{setting} quantizes the KV inside the batched engine, but [host] {key} sends "
                                  f"every request to generate(); drop one of them, or use kv_cache = "
                                  f"\"quantized\" (generate()'s own quantized cache)")
        if not settings.get("batching", True):
            raise ConfigError(f"{setting} quantizes the KV inside the batched engine, which [host] batching = false "
                              f"turns off; set batching = true, or use kv_cache = \"quantized\" (generate()'s own "
                              f"quantized cache)")
        if not self.shared_prefix:
            raise ConfigError(f"{setting} needs the shared-prefix attention path, which this model "
                              f"({self.model.config.model_type}) does not take or [host] shared_prefix_attention "
                              f"turns off (supported: llama, mistral, qwen2, qwen3 with full attention); use "
                              f"kv_cache = \"quantized\" (generate()'s own quantized cache) instead")
        if self.kv.bits == 4 and kv_shape(self.model.config)[1] % 2:
            raise ConfigError(f"{setting}: int4 packs two channels per byte and this model's head dimension is odd; "
                              f"use kv_cache = \"int8\"")

    @property
    def prefix_cache(self):
        """The prefix store's cache (token prefix -> KV)."""
        return self.prefixes.cache

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
                self._engine = Engine(self.model, self.prefixes, eos_ids=self.eos_ids, pad_id=self.pad_id,
                                      max_batch_tokens=self.config.host.get("max_batch_tokens", 65536), kv=self.kv,
                                      speculation=self.speculation)
            return self._engine

    def batched(self, kwargs: dict[str, Any]) -> bool:
        """Whether the batched loop can run a request with these generate() arguments (not for
        caches of generate()'s own making, nor for model types without the shared-prefix
        attention path; a draft model or prompt lookup when the engine speculates itself)."""
        unshared = UNSHARED & set(kwargs)
        if self.speculation is not None:  # the engine speculates itself
            unshared -= SPECULATIVE
        return self.shared_prefix and self.config.host.get("batching", True) and not unshared

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
