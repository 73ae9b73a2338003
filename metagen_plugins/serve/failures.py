"""A failed run as the HTTP error its client gets.

- the request itself cannot run (its budget allows nothing, the prompt does not fit the
  model's context, a component rejects its parameters): 400;
- the backend engine failed: 504 when it timed out, 502 otherwise (connection refused, 5xx,
  a malformed answer), with the engine's own message;
- a plugin's component raised: 500 naming the component and its plugin;
- anything else in the host: 500 naming the host.

A 500's client message names what failed and the error's type, not its text (which may hold
paths or data); the server's log has the whole failure under the same error id.
"""

from __future__ import annotations

import logging
import uuid

from metagen_hooks import BudgetExceeded, Result, ScorerNeeded

from ..errors import ConfigError, HostError
from ..registry import SINGULAR
from ..hostkit.generator import RemoteError
from ..runner import describe_failure
from .errors import APIError

log = logging.getLogger("metagen.serve")


def api_error(exc: BaseException, config) -> APIError:
    if isinstance(exc, RemoteError):
        kinds = {f.get("kind") for f in exc.failures} or {"connection"}
        timed_out = kinds <= {"timeout"}
        return APIError(504 if timed_out else 502, f"the {config.host_name} backend failed: {exc}",
                        code="upstream_timeout" if timed_out else "upstream_error")
    if isinstance(exc, ScorerNeeded):
        return APIError(400, f"{exc}: choose a profile with a scorer, or name one in metagen.scorer (GET "
                             f"/v1/models shows each profile's)", param="metagen.scorer", code="scorer_needed")
    if isinstance(exc, BudgetExceeded):
        return APIError(400, f"{exc}: raise the request's metagen.budget (up to the profile's caps)",
                        param="metagen.budget", code="budget_exhausted")
    if isinstance(exc, (ConfigError, HostError)):  # a parameter the component rejected when built
        return APIError(400, str(exc), code="invalid_request")
    failure = describe_failure(exc, config)
    error_id = uuid.uuid4().hex[:12]
    log.error("error %s: %s", error_id, failure["message"], exc_info=exc)
    if failure["kind"] == "component":
        return APIError(500, f"{failure['name']!r} ({SINGULAR[failure['component_kind']]} of plugin "
                             f"{failure['plugin']!r}) raised {type(exc).__name__}; the request failed, the server "
                             f"goes on (error id {error_id} in the server's log)", code="component_error")
    return APIError(500, f"the {config.host_name} host failed with {type(exc).__name__} (error id {error_id} in "
                         f"the server's log)", code="host_error")


def answered(waited, config) -> Result:
    """A finished prompt's Result (``waited``: its done future), or the APIError its failure
    maps to (also when the strategy chose nothing)."""
    exc = waited.exception()
    if exc is not None:
        raise api_error(exc, config) from exc
    result = waited.result()
    if result.best is None and not result.failures and result.budget.samples == 0:
        limits = ", ".join(f"{k} = {v}" for k, v in (("max_samples", result.budget.max_samples),
                                                            ("max_tokens", result.budget.max_tokens),
                                                            ("max_flops", result.budget.max_flops)) if v is not None)
        raise APIError(400, f"the budget ({limits}) allowed no generation, so the {result.strategy} strategy "
                            f"has no answer: raise the request's metagen.budget (up to the profile's caps)",
                       param="metagen.budget", code="budget_exhausted")
    if result.best is None:
        raise APIError(500, f"the {result.strategy} strategy returned no answer"
                       + "".join(f"; {f.get('message') or f.get('error')}" for f in result.failures),
                       code="no_answer")
    return result
