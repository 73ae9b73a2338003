"""``model.generate()``'s keyword arguments for a configuration: its components built, the
sampling flags, and the host settings that become generate() arguments (draft model, prompt
lookup, a cache implementation)."""

from __future__ import annotations

from typing import Any

from transformers import LogitsProcessorList, StoppingCriteriaList

from ...components import built, sampling
from ...config import Config
from ...errors import ConfigError
from ...models import load_model_cached
from ...registry import Registry
from .kv_quant import kv_quant

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
    if "kv_cache" in settings and kv_quant(settings["kv_cache"]) is None:  # int8/int4: the engine's own
        kwargs.update(cache_kwargs(settings["kv_cache"]))
    return kwargs


def cache_kwargs(kv_cache: str | dict) -> dict[str, Any]:
    """``cache_implementation`` (and ``cache_config``) for ``[host] kv_cache`` (generate()'s own
    caches; ``"int8"``, ``"int4"`` and tables with ``bits`` are the batched engine's, kv_quant).

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


# generate() arguments of the paths the batched engine cannot run (unbatched.py)
UNSHARED = {"assistant_model", "prompt_lookup_num_tokens", "cache_implementation"}


def context_length(model) -> int | None:
    """The longest sequence the model was built for (its config's position limit), if known."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
