"""A factory's signature is its parameter schema: names, defaults and annotated types."""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable

from metagen_hooks import CONTEXT_PARAMETERS

_MISSING = inspect.Parameter.empty


@dataclass(frozen=True)
class Param:
    name: str
    annotation: Any  # a type, a typing construct, or _MISSING
    default: Any  # _MISSING when required

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    def describe(self) -> str:
        kind = type_name(self.annotation)
        if self.required:
            return f"{self.name}: {kind} (required)"
        return f"{self.name}: {kind} = {self.default!r}"


@dataclass(frozen=True)
class Schema:
    params: dict[str, Param]
    context: tuple[str, ...]  # context parameters the factory asks the host for
    accepts_any: bool  # the factory takes **kwargs
    registry: bool = False  # the factory takes ``registry`` (the core fills it, to build nested components)


def schema_of(factory: Callable[..., Any]) -> Schema:
    target = factory.__init__ if inspect.isclass(factory) else factory
    signature = inspect.signature(factory)
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable string annotations: treat as untyped
        hints = {}
    params: dict[str, Param] = {}
    context: list[str] = []
    accepts_any = False
    registry = False
    for p in signature.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            accepts_any = True
            continue
        if p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY):
            continue
        if p.name == "registry":
            registry = True
            continue
        if p.name in CONTEXT_PARAMETERS:
            context.append(p.name)
            continue
        params[p.name] = Param(p.name, hints.get(p.name, p.annotation), p.default)
    return Schema(params, tuple(context), accepts_any, registry)


def type_name(annotation: Any) -> str:
    if annotation is _MISSING or annotation is Any:
        return "any"
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def conforms(value: Any, annotation: Any) -> bool:
    """Whether a configuration value (TOML/JSON data) fits an annotation."""
    if annotation is _MISSING or annotation is Any:
        return True
    if annotation is type(None) or annotation is None:
        return value is None
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, a) for a in args)
    if origin in (list, tuple, typing.Sequence, typing.List):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(args) == len(value) and all(conforms(v, a) for v, a in zip(value, args))
        item = args[0] if args else _MISSING
        return all(conforms(v, item) for v in value)
    if origin in (dict, typing.Mapping):
        if not isinstance(value, dict):
            return False
        if len(args) == 2:
            return all(conforms(k, args[0]) and conforms(v, args[1]) for k, v in value.items())
        return True
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True  # an annotation we cannot check is not a reason to refuse
