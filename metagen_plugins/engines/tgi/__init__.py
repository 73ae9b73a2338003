"""The TGI engine, a built-in plugin: the ``tgi`` host (strategies over a text-generation-inference
deployment, through huggingface_hub's client), its realisations of the built-in components, and
``metagen tgi launcher-args`` / ``metagen tgi check``.

Nothing of huggingface_hub is imported to register: the host module loads when a run creates
the host, the command's module when the command line starts.
"""

from __future__ import annotations

from typing import Any

from metagen_hooks import Capabilities, hookimpl

from ...hostkit import REMOTE_SETTINGS, lazy_command, lazy_host
from .realisations import REALISATIONS

NAME = "tgi"
SETTINGS: dict[str, Any] = {
    **REMOTE_SETTINGS,
    "model_id": str,
    "draft_model": str,  # accepted only to be rejected with the reason (host.py)
    "kv_cache": str,
    "speculate": int,
    "quantize": str,
    "best_of": int,
    "max_best_of": int,
    "max_stop_sequences": int,
    "max_top_n_tokens": int,
    "top_n_tokens": int,
    "prompt_logprobs": bool,
}


@hookimpl
def register_hosts(register):
    # natively: stop strings (a request's stop; more than the deployment takes are watched while
    # streaming), streaming, conversations (with [host] tokenizer)
    register(NAME, lazy_host(f"{__name__}.host:TGIHost", install=f"metagen-plugins[{NAME}]",
                             doc="A text-generation-inference deployment, through huggingface_hub's client."),
             settings=SETTINGS, realisations=REALISATIONS,
             capabilities=Capabilities(stop_strings=True, streaming=True, conversations=True))


@hookimpl
def register_commands(register):
    register(NAME, *lazy_command(f"{__name__}.deploy"),
             help="TGI deployments: launcher arguments for a configuration, and checks of a running deployment")
