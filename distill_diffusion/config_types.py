"""Typed dataclasses from plain data (YAML values or command-line strings), with one-line errors.

The generic half of :mod:`distill_diffusion.config`: it converts each value to its field's annotation
(numbers, bools, lists, ``Literal`` choices, optional values, nested dataclasses), refuses unknown
names with the list of valid ones, and reads each field's help from the ``#:`` comment above it (the
Sphinx attribute-doc convention), so option help is written once, next to the field.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from distill_diffusion.errors import UserError, require


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """Each field's resolved annotation (string annotations evaluated once per class)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


@functools.cache
def field_help(cls: type) -> dict[str, str]:
    """The first sentence of the ``#:`` comment above each field of ``cls`` and of the dataclasses it extends, by
    field name (``--help`` shows it)."""
    helps: dict[str, str] = {}
    for base in reversed(cls.__mro__[1:]):
        if dataclasses.is_dataclass(base):
            helps.update(field_help(base))
    return {**helps, **_own_field_help(cls)}


def _own_field_help(cls: type) -> dict[str, str]:
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):  # no source (e.g. a class made at run time)
        return {}
    helps: dict[str, str] = {}
    comment: list[str] = []
    for line in lines:
        text = line.strip()
        if text.startswith("#:"):
            comment.append(text[2:].strip())
            continue
        match = re.match(r"(\w+)\s*:", text)
        if match and comment:
            text = " ".join(comment)
            first = re.match(r"(.+?\.)\s+(?=[A-Z])", text)
            helps.setdefault(match.group(1), first.group(1) if first else text)
        comment = []
    return helps


def choices(tp: Any) -> tuple[Any, ...] | None:
    """The values of a ``Literal[...]`` annotation (also inside ``X | None``); None for other types."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [choices(a) for a in typing.get_args(tp)]
        return next((c for c in inner if c), None)
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def check_choices(obj: Any, section: str) -> None:
    """Every ``Literal`` field of ``obj`` holds one of its values (for sections built directly, not parsed)."""
    for name, tp in field_types(type(obj)).items():
        valid = choices(tp)
        value = getattr(obj, name)
        if valid and value is not None:
            require(value in valid, _choice_error(f"{section}.{name}", value, valid))


def _choice_error(name: str, value: Any, valid: Sequence[Any]) -> str:
    return f"{name}={value!r} is not valid; use one of: {', '.join(map(str, valid))}"


def _split_list(name: str, value: str) -> list[Any]:
    """A list option given as one string: a JSON list (``'["a, b", "c"]'``, items may hold commas) or comma-separated."""
    if value.lstrip().startswith("["):
        try:
            items = json.loads(value)
        except json.JSONDecodeError as exc:
            raise UserError(f"{name}={value!r} is not a valid JSON list ({exc.msg}); write e.g. '[\"a, b\", \"c\"]'") from None
        require(isinstance(items, list), f"{name}={value!r} must be a JSON list; write e.g. '[\"a\", \"b\"]'")
        return items
    return [v for v in value.split(",") if v]


def _number(name: str, value: Any, tp: type) -> int | float:
    """``value`` as a finite int or float; NaN and infinities are refused for every numeric option."""
    require(not isinstance(value, (bool, list, dict)), f"{name}={value!r} must be a {tp.__name__}; pass a single number")
    try:
        if isinstance(value, str):
            text = value.strip()
            number: float = float(text) if tp is float else _parse_int(text)
        else:
            number = float(value) if tp is float else value
    except (TypeError, ValueError):
        raise UserError(f"{name}={value!r} is not a number; pass a {tp.__name__}") from None
    require(isinstance(number, (int, float)), f"{name}={value!r} must be a {tp.__name__}; pass a single number")
    require(math.isfinite(number), f"{name}={value!r} is not a finite number; pass a finite {tp.__name__}")
    if tp is int:
        require(float(number) == int(number), f"{name}={value!r} must be a whole number; pass e.g. {round(number)}")
        return int(number)
    return float(number)


def _parse_int(text: str) -> int | float:
    """``"12"``, ``"0x10"``, and also ``"1e3"`` or ``"2.0"`` (checked to be whole by the caller)."""
    try:
        return int(text, 0)
    except ValueError:
        return float(text)


def _literal(name: str, value: Any, valid: tuple[Any, ...]) -> Any:
    """The one of ``valid`` that ``value`` names (``"1"`` matches ``Literal[1]``); else the list of valid values."""
    for choice in valid:
        try:
            if convert(name, value, type(choice)) == choice:
                return choice
        except UserError:
            continue
    raise UserError(_choice_error(name, value, valid))


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    require(text in ("true", "false", "1", "0", "yes", "no"), f"{name}={value!r} must be true or false; write true or false")
    return text in ("true", "1", "yes")


def convert(name: str, value: Any, tp: Any) -> Any:
    """Convert ``value`` (from YAML or a command-line string) to the annotated type ``tp``; ``name`` is for errors."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            require(type(None) in args, f"{name} may not be empty; give a value")
            return None
        return convert(name, value, next(a for a in args if a is not type(None)))
    if origin is Literal:
        return _literal(name, value, args)
    if origin in (list, Sequence):
        if isinstance(value, str):
            value = _split_list(name, value)
        require(isinstance(value, (list, tuple)), f"{name}={value!r} must be a list; write a YAML list, or a,b or '[\"a\", \"b\"]' on the command line")
        return [convert(name, v, args[0] if args else str) for v in value]
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        require(isinstance(value, Mapping), f"{name}={value!r} must be a mapping; write '{name.rsplit('.', 1)[-1]}:' "
                f"with indented 'option: value' lines, or --{name}.OPTION VALUE")
        return build_dataclass(tp, value, name)
    if tp is bool:
        return _bool(name, value)
    if tp in (int, float):
        return _number(name, value, tp)
    if tp is str:
        require(not isinstance(value, (list, dict)), f"{name}={value!r} must be a string; write plain text")
        return str(value)
    return value


