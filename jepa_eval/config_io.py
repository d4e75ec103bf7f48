"""The one validation path for what users type: YAML files, dict-to-dataclass loading and CLI numbers.

Batteries, task parameters, pretraining configs, decoder configs and timm spec values all go through
``from_dict``: unknown keys and wrong types are refused with one line naming the key and the file,
numbers like ``1e-3`` are numbers, booleans are never taken as integers. Ranges stay next to each
config's definition, in a ``validate() -> str | None`` method that ``from_dict`` calls."""
from __future__ import annotations

import argparse
import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from .errors import UserError, did_you_mean


class YamlLoader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; configs are full of such rates, so read them as floats."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_yaml_text(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=YamlLoader)
    except yaml.YAMLError as e:
        raise UserError(f"{where} is not valid YAML: {' '.join(str(e).split())}") from None


def read_yaml(path: str | Path, what: str = "config") -> Any:
    """A YAML file with the float resolver; unreadable or invalid files are one-line user errors."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {what} {path}: {getattr(e, 'strerror', None) or e}") from None
    return load_yaml_text(text, f"{what} {path}")


def parse_scalar(text: str) -> Any:
    """A command-line value (``img_size=16``, ``drop_rate=1e-1``, ``qkv_bias=false``) read as YAML."""
    try:
        value = yaml.load(text, Loader=YamlLoader)
    except yaml.YAMLError:
        return text
    return text if isinstance(value, (dict, list)) or value is None else value


# ---------------------------------------------------------------- types
def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) is typing.Union or isinstance(hint, types.UnionType)


def type_ok(value: Any, hint: Any) -> bool:
    """Whether ``value`` (as read from YAML) fits the annotation ``hint``. Booleans are not numbers."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if _is_union(hint):
        return any(type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin in (list, tuple):
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:   # fixed length, e.g. tuple[float, float]
            return len(value) == len(args) and all(type_ok(v, h) for v, h in zip(value, args))
        inner = args[0] if args else Any
        return all(type_ok(v, inner) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if dataclasses.is_dataclass(hint):   # a section; an empty one (``meta:``) keeps its defaults
        return value is None or isinstance(value, (dict, hint))
    return isinstance(value, hint)


def type_name(hint: Any) -> str:
    if _is_union(hint):
        return " or ".join(type_name(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) in (list, tuple):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        plural = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}
        fixed = typing.get_origin(hint) is tuple and args and len(typing.get_args(hint)) == len(args)
        inner = plural.get(args[0], "values") if args else "values"
        return f"a list of {len(args)} {inner}" if fixed else f"a list of {inner}"
    if dataclasses.is_dataclass(hint):
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint)))


def _convert(value: Any, hint: Any, key: str, where: str, what: str = "key") -> Any:
    """YAML lists -> tuples for tuple fields, ints -> floats for float fields, mappings -> nested dataclasses."""
    if _is_union(hint):
        for h in typing.get_args(hint):
            if type_ok(value, h):
                return _convert(value, h, key, where, what)
        return value
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and (value is None or isinstance(value, dict)):
        return from_dict(hint, value or {}, where, prefix=f"{key}.", what=what)
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(hint)
        inner = list(args) if args and args[-1] is not Ellipsis else [args[0] if args else Any] * len(value)
        return tuple(_convert(v, h, key, where) for v, h in zip(value, inner))
    if origin is list and isinstance(value, (list, tuple)):
        inner = (typing.get_args(hint) or (Any,))[0]
        return [_convert(v, inner, key, where) for v in value]
    if hint is float and isinstance(value, int):
        return float(value)
    return value


def from_dict(cls: type, values: Any, where: str, prefix: str = "", skip: Iterable[str] = (),
              what: str = "key") -> Any:
    """``cls(**values)`` for a dataclass, refusing unknown keys and wrong types with one line that names
    ``prefix + key`` and ``where`` (the file); then ``validate()`` (ranges) when the class has one.
    ``skip``: fields that are not given here (e.g. a seed set elsewhere)."""
    if isinstance(values, cls):
        return values
    if not isinstance(values, dict):
        name = prefix.rstrip(".") or "the config"
        raise UserError(f"{where}: '{name}' must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in set(skip) and f.init}
    unknown = [k for k in values if k not in fields]
    if unknown:
        key = str(unknown[0])
        raise UserError(f"{where}: unknown {what} '{prefix}{key}'{did_you_mean(key, fields)}; "
                        f"known: {', '.join(fields) or 'none'}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        hint = hints[key]
        if not type_ok(value, hint):
            raise UserError(f"{where}: {what} '{prefix}{key}' must be {type_name(hint)}, got {value!r}")
        kwargs[key] = _convert(value, hint, f"{prefix}{key}", where, what)
    try:
        obj = cls(**kwargs)
    except UserError as e:   # a check in __post_init__: give it the file and the section
        raise UserError(f"{where}: {prefix.rstrip('.') + ': ' if prefix else ''}{e}") from None
    problem = obj.validate() if hasattr(obj, "validate") else None
    if problem:
        raise UserError(f"{where}: {prefix.rstrip('.') + ': ' if prefix else ''}{problem}")
    return obj


# ---------------------------------------------------------------- command-line numbers
def _number(kind: type, test: Callable[[float], bool], what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got '{text}'") from None
        if not math.isfinite(value) or not test(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got '{text}'")
        return value
    parse.__name__ = what  # argparse names the type in its messages
    return parse


positive_int = _number(int, lambda v: v > 0, "a positive integer")
nonnegative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: v > 0, "a positive number")
nonnegative_float = _number(float, lambda v: v >= 0, "a number >= 0")
any_int = _number(int, lambda v: True, "an integer")
