"""metagen's ``openai`` host: strategies over any OpenAI-compatible ``POST /v1/completions``.

A whole host in one distribution, through the ``register_hosts`` hook: its ``[host]`` settings,
its factory, its own realiser key (``openai=``), the key it falls back to, and what it realises
natively. A component with no ``openai=`` realisation is read as vLLM's (``vllm=``: vLLM's
completions API is OpenAI's plus extensions); the host sends only the parameters the OpenAI API
defines, plus those ``[host] extensions`` names as accepted by the server. Stop strings it
realises natively (a request's ``stop``). It uses only ``metagen_hooks`` and the host kit
(``metagen_plugins.hostkit``).
"""

from __future__ import annotations

from metagen_hooks import Capabilities, hookimpl

__version__ = "0.1.0"

SETTINGS = {
    "url": str,  # the server's root (http://127.0.0.1:8000) or its /v1 base URL
    "model": str,  # the served model name, sent as "model" (most servers require it)
    "api_key": str,
    "timeout": float,
    "concurrency": int,
    "retries": int,
    "logprobs": bool,  # ask for per-token log-probabilities always / never (default: when a component reads them)
    "samples_per_request": int,  # n per request (default 1: every server honours it; raise it where n works)
    "extensions": list[str],  # non-OpenAI request parameters the server accepts, e.g. ["top_k", "min_p"]
}


def create(config, registry, model=None, tokenizer=None):
    """Any OpenAI-compatible completions server (SGLang, llama.cpp's server, LM Studio, vLLM)."""
    from .host import OpenAIHost

    return OpenAIHost(config, registry, model=model, tokenizer=tokenizer)


@hookimpl
def register_hosts(register):
    register("openai", create, settings=SETTINGS, realiser="openai", fallback=("vllm",),
             capabilities=Capabilities(stop_strings=True, streaming=True, conversations=True))
