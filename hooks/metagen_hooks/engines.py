"""What a plugin needs to declare how its component is realised inside a serving engine.

A component's ``vllm=`` realiser usually maps its parameters onto the engine's own request
parameters (``lambda top_p: {"top_p": top_p}``). A component that only metagen implements can
still run inside a vLLM server: :func:`server_side` sends its name and parameters in the
request's ``vllm_xargs``, and the ``metagen-vllm`` plugin (installed in the server's
environment, with the component's own plugin) builds and runs it there. This module is part of
the contract so that such a plugin imports ``metagen_hooks`` only.
"""

from __future__ import annotations

from typing import Any, Callable

XARG = "metagen"
"""The ``vllm_xargs`` key the metagen-vllm plugin reads: a JSON string listing the components
(``[{"section": "processors", "name": ..., parameters...}]``)."""

SECTIONS = ("processors", "stopping")
"""The configuration sections a server-side component can come from."""


def server_side(name: str, section: str = "processors") -> Callable[..., dict[str, Any]]:
    """A ``vllm=`` realiser for a component that runs inside the server through the metagen-vllm
    plugin: the component's name and parameters travel in ``vllm_xargs``. ``section`` is
    ``"processors"`` (a logits processor) or ``"stopping"`` (a stopping criterion). The plugin that
    registers the component must be installed on the server as well.

    Example::

        @hookimpl
        def register_logits_processors(register):
            register("ban_token", BanToken, vllm=server_side("ban_token"))
    """
    if section not in SECTIONS:
        raise ValueError(f"section must be 'processors' or 'stopping', got {section!r}")

    def realise(**params: Any) -> dict[str, Any]:
        return {"vllm_xargs": {XARG: [{"section": section, "name": name, **params}]}}

    realise.server_side = True  # type: ignore[attr-defined]
    return realise
