"""Settings as typed dataclasses: build one from a JSON-like dict, checking names, types and ranges, with one-line
errors that name the setting (``where.key``) and say what it expects."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from unireplknet.errors import UserError

T = TypeVar("T")


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"a list (each {_describe(args[0])})" if args else "a list"
    if origin is dict:
        return "an object"
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    return {type(None): "null", bool: "true/false", int: "a whole number", float: "a number", str: "a string",
            Any: "any value"}.get(tp, getattr(tp, "__name__", str(tp)))


def convert(value: Any, tp: Any, name: str) -> Any:
    """``value`` as type ``tp`` (JSON numbers, lists and objects; ints pass as floats); a UserError otherwise."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return convert(value, arg, name)
            except UserError:
                continue
    elif origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
    elif origin in (list, tuple) and isinstance(value, (list, tuple)):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        items = [convert(v, args[0], f"{name}[{i}]") for i, v in enumerate(value)] if args else list(value)
        return items if origin is list else tuple(items)
    elif origin is dict and isinstance(value, Mapping):
        return dict(value)
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise UserError(f"setting {name} must be {_describe(tp)}, got {value!r}")


def from_dict(cls: type[T], values: Mapping[str, Any], where: str) -> T:
    """``cls(**values)`` with every value checked against the field's annotation; unknown names are refused.
    ``where`` prefixes the names in messages (e.g. ``task_args``). The dataclass's ``__post_init__`` may raise
    ``ValueError`` for out-of-range values: it becomes a one-line UserError."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise UserError(f"unknown {where} key(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}")
    prefix = f"{where}." if where else ""
    kwargs = {k: convert(v, hints[k], prefix + k) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise UserError(f"bad {where or 'setting'}: {err}") from None


def check(conditions: list[tuple[bool, str]]) -> None:
    """Raise ``ValueError`` with the message of the first condition that does not hold (for ``__post_init__``)."""
    for ok, message in conditions:
        if not ok:
            raise ValueError(message)
