"""The TGI engine, a built-in plugin: the ``tgi`` host (strategies over a text-generation-inference
deployment, through huggingface_hub's client), its realisations of the built-in components, and
``metagen tgi launcher-args`` / ``metagen tgi check``.

Nothing of huggingface_hub is imported to register: the host module loads when a run creates
the host, the command's module when the command line starts.
"""

from __future__ import annotations

from typing import Any

from metagen_hooks import Capabilities, HostError, hookimpl

from ...hostkit import REMOTE_SETTINGS
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


def create(config, registry, model=None, tokenizer=None):
    """A text-generation-inference deployment, through huggingface_hub's client."""
    try:
        from .host import TGIHost
    except ImportError as exc:
        raise HostError(f"the {NAME} host cannot start: {exc}; install what it needs with "
                        f"pip install 'metagen-plugins[{NAME}]'") from None
    return TGIHost(config, registry, model=model, tokenizer=tokenizer)


@hookimpl
def register_hosts(register):
    # natively: stop strings (a request's stop; more than the deployment takes are watched while
    # streaming), streaming, conversations (with [host] tokenizer)
    register(NAME, create, settings=SETTINGS, realisations=REALISATIONS,
             capabilities=Capabilities(stop_strings=True, streaming=True, conversations=True))


def _add_arguments(parser) -> None:
    from . import deploy

    deploy.add_arguments(parser)


def _main(args, registry) -> int:
    """Launcher arguments for a configuration, and checks of a running deployment."""
    from . import deploy

    return deploy.main(args, registry)


@hookimpl
def register_commands(register):
    register(NAME, _add_arguments, _main, help="TGI deployments: launcher arguments for a configuration, and "
                                               "checks of a running deployment")
