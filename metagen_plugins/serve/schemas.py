"""The request bodies of the OpenAI routes metagen serves, as strict pydantic models.

Strict: a wrong type, an unknown field or a field metagen cannot honour is a 400 that names
the field, never a silent default. ``metagen`` is the extension object (``extra_body`` in the
``openai`` client) that refines the profile; :mod:`.profiles` validates its contents.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import APIError, bad_request

MAX_DEPTH = 32  # levels of nested arrays and objects in a request body
_STRUCTURE = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')  # strings (skipped whole) and brackets

# OpenAI fields metagen accepts only at their neutral value (anything else would be ignored,
# so it is refused): field -> the values that mean "not asked for".
NEUTRAL = {
    "logprobs": (None, False, 0), "top_logprobs": (None, 0), "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0), "logit_bias": (None, {}), "tools": (None, []),
    "tool_choice": (None, "none", "auto"), "functions": (None, []), "function_call": (None, "none", "auto"),
    "parallel_tool_calls": (None, True, False), "response_format": (None, {"type": "text"}),
    "echo": (None, False), "best_of": (None, 1), "suffix": (None, ""), "modalities": (None, ["text"]),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    # Clients echo assistant turns back with fields such as tool_calls or refusal: tolerated.
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(_Strict):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class _Common(_Strict):
    model: str = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=None, ge=1)
    user: str | None = None
    metagen: dict[str, Any] | None = None
    # accepted only at their neutral values (see NEUTRAL)
    logprobs: Any = None
    top_logprobs: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    logit_bias: Any = None


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    parallel_tool_calls: Any = None
    response_format: Any = None
    modalities: Any = None
    store: bool | None = None
    metadata: dict[str, str] | None = None


class CompletionRequest(_Common):
    prompt: str | list[str]
    echo: Any = None
    best_of: Any = None
    suffix: Any = None


def parse(model: type[_Common], raw: bytes) -> _Common:
    """The request body as ``model``; a 400 naming the field for anything else."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request(f"the request body is not UTF-8 text (byte {exc.start} is {raw[exc.start]:#04x}); "
                          f"send JSON encoded as UTF-8", code="invalid_encoding") from None
    depth = _depth(text)
    if depth > MAX_DEPTH:
        raise bad_request(f"the request body nests {depth} levels of arrays and objects; the limit is {MAX_DEPTH}",
                          code="too_deep")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(data).__name__}")
    try:
        request = model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    for field, neutral in NEUTRAL.items():
        value = getattr(request, field, None)
        if value not in neutral:
            raise bad_request(f"{field} = {json.dumps(value)[:80]} is not supported by metagen serve (a "
                              f"strategy chooses one completion from its own candidates); leave it out",
                              param=field, code="unsupported_parameter")
    if request.n not in (None, 1):
        raise bad_request(f"n = {request.n}: metagen serve returns one chosen completion per prompt; set how "
                          f"many candidates the strategy draws with \"metagen\": {{\"strategy\": {{\"n\": "
                          f"{request.n}}}}} instead", param="n", code="unsupported_parameter")
    stops = [request.stop] if isinstance(request.stop, str) else (request.stop or [])
    if len(stops) > 16 or any(not s for s in stops) or sum(map(len, stops)) > 4096:
        raise bad_request("stop takes at most 16 non-empty strings of 4096 characters in all", param="stop")
    return request


def _depth(text: str) -> int:
    """How deep the JSON text's arrays and objects nest (brackets inside strings do not count),
    found without parsing: ``json.loads`` recurses, and 1,000 levels overflow Python's stack."""
    depth = deepest = 0
    for token in _STRUCTURE.findall(text):
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
    return deepest


def _validation_error(exc: ValidationError) -> APIError:
    error = exc.errors()[0]
    param = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        message = f"unknown field {param!r}; metagen serve takes OpenAI's fields and a \"metagen\" object"
    else:
        given = error.get("input")
        shown = json.dumps(given, default=repr)[:80] if error["type"] != "missing" else None
        message = f"{param}: {error['msg']}" + (f" (got {shown})" if shown is not None else "")
    more = len(exc.errors()) - 1
    return bad_request(message + (f"; and {more} more problem(s)" if more else ""), param=param or None)
