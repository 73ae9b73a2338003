"""Reward models served by a vLLM server: the outcome and process reward model scorers with the
classifier's forward passes done by the engine instead of in-process, so verification scales out
with generation (one more server, or the same cluster).

The server runs the checkpoint as a pooling model, e.g.
``vllm serve metagen_plugins/demo/checkpoints/demo-arith-prm --runner pooling``
(``--convert classify`` is what vLLM picks for a ``*ForSequenceClassification`` checkpoint),
and answers ``POST /classify`` with each text's class probabilities: the sigmoid of a single
logit, or the softmax of several. The scorers read the last class, as the in-process ones do,
so on the same checkpoint they give the same scores (tests/builtin/test_served_scorers.py checks
it against a real server).

The process reward model has two ways to score a candidate's steps. ``mode = "prefixes"`` sends
every step prefix as a text of its own (k steps: k texts, about k/2 times the candidate's tokens).
``mode = "tokens"`` sends the candidate once, as token ids, to ``POST /pooling`` with task
``token_classify``, which returns the classifier's output at every token (a server started with
``--pooler-config '{"task": "token_classify"}'``); a step's score is the output at the step's
last token, which is what the classifier gives that prefix alone (the model is causal) wherever
the tokenizer splits at the step's end. The ids come from the served model's tokenizer, loaded
here to place steps on tokens, and checked once against the server's own (``/tokenize``).

Requests are async (``httpx2``) on an event loop of the scorer's own: the texts of every prompt
scored at the same time (merged by :class:`~.gather.Gathered`) go out in chunks of
``batch_size``, up to ``concurrency`` at once, which the engine batches together. Each such
merged call opens its own client and closes it when done: nothing stays open between calls, as
nothing closes a scorer. A chunk the
server rejects (HTTP 400, e.g. a text longer than its ``--max-model-len``) is retried text by
text, so one bad prompt fails alone. A connection error, a timeout, a 5xx or a 429 is sent
again, up to ``retries`` times, after a backoff (the server's Retry-After when it gives one).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Literal, Sequence

from metagen_hooks import Candidate

from ...errors import ConfigError, HostError
from ...hostkit.event_loop import EventLoopThread
from ...hostkit.retrying import RETRYABLE, delay, retry_after, status_kind
from .gather import Gathered
from .model_scorers import StepRewards

ROUTE = "/classify"
TOKENS_ROUTE = "/pooling"
TOKENS_SERVER = "--pooler-config '{\"task\": \"token_classify\"}'"
"""What a vLLM server serving a classifier needs to answer ``mode = "tokens"``."""


class ServedClassifier:
    """P(good) for texts, from the ``/classify`` route of the vLLM server at ``url`` serving
    ``model``; ``scorer`` names the scorer in errors. Calling it returns one float or one
    :class:`HostError` per text (a rejected text does not fail the others). With ``per_token``
    the inputs are token-id lists sent to ``/pooling`` (task ``token_classify``), and each
    result is the list of P(good) at every token."""

    transport: Any = None  # an httpx2 transport to use instead of the network (tests set it)
    backoff: float = 0.5  # seconds before the first retry (doubling after each)

    def __init__(self, scorer: str, url: str, model: str, batch_size: int, concurrency: int,
                 timeout: float, api_key: str | None, retries: int = 2, per_token: bool = False) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{scorer}: parameter 'url' must be the server's address, "
                              f"e.g. \"http://127.0.0.1:8000\", got {url!r}")
        if not model:
            raise ConfigError(f"{scorer}: parameter 'served_model' must be the served model's name "
                              f"(vllm serve --served-model-name, or the path it serves; see GET /v1/models)")
        for name, value, least in (("batch_size", batch_size, 1), ("concurrency", concurrency, 1),
                                   ("retries", retries, 0)):
            if value < least:
                raise ConfigError(f"{scorer}: parameter {name!r} must be >= {least}, got {value}")
        if timeout <= 0:
            raise ConfigError(f"{scorer}: parameter 'timeout' must be > 0 seconds, got {timeout}")
        try:
            import httpx2  # noqa: F401
        except ImportError:
            raise HostError(f"{scorer} needs httpx2: pip install 'metagen-plugins[vllm]'") from None
        self.scorer, self.url, self.model = scorer, url.rstrip("/"), model
        self.batch_size, self.concurrency, self.timeout, self.api_key = batch_size, concurrency, timeout, api_key
        self.retries, self.per_token = retries, per_token
        self.route = TOKENS_ROUTE if per_token else ROUTE
        self._loop: EventLoopThread | None = None

    # -- synchronous face --------------------------------------------------------------------

    def __call__(self, texts: list) -> list:
        if not texts:
            return []
        return self._run(self._classify_all(texts))

    def tokenize(self, text: str) -> list[int]:
        """The server's own token ids for ``text`` (``POST /tokenize``)."""
        return self._run(self._tokenize(text))

    def _run(self, coroutine):
        if self._loop is None:
            self._loop = EventLoopThread(name=f"metagen-{self.scorer}")
        return self._loop.run(coroutine)

    def close(self) -> None:
        """Stop the event loop (a later call starts it again)."""
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.close()

    # -- requests ----------------------------------------------------------------------------

    def _http(self):
        import httpx2

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx2.AsyncClient(
            base_url=self.url, headers=headers, timeout=httpx2.Timeout(self.timeout), transport=self.transport,
            limits=httpx2.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency))

    async def _classify_all(self, texts: list[str]) -> list[float | HostError]:
        async with self._http() as client:
            return await self._chunks(client, texts)

    async def _chunks(self, client, texts: list[str]) -> list[float | HostError]:
        limit = asyncio.Semaphore(self.concurrency)

        async def chunk(part: list[str]) -> list[float | HostError]:
            async with limit:
                try:
                    return await self._classify(client, part)
                except _Rejected as rejected:
                    if len(part) == 1:
                        return [rejected.error]
            return await every([[text] for text in part])  # find the bad text(s)

        async def every(parts: list[list[str]]) -> list[float | HostError]:
            # all requests finish before an error is raised: none left running on a closed client
            done = await asyncio.gather(*(chunk(p) for p in parts), return_exceptions=True)
            for values in done:
                if isinstance(values, BaseException):
                    raise values
            return [value for values in done for value in values]

        return await every([texts[i:i + self.batch_size] for i in range(0, len(texts), self.batch_size)])

    async def _classify(self, client, texts: list) -> list:
        """One request for ``texts``: each text's probability of its last class (per token with
        ``per_token``)."""
        body = {"model": self.model, "input": texts, **({"task": "token_classify"} if self.per_token else {})}
        answer = await self._send(client, self.route, body)
        return parse_classification(answer, len(texts), self.scorer, self.route, self.per_token)

    async def _send(self, client, route: str, body: dict):
        """POST ``body`` to ``route``, sent again while it fails in a way worth retrying (a
        connection error, a timeout, a 5xx, a 429), ``retries`` times at most: the answer, or
        the last failure raised, saying how many attempts were made."""
        for attempt in range(self.retries + 1):
            answer, hint = await self._post(client, route, body)
            if not isinstance(answer, Exception):
                return answer
            if getattr(answer, "kind", None) not in RETRYABLE or attempt == self.retries:
                if attempt:
                    answer.args = (f"{answer} (after {attempt + 1} attempts; parameter 'retries')",)
                raise answer
            await asyncio.sleep(delay(self.backoff, attempt, hint))
        raise AssertionError("unreachable")

    async def _post(self, client, route: str, body: dict):
        """One POST: (the answer, None) or (the error it makes, the server's Retry-After)."""
        import httpx2

        try:
            response = await client.post(route, json=body)
        except httpx2.TimeoutException:
            return _kind(HostError(f"{self.scorer}: the vLLM server at {self.url} did not answer within "
                                   f"{self.timeout:g} s (parameter 'timeout')"), "timeout"), None
        except httpx2.HTTPError as exc:
            return _kind(HostError(f"{self.scorer}: cannot reach the vLLM server at {self.url} "
                                   f"({type(exc).__name__}: {exc}): is it running (the reward model served with "
                                   f"--runner pooling)? Else fix parameter 'url'"), "connection"), None
        if response.status_code >= 400:
            error = await self._failure(client, response)
            return _kind(error, getattr(error, "kind", None) or status_kind(response.status_code)), \
                retry_after(response.headers)
        return response, None

    async def _tokenize(self, text: str) -> list[int]:
        async with self._http() as client:
            answer = await self._send(client, "/tokenize", {"model": self.model, "prompt": text})
        try:
            return [int(t) for t in answer.json()["tokens"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise HostError(f"{self.scorer}: malformed /tokenize answer ({type(exc).__name__}: {exc}): "
                            f"{answer.text[:300]!r}") from None

    async def _failure(self, client, response) -> Exception:
        """The error for an error answer: a wrong route or model named as such, a rejected text
        as :class:`_Rejected` (retried alone), anything else with the server's message."""
        message = error_message(response)
        if response.status_code == 404 and "does not exist" in message:
            served = await self._served_models(client)
            return HostError(f"{self.scorer}: the vLLM server at {self.url} does not serve a model named "
                             f"{self.model!r} (parameter 'served_model'); it serves {served}")
        if response.status_code in (404, 405):
            return HostError(f"{self.scorer}: the server at {self.url} has no {response.request.url.path} route "
                             f"(HTTP {response.status_code}): it must be a vLLM server running the reward model "
                             f"as a classifier (--runner pooling); check parameter 'url'")
        if "pooling_task" in message or "does not support Classification API" in message:
            mode, other = ("tokens", "prefixes") if self.per_token else ("prefixes", "tokens")
            wanted = f"started with {TOKENS_SERVER}" if self.per_token else "started without --pooler-config's task"
            return _kind(HostError(f"{self.scorer}: the vLLM server at {self.url} serves {self.model!r} for another "
                                   f"pooling task ({message}): mode = {mode!r} needs a server {wanted}; or set "
                                   f"parameter 'mode' = \"{other}\""), "invalid")
        if response.status_code == 400:
            return _Rejected(HostError(f"{self.scorer}: the vLLM server at {self.url} rejected the text: {message}"))
        return HostError(f"{self.scorer}: the vLLM server at {self.url} failed (HTTP "
                         f"{response.status_code}): {message}")

    async def _served_models(self, client) -> str:
        try:
            answer = await client.get("/v1/models")
            names = [m["id"] for m in answer.json()["data"]]
        except Exception:  # only for the message: say what we could not find out
            return "models it did not list (GET /v1/models failed)"
        return ", ".join(map(repr, names)) or "no model"


class _Rejected(Exception):
    """A request the server refused as invalid (HTTP 400): ``error`` is what its text gets."""

    def __init__(self, error: HostError) -> None:
        super().__init__(str(error))
        self.error = error


def error_message(response) -> str:
    """The message of an error answer: vLLM's ``{"error": {"message"}}``, FastAPI's
    ``{"detail"}``, or the start of the body."""
    try:
        body = response.json()
        error = body.get("error")
        message = error.get("message") if isinstance(error, dict) else error or body.get("detail")
    except (ValueError, AttributeError):
        message = None
    return str(message or response.text[:300] or response.reason_phrase)


def parse_classification(response, count: int, scorer: str, route: str = ROUTE,
                         per_token: bool = False) -> list:
    """Each input's probability of the last class from a ``/classify`` answer (``data`` entries
    with ``index`` and ``probs``, in any order), or with ``per_token`` the list of them at every
    token from a ``/pooling`` answer (``data``: one row of class values per token); a malformed
    answer names the scorer."""
    try:
        data = response.json()["data"]
        if per_token:
            rows = {int(row["index"]): row["data"] for row in data}
            values = [[float(token[-1]) for token in rows[i]] for i in range(count)]
        else:
            probs = {int(row["index"]): row["probs"] for row in data}
            values = [float(probs[i][-1]) for i in range(count)]
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise HostError(f"{scorer}: malformed {route} answer ({type(exc).__name__}: {exc}): "
                        f"{response.text[:300]!r}") from None
    if len(data) != count:
        raise HostError(f"{scorer}: the {route} answer has {len(data)} results for {count} inputs")
    return values


def _kind(error: HostError, kind: str | None) -> HostError:
    """``error`` marked with its failure kind (:data:`~metagen_plugins.retrying.RETRYABLE` says
    which kinds are sent again)."""
    error.kind = kind
    return error


class _Served:
    """A served classifier behind :class:`Gathered`, whose calls raise a text's error."""

    def __init__(self, scorer: str, url: str, model: str, batch_size: int, concurrency: int,
                 timeout: float, api_key: str | None, retries: int, per_token: bool = False) -> None:
        self.classifier = ServedClassifier(scorer, url, model, batch_size, concurrency, timeout, api_key,
                                           retries, per_token)
        # Prompts scored at the same time (the runner's workers) share requests.
        self._gathered = Gathered(self.classifier)

    def _reward(self, texts: list) -> list:
        values = self._gathered(texts)
        for value in values:
            if isinstance(value, Exception):
                raise value
        return values

    def close(self) -> None:
        self.classifier.close()


class ServedOutcomeRewardModel(_Served):
    """``outcome_reward_model`` on a vLLM server: the sequence classifier served as ``served_model`` at
    ``url`` (``vllm serve <checkpoint> --runner pooling``) scores prompt + whole candidate by its
    probability of being right; ``batch_size`` texts per request, ``concurrency`` requests at
    once, each sent again up to ``retries`` times when it fails in a way worth retrying,
    ``api_key`` sent as a bearer token when set."""

    def __init__(self, url: str, served_model: str, batch_size: int = 32, concurrency: int = 4, timeout: float = 60.0,
                 api_key: str | None = None, retries: int = 2) -> None:
        super().__init__("served_outcome_reward_model", url, served_model, batch_size, concurrency, timeout, api_key,
                         retries)

    def score(self, prompt: str, candidates: Sequence[Candidate]) -> list[float]:
        return self._reward([prompt + c.text for c in candidates])


class ServedProcessRewardModel(_Served, StepRewards):
    """``process_reward_model`` on a vLLM server: the classifier served as ``served_model`` at ``url``
    scores every step (steps end at ``delimiter``); a candidate's score aggregates its step
    scores by ``last``, ``min`` or ``prod``. ``mode`` "prefixes" sends each step prefix as a text
    to ``/classify``; "tokens" sends each candidate once to ``/pooling`` for the classifier's
    output at every token (a server started with ``--pooler-config '{"task": "token_classify"}'``),
    placing steps on tokens with ``served_tokenizer`` (the served model's: a local path or a built-in
    model name; default ``served_model``). Request parameters as for the outcome model."""

    def __init__(self, url: str, served_model: str, delimiter: str = ". ",
                 aggregate: Literal["last", "min", "prod"] = "min", mode: Literal["prefixes", "tokens"] = "prefixes",
                 served_tokenizer: str | None = None, batch_size: int = 64, concurrency: int = 4, timeout: float = 60.0,
                 api_key: str | None = None, retries: int = 2) -> None:
        name = "served_process_reward_model"
        super().__init__(name, url, served_model, batch_size, concurrency, timeout, api_key, retries,
                         per_token=mode == "tokens")
        self.delimiter, self.aggregate, self.mode = delimiter, aggregate, mode
        self.tokenizer = None
        if mode == "tokens":
            from ...models import load_tokenizer, resolve

            where = served_tokenizer or served_model
            try:
                self.tokenizer = load_tokenizer(resolve(where, f"{name} parameter 'served_tokenizer'"))
            except HostError as exc:
                raise ConfigError(f"{name}: mode = \"tokens\" places steps on the served model's tokens, with its "
                                  f"tokenizer here: set parameter 'served_tokenizer' to it (a local path or a built-in "
                                  f"model name; default: served_model). {exc}") from None
            if not getattr(self.tokenizer, "is_fast", False):
                raise ConfigError(f"{name}: the tokenizer {where!r} is not a fast tokenizer: mode = \"tokens\" needs "
                                  f"its character offsets to place steps on tokens; use mode = \"prefixes\"")
        self._check_lock, self._checked = threading.Lock(), False  # the tokenizer check, done once

    def score_steps(self, prompt: str, candidates: Sequence[Candidate]) -> list[list[float]]:
        if self.mode == "prefixes" or not candidates:
            return super().score_steps(prompt, candidates)
        rows, positions = [], []
        for c in candidates:
            ids, at = self._token_positions(prompt, c.text)
            rows.append(ids)
            positions.append(at)
        self._check_tokenizer(prompt + candidates[0].text, rows[0])
        per_token = self._reward(rows)
        return [[values[i] for i in at] for values, at in zip(per_token, positions)]

    def _token_positions(self, prompt: str, text: str) -> tuple[list[int], list[int]]:
        """prompt + text's token ids, and for each step the index of its last token: the last
        token ending at or before the step's end (a token across the end belongs to the next)."""
        encoded = self.tokenizer(prompt + text, return_offsets_mapping=True)
        ends = [end for _, end in encoded["offset_mapping"]]
        at = []
        for prefix in self._prefixes(text):
            limit = len(prompt) + len(prefix)
            at.append(max((i for i, end in enumerate(ends) if end <= limit), default=0))
        return list(encoded["input_ids"]), at

    def _check_tokenizer(self, text: str, ids: list[int]) -> None:
        """Once: the server's tokens for ``text`` must be ours, else the steps would be read at
        the wrong tokens (a wrong answer that looks right)."""
        with self._check_lock:
            if self._checked:
                return
            served = self.classifier.tokenize(text)
            if served != ids:
                first = next((i for i, (a, b) in enumerate(zip(ids, served)) if a != b), min(len(ids), len(served)))
                raise HostError(f"{self.classifier.scorer}: parameter 'served_tokenizer' is not the served model's "
                                f"tokenizer: it makes {len(ids)} tokens of a candidate where the server at "
                                f"{self.classifier.url} makes {len(served)} (the first difference is at token "
                                f"{first}); set it to the served model's tokenizer")
            self._checked = True


def register_all(register) -> None:
    register("served_outcome_reward_model", ServedOutcomeRewardModel, reads_logprobs=False)
    register("served_process_reward_model", ServedProcessRewardModel, caller=("aggregate",), reads_logprobs=False)
