"""The remote host of the host kit: a serving-engine deployment (its replicas, the configured
components as its request parameters, the event loop its requests run on), making a
:class:`~.generator.RemoteGenerator` per prompt. The generator's names are importable from here
too (this module held both before they were split).
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable, Literal, Sequence

from metagen_hooks import Budget

from ..components import reads_logprobs, realised
from ..errors import HostError
from .chat import chat_enabled, chat_format
from .event_loop import EventLoopThread
from .generator import CANCEL_POLL, Failure, RemoteError, RemoteGenerator, Sample  # noqa: F401 (re-exported)
from .replicas import Replicas, check_limits, replica_urls

REMOTE_SETTINGS: dict[str, Any] = {
    "url": str, "timeout": float, "concurrency": int, "retries": int, "api_key": str,
    "urls": list[str],  # several replicas of one model (instead of url)
    "cooldown": float,  # seconds a failed replica is skipped
    "tokenizer": str,  # the served model's tokenizer, to format prompts with its chat template
    "chat_template": bool | Literal["auto"],
}
"""The ``[host]`` settings :class:`RemoteHost` reads: a remote host's registration accepts these
(``settings={**REMOTE_SETTINGS, ...its own}``)."""

@functools.lru_cache(maxsize=1)
def tls_context():
    """The TLS context every remote host's HTTP client shares (httpx2's default: the CA bundle,
    ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` as set when first made). Loading the bundle costs ~25 ms
    of CPU here, which each new client (each run's host) would otherwise pay on the event loop,
    before its first request goes out, http:// servers included."""
    import httpx2

    return httpx2.create_ssl_context()


def chat_template(settings: dict[str, Any], host: str) -> tuple[Any, bool]:
    """``[host] tokenizer`` (loaded) and whether prompts go through its chat template:
    ``chat_template`` "auto" (the default) when it has one; true without a tokenizer is an
    error, as there is no template to apply."""
    wanted = settings.get("chat_template", "auto")
    if "tokenizer" not in settings:
        if wanted is True:
            raise HostError(f"[host] chat_template = true on the {host} host needs [host] tokenizer: the served "
                            f"model's tokenizer (a local path or a built-in model name), whose chat template "
                            f"formats the prompts here")
        return None, False
    from ..models import load_tokenizer, resolve

    try:
        tokenizer = load_tokenizer(resolve(settings["tokenizer"], what="[host] tokenizer"))
    except ImportError as exc:
        raise HostError(f"[host] tokenizer needs transformers ({exc}): pip install 'metagen-plugins[transformers]'") from None
    if wanted is True and not chat_enabled("auto", tokenizer):
        raise HostError(f"[host] chat_template = true, but the tokenizer {settings['tokenizer']!r} has no chat template")
    return tokenizer, chat_enabled(wanted, tokenizer)


class RemoteHost:
    """A serving-engine deployment: where it is, what the configured components become as
    request parameters, and the event loop its requests run on. Subclasses set ``name`` and
    ``generator_class`` and may override :meth:`check`."""

    name = "remote"
    generator_class = RemoteGenerator
    # Requests in flight per replica when [host] concurrency is not set: as many as one server
    # batches at once, so its batch stays full (subclasses set their engine's figure).
    requests_per_replica = 128
    cooldown = 5.0  # seconds a failed replica is skipped, when [host] cooldown is not set
    realiser: str | None = None  # the component metadata key read for request parameters (default: name)
    server: str | None = None  # the server in connection errors ("is the vLLM server at ... running?"; default: "<name> server")

    def __init__(self, config, registry, model=None, tokenizer=None) -> None:
        if model is not None or tokenizer is not None:
            raise HostError(f"the {self.name} host generates on its server; model= and tokenizer= are "
                            f"for the transformers host")
        self.config = config
        self.registry = registry
        urls = replica_urls(config.host, self.name)
        self.url = urls[0]  # the first replica (the only one, with [host] url)
        concurrency = config.host.get("concurrency", self.requests_per_replica * len(urls))
        cooldown = config.host.get("cooldown", self.cooldown)
        check_limits(concurrency, cooldown)
        self.replicas = Replicas(urls, concurrency, cooldown)
        # the runner's prompts in flight when nothing says: as many as requests may be, so the
        # engine's queue stays as full as a client sending everything at once keeps it
        self.default_concurrency = concurrency
        self.tokenizer, self.chat = chat_template(config.host, self.name)
        self.wants_logprobs = self.logprobs_wanted()
        self.parameters = self.engine_parameters()
        self.check_generation()
        self.check()
        self._clients: dict[str, Any] = {}  # replica URL -> its client (see http_client)
        self.loop = EventLoopThread()

    def engine_parameters(self) -> dict[str, Any]:
        """The configured processors and stopping criteria as this engine's request parameters
        (each component's realiser for this host; validation has checked that one exists)."""
        merged: dict[str, Any] = {}
        for info, values in realised(self.config, self.registry, self.realiser or self.name):
            self._merge(merged, values, info, "")
        return merged

    def _merge(self, merged: dict[str, Any], values: dict[str, Any], info, path: str) -> None:
        """Lists concatenate (in configuration order), tables merge key by key, equal values
        agree; two components setting one parameter to different values is an error."""
        for key, value in values.items():
            if key not in merged:
                merged[key] = value
            elif isinstance(value, list) and isinstance(merged[key], list):
                merged[key] = merged[key] + value
            elif isinstance(value, dict) and isinstance(merged[key], dict):
                merged[key] = dict(merged[key])
                self._merge(merged[key], value, info, f"{path}{key}.")
            elif merged[key] != value:
                raise HostError(f"{info.label()} sets the {self.name} parameter {path + key!r} to {value!r}, "
                                f"but another component already set it to {merged[key]!r}; keep one")

    def check(self) -> None:
        """Reject, before any request, a configuration this engine cannot serve."""

    def logprobs_wanted(self) -> bool:
        """Whether requests ask the engine for each sampled token's log-probability
        (:attr:`wants_logprobs`): ``[host] logprobs`` when the host takes that setting and it is
        set, else whether a component of the run reads them (:func:`reads_logprobs`). They are
        not free: a vLLM server's API process spends CPU on them, per token."""
        setting = self.config.host.get("logprobs")
        return reads_logprobs(self.config, self.registry) if setting is None else bool(setting)

    def check_generation(self) -> None:
        """Refuse the ``[generation]`` settings no remote host can honour (docs/host-kit.md):
        ``token_healing`` regrows the prompt's last token, which needs the prompt's tokens, and a
        remote host sends text."""
        if self.config.generation.get("token_healing"):
            raise HostError(f"[generation] token_healing = true regrows the prompt's last token, which the "
                            f"{self.name} host cannot: it sends the prompt as text to its server. Remove "
                            f"token_healing, or run on an in-process host (the default host)")

    def where(self) -> str:
        """The deployment in words, for messages: "server at URL" or "servers at URL, URL"."""
        urls = self.replicas.urls
        return f"server at {urls[0]}" if len(urls) == 1 else f"servers at {', '.join(urls)}"

    def http_client(self, url: str | None = None):
        """The ``httpx2`` client of the replica at ``url`` (default: the first), made on the
        host's event loop on first use and kept for the host's life. Its connection pool is as
        large as the host's in-flight limit, so the limit, not the pool, decides how many
        requests the server sees. Sends ``[host] api_key`` as a bearer token when set."""
        url = url or self.url
        clients = self._clients
        if url not in clients:
            import httpx2

            headers = {"Authorization": f"Bearer {self.config.host['api_key']}"} if "api_key" in self.config.host else {}
            limit = self.replicas.concurrency
            clients[url] = httpx2.AsyncClient(
                base_url=url, headers=headers, timeout=httpx2.Timeout(self.config.host.get("timeout", 60.0)),
                verify=tls_context(),
                limits=httpx2.Limits(max_connections=limit, max_keepalive_connections=limit))
        return clients[url]

    async def aclose_clients(self) -> None:
        """Close the HTTP clients this host opened (a subclass keeping other clients extends this)."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()

    def close(self) -> None:
        """Close the clients and stop the event-loop thread; ``run()`` calls this when done."""
        self.loop.run(self.aclose_clients())
        self.loop.close()

    def context(self) -> dict[str, Any]:
        return {}

    @property
    def conversations(self) -> bool:
        """Whether a conversation can be formatted: with a chat template only."""
        return self.chat

    def format(self, prompt: str, conversation: Sequence[dict[str, str]] = ()) -> str:
        """The text sent as the prompt: as it is, or, with ``[host] tokenizer`` and a chat
        template, the ``conversation``'s turns and the prompt as the last user turn, formatted
        here with the served model's template (what the engine's own chat route would do)."""
        return chat_format(self.tokenizer, self.chat, prompt, conversation,
                           f"the {self.name} host formats a conversation with a chat template, which is off "
                           f"here: set [host] tokenizer to the served model's tokenizer (a local path or a "
                           f"built-in model name) so prompts are formatted with its chat template")

    @property
    def streams(self) -> bool:
        """Whether plain decoding streams live (the generator has ``stream_request``)."""
        return self.generator_class.stream_request is not None

    def generator(self, budget: Budget, config=None, *, conversation: Sequence[dict[str, str]] = (),
                  on_text: Callable[[str], None] | None = None) -> RemoteGenerator:
        """A Generator charging ``budget``; ``config`` (same ``[host]``) gives this prompt its own
        components and generation settings, over the host's one in-flight limit and clients."""
        host = self if config is None or config is self.config else self.refined(config)
        settings = host.config.host
        return host.generator_class(host, budget, timeout=settings.get("timeout", 60.0),
                                    retries=settings.get("retries", 2), seed=host.config.generation.get("seed"),
                                    conversation=conversation, on_text=on_text)

    def refined(self, config) -> "RemoteHost":
        """This host for another configuration of the same ``[host]``: a view with that
        configuration's request parameters, sharing the replicas (so the one in-flight limit
        and failover), the clients and the event loop. Views are kept for the 64 most recent
        configurations; a configuration this engine cannot serve fails here, as at startup."""
        import copy
        import json

        if config.host != self.config.host:
            raise HostError("a per-prompt configuration must keep the host's [host] settings")
        key = json.dumps({k: getattr(config, k) for k in ("generation", "processors", "stopping", "scorer", "strategy")},
                         sort_keys=True, default=repr)
        views, lock = self.__dict__.setdefault("_views", {}), self.__dict__.setdefault("_views_lock", threading.Lock())
        with lock:
            view = views.pop(key, None)
        if view is None:
            view = copy.copy(self)  # shallow: replicas, clients and loop are shared
            view.config = config
            if hasattr(self, "sampling"):
                from ..components import sampling

                view.sampling = sampling(config, self.registry)
            view.wants_logprobs = view.logprobs_wanted()
            view.parameters = view.engine_parameters()
            view.check_generation()
            view.check()
        with lock:
            while len(views) >= 64:
                views.pop(next(iter(views)))
            views[key] = view  # most recent last
        return view
