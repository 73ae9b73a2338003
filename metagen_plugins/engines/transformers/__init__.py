"""The in-process engine: metagen's components inside transformers, one batched decode loop for
every sequence in flight. Registered as a plugin (``register_hosts``); nothing here imports
torch or transformers until a run creates the host.

One module per job:

- ``kwargs``: ``model.generate()``'s keyword arguments for a configuration;
- ``finite``: the check that names the component whose scores turn NaN, +inf or empty;
- ``host``: the model, the tokenizer, the prefix store and the engine of a run;
- ``prefixes`` (on ``prefix_cache``): a prefix's KV, cached, computed or remembered;
- ``generator``: a strategy's sample/extend calls as engine requests, and the budget's charges;
- ``accounting``: what a request computed and reused, and what a prompt is charged;
- ``engine`` (on ``requests``): the scheduler, one decode step for every row in flight;
- ``choice``: what a step keeps of each row (each position's token, kept drafts, ends);
- ``harvest``: a finished row's tokens and the KV it wrote;
- ``speculation``, ``draft``: speculative decoding in the engine (prompt lookup, a draft model);
- ``attention``: shared-prefix attention, for the engine and generate() alike;
- ``kv_quant``, ``quant_attention``: the quantized KV (``[host] kv_cache = "int8"`` / ``"int4"``)
  and the integer kernel that reads quantized prefixes;
- ``unbatched``: what the engine does not run, one generate() call at a time;
- ``watching``, ``detokenize``: a watching strategy's view of its rows; text from token ids.
"""

from __future__ import annotations

from typing import Any, Literal

from metagen_hooks import Capabilities, hookimpl

from ...hostkit import lazy_host

TRANSFORMERS_SETTINGS: dict[str, Any] = {
    "model": str,
    "gguf_file": str,
    "tokenizer": str,
    "draft_model": str,
    "prompt_lookup_num_tokens": int,
    "num_speculative_tokens": int,  # the longest draft of the engine's speculation
    "speculative_rows": int | Literal["auto"],  # speculate while at most this many rows decode
    "kv_cache": str | dict,
    "dtype": str,
    "device": str,
    "prefix_cache_bytes": int,
    "chat_template": bool | Literal["auto"],
    "shared_prefix_attention": bool,
    "batching": bool,  # the batched engine (engine.py); false: one generate() per request
    "max_batch_tokens": int,  # KV tokens the loop holds at once
    # generate() paths keep every step's logits for log-probs: always / never (default: when a
    # component reads them; the batched engine computes them anyway)
    "logprobs": bool,
}


@hookimpl
def register_hosts(register):
    register("transformers", lazy_host(f"{__name__}.host:TransformersHost", install="metagen-plugins[transformers]",
                                       doc="In-process: transformers generate() on a local model."),
             settings=TRANSFORMERS_SETTINGS,
             capabilities=Capabilities(in_process=True, stop_strings=True, streaming=True, conversations=True))
