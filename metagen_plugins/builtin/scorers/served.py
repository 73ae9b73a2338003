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

Requests are async (``httpx2``) on an event loop of the scorer's own: the texts of every prompt
scored at the same time (merged by :class:`~.gather.Gathered`) go out in chunks of
``batch_size``, up to ``concurrency`` at once, which the engine batches together. Each such
merged call opens its own client and closes it when done: nothing stays open between calls, as
nothing closes a scorer. A chunk the
server rejects (HTTP 400, e.g. a text longer than its ``--max-model-len``) is retried text by
text, so one bad prompt fails alone.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal, Sequence

from metagen_hooks import Candidate

from ...errors import ConfigError, HostError
from ...event_loop import EventLoopThread
from .gather import Gathered
from .model_scorers import StepRewards

ROUTE = "/classify"


class ServedClassifier:
    """P(good) for texts, from the ``/classify`` route of the vLLM server at ``url`` serving
    ``model``; ``scorer`` names the scorer in errors. Calling it returns one float or one
    :class:`HostError` per text (a rejected text does not fail the others)."""

    transport: Any = None  # an httpx2 transport to use instead of the network (tests set it)

    def __init__(self, scorer: str, url: str, model: str, batch_size: int, concurrency: int,
                 timeout: float, api_key: str | None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{scorer}: parameter 'url' must be the server's address, "
                              f"e.g. \"http://127.0.0.1:8000\", got {url!r}")
        if not model:
            raise ConfigError(f"{scorer}: parameter 'served_model' must be the served model's name "
                              f"(vllm serve --served-model-name, or the path it serves; see GET /v1/models)")
        for name, value in (("batch_size", batch_size), ("concurrency", concurrency)):
            if value < 1:
                raise ConfigError(f"{scorer}: parameter {name!r} must be >= 1, got {value}")
        if timeout <= 0:
            raise ConfigError(f"{scorer}: parameter 'timeout' must be > 0 seconds, got {timeout}")
        try:
            import httpx2  # noqa: F401
        except ImportError:
            raise HostError(f"{scorer} needs httpx2: pip install 'metagen-plugins[vllm]'") from None
        self.scorer, self.url, self.model = scorer, url.rstrip("/"), model
        self.batch_size, self.concurrency, self.timeout, self.api_key = batch_size, concurrency, timeout, api_key
        self._loop: EventLoopThread | None = None

    # -- synchronous face --------------------------------------------------------------------

    def __call__(self, texts: list[str]) -> list[float | HostError]:
        if not texts:
            return []
        if self._loop is None:
            self._loop = EventLoopThread(name=f"metagen-{self.scorer}")
        return self._loop.run(self._classify_all(texts))

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

    async def _classify(self, client, texts: list[str]) -> list[float]:
        """One ``/classify`` request: each text's probability of its last class."""
        import httpx2

        try:
            response = await client.post(ROUTE, json={"model": self.model, "input": texts})
        except httpx2.TimeoutException:
            raise HostError(f"{self.scorer}: the vLLM server at {self.url} did not answer within "
                            f"{self.timeout:g} s (parameter 'timeout')") from None
        except httpx2.HTTPError as exc:
            raise HostError(f"{self.scorer}: cannot reach the vLLM server at {self.url} "
                            f"({type(exc).__name__}: {exc}): is it running (the reward model served with "
                            f"--runner pooling)? Else fix parameter 'url'") from None
        if response.status_code >= 400:
            raise await self._failure(client, response)
        return parse_classification(response, len(texts), self.scorer)

    async def _failure(self, client, response) -> Exception:
        """The error for an error answer: a wrong route or model named as such, a rejected text
        as :class:`_Rejected` (retried alone), anything else with the server's message."""
        message = error_message(response)
        if response.status_code == 404 and "does not exist" in message:
            served = await self._served_models(client)
            return HostError(f"{self.scorer}: the vLLM server at {self.url} does not serve a model named "
                             f"{self.model!r} (parameter 'served_model'); it serves {served}")
        if response.status_code in (404, 405):
            return HostError(f"{self.scorer}: the server at {self.url} has no {ROUTE} route (HTTP "
                             f"{response.status_code}): it must be a vLLM server running the reward model "
                             f"as a classifier (--runner pooling); check parameter 'url'")
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


def parse_classification(response, count: int, scorer: str) -> list[float]:
    """Each text's probability of the last class from a ``/classify`` answer (``data`` entries
    with ``index`` and ``probs``, in any order); a malformed answer names the scorer."""
    try:
        data = response.json()["data"]
        probs = {int(row["index"]): row["probs"] for row in data}
        values = [float(probs[i][-1]) for i in range(count)]
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise HostError(f"{scorer}: malformed {ROUTE} answer ({type(exc).__name__}: {exc}): "
                        f"{response.text[:300]!r}") from None
    if len(data) != count:
        raise HostError(f"{scorer}: the {ROUTE} answer has {len(data)} results for {count} texts")
    return values


class _Served:
    """A served classifier behind :class:`Gathered`, whose calls raise a text's error."""

    def __init__(self, scorer: str, url: str, model: str, batch_size: int, concurrency: int,
                 timeout: float, api_key: str | None) -> None:
        self.classifier = ServedClassifier(scorer, url, model, batch_size, concurrency, timeout, api_key)
        # Prompts scored at the same time (the runner's workers) share requests.
        self._gathered = Gathered(self.classifier)

    def _reward(self, texts: list[str]) -> list[float]:
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
    once, ``api_key`` sent as a bearer token when set."""

    def __init__(self, url: str, served_model: str, batch_size: int = 32, concurrency: int = 4, timeout: float = 60.0,
                 api_key: str | None = None) -> None:
        super().__init__("served_outcome_reward_model", url, served_model, batch_size, concurrency, timeout, api_key)

    def score(self, prompt: str, candidates: Sequence[Candidate]) -> list[float]:
        return self._reward([prompt + c.text for c in candidates])


class ServedProcessRewardModel(_Served, StepRewards):
    """``process_reward_model`` on a vLLM server: the classifier served as ``served_model`` at ``url``
    scores every step prefix (steps end at ``delimiter``); a candidate's score aggregates its step
    scores by ``last``, ``min`` or ``prod``. Request parameters as for the outcome model."""

    def __init__(self, url: str, served_model: str, delimiter: str = ". ",
                 aggregate: Literal["last", "min", "prod"] = "min", batch_size: int = 64, concurrency: int = 4,
                 timeout: float = 60.0, api_key: str | None = None) -> None:
        super().__init__("served_process_reward_model", url, served_model, batch_size, concurrency, timeout, api_key)
        self.delimiter, self.aggregate = delimiter, aggregate


def register_all(register) -> None:
    register("served_outcome_reward_model", ServedOutcomeRewardModel)
    register("served_process_reward_model", ServedProcessRewardModel)