def build_dataclass(cls: type, data: Mapping[str, Any] | None, section: str) -> Any:
    """Instantiate ``cls`` from ``data``; unknown keys fail with the list of valid ones."""
    data = dict(data or {})
    for key in data:
        require(isinstance(key, str), f"{section} option name {key!r} is not a name; write options as name: value")
    types_ = field_types(cls)
    unknown = sorted(set(data) - set(types_))
    require(not unknown, f"unknown {section} option(s) {', '.join(unknown)}; valid ones: {', '.join(sorted(types_))}")
    return cls(**{k: convert(f"{section}.{k}", v, types_[k]) for k, v in data.items()})


@dataclasses.dataclass(frozen=True)
class RenamedOption:
    """A former option name still read from configs and saved runs (``renamed_options`` of a config dataclass, keyed by the
    former name): the option it became, and how a former value becomes a value of it."""

    new: str
    upgrade: Callable[[Any], Any]
    #: How the two relate, for the warning and the error (``guidance_scale = w + 1``).
    relation: str


def read_renamed(cls: type, data: Mapping[str, Any], section: str, warn: bool = True) -> dict[str, Any]:
    """``data`` with the former option names of ``cls`` replaced by the new ones, each value converted once (with ``warn``,
    one warning line per name); a former and a new name both given is a :class:`UserError`."""
    renamed: Mapping[str, RenamedOption] = getattr(cls, "renamed_options", {})
    out = dict(data)
    for old, option in renamed.items():
        require(old not in out or option.new not in out, f"{section}.{old} and {section}.{option.new} are both given "
                f"({option.relation}); keep only {section}.{option.new}")
    for old, option in renamed.items():
        if old in out:
            value = option.upgrade(convert(f"{section}.{old}", out.pop(old), field_types(cls)[option.new]))
            out[option.new] = value
            if warn:
                print(f"warning: {section}.{old} is deprecated; read as {section}.{option.new} {value} ({option.relation}); "
                      f"write {option.new}: {value} instead", file=sys.stderr)
    return out


def renamed_overrides(cls: type, overrides: Sequence[tuple[str, Any]], section: str) -> list[tuple[str, Any]]:
    """Command-line overrides with the former option names of ``cls`` (``--section.old`` or a bare ``--old``) replaced
    by the new ones (:func:`read_renamed`); the others unchanged."""
    renamed: Mapping[str, RenamedOption] = getattr(cls, "renamed_options", {})
    names = {*renamed, *(option.new for option in renamed.values())}
    ours = {key.removeprefix(f"{section}."): value for key, value in overrides if key.removeprefix(f"{section}.") in names}
    rest = [(key, value) for key, value in overrides if key.removeprefix(f"{section}.") not in names]
    return rest + [(f"{section}.{name}", value) for name, value in read_renamed(cls, ours, section).items()]


def public_dict(obj: Any) -> dict[str, Any]:
    """``dataclasses.asdict(obj)`` without its secret fields (``metadata={"secret": True}``, e.g. a Hub token):
    what may be saved to a file or sent to a tracker."""
    secret = {f.name for f in dataclasses.fields(obj) if f.metadata.get("secret")}
    return {k: v for k, v in dataclasses.asdict(obj).items() if k not in secret}


def set_dotted(data: dict[str, Any], path: str, value: Any, flag: str) -> None:
    """``data["a"]["b"] = value`` for ``path`` ``"a.b"`` (a nested option), creating the inner mappings."""
    *outer, last = path.split(".")
    for key in outer:
        inner = data.setdefault(key, {})
        require(isinstance(inner, dict), f"--{flag}: {key} holds {inner!r}, not options; drop the .{last} part")
        data = inner
    data[last] = value
