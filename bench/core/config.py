"""Configs are data: YAML -> frozen dataclasses, validated strictly.

Every dataclass below is built by :func:`from_dict`, which rejects unknown keys (naming the
full key path and the closest valid key, so a typo such as ``epoch:`` for ``epochs:`` is an
error rather than a silently ignored setting) and checks the type of every value.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

from bench.core.errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A config value or key is invalid; the message names the key path."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a mapping may not give a key twice (PyYAML keeps the
    last value silently: ``budgets:`` twice would run the second list without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given twice: first at line {seen[key]}, again",
                        key_node.start_mark)
                seen[key] = line
            except TypeError:  # an unhashable key: PyYAML's own error follows
                break
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str) -> Any:
    """YAML text -> data, as ``yaml.safe_load`` but refusing a key given twice in one mapping
    and a document nested too deeply to read (both raise :class:`yaml.YAMLError`)."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise yaml.YAMLError("the document is nested too deeply to read") from None


def check_unique(values: Any, key: str) -> None:
    """A list of grid values (budgets, seeds, tried parameter values) gives each value once:
    a repeated value would run (and pool) the same thing twice."""
    values = list(values)
    repeated = [v for i, v in enumerate(values) if v in values[:i]]
    if repeated:
        raise ValueError(f"{key} lists {repeated[0]} more than once ({values}); list each value once")


_PATH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


def check_path_name(value: str, what: str) -> str:
    """``value`` unchanged if it is safe as (part of) a file name, else ``ValueError`` (which
    :func:`from_dict` reports under the key path of the dataclass being built).

    Dataset names and method names/labels become parts of file names (``records/<dataset>__
    <method>__b<budget>__s<seed>.json``, cache files), so they must not be able to name another
    directory ('/', '..'), be hidden, or contain the cell-id separator '__'."""
    if not isinstance(value, str) or not _PATH_NAME.fullmatch(value) or ".." in value or "__" in value:
        raise ValueError(
            f"{what}: {value!r} cannot be used in file names; use 1-100 letters, digits, '.', '_', '-' or '+', "
            "starting with a letter or digit, without '..' or '__'")
    return value


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} does not match {_describe(tp)}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            items = [_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_tp = args[0] if args else Any
            items = [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        ktp, vtp = get_args(tp) or (Any, Any)
        out: dict[Any, Any] = {}
        for k, v in value.items():
            key = _convert_key(k, ktp, where)
            if key in out:
                raise ConfigError(f"{where}: key {k!r} is given twice (as {key!r})")
            out[key] = _convert(v, vtp, f"{where}.{k}")
        return out
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        coerce = getattr(tp, "coerce_config", None)  # e.g. a bare string standing for {name: ...}
        if coerce is not None:
            value = coerce(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML reads "1e-3" (no dot) as a string; accept numeric strings explicitly.
            try:
                number = float(value) if isinstance(value, str) else None
            except ValueError:
                number = None
            if number is None:
                raise ConfigError(f"{where}: expected a number, got {value!r}")
            return _finite(number, where)
        return _finite(float(value), where)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    raise ConfigError(f"{where}: unsupported config type {_describe(tp)}")


def _finite(value: float, where: str) -> float:
    """No config number is meaningful as NaN or infinity (a NaN learning rate loads, then every
    student "diverges"); refuse them where they are written."""
    if not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value}")
    return value


def _convert_key(key: Any, tp: Any, where: str) -> Any:
    """A mapping key. Integer keys may also be written as digit strings ("1000"), which is what
    a ``--set a.1000.b=...`` override and a JSON round trip (:func:`to_dict`) produce."""
    if tp is int and isinstance(key, str) and key.strip().lstrip("-").isdigit():
        return int(key)
    try:
        return _convert(key, tp, where)
    except ConfigError:
        raise ConfigError(f"{where}: key {key!r} is not a valid {_describe(tp)}") from None


def check_keys(cls: type, data: dict[str, Any], where: str = "") -> None:
    """Raise :class:`ConfigError` for the first key of ``data`` that is not an init field of
    dataclass ``cls``, naming its full path and the closest valid keys."""
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), fields, n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        loc = f"{where}.{key}" if where else str(key)
        raise ConfigError(f"unknown config key {loc!r}{hint} (valid keys: {', '.join(sorted(fields))})")


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types are errors."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    check_keys(cls, data, where)
    kwargs = {}
    for name, field in fields.items():
        loc = f"{where}.{name}" if where else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], loc)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required config key {loc!r}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}" if where else str(exc)) from exc


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def to_dict(obj: Any) -> Any:
    """Plain-data view of a config (for hashing and for result records).

    A field declared with ``metadata={"omit_if_default": True}`` is left out while it holds its
    default: a field added after results exist then changes no existing config's hash."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get("omit_if_default") and getattr(obj, f.name) == _default(f))}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def field_values(obj: Any) -> dict[str, Any]:
    """Every field of a dataclass config as plain data, defaults included: what a run uses.
    (:func:`to_dict` leaves out an ``omit_if_default`` field at its default, which a reader of
    its dict would take for None.)"""
    return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: what is wrong, and where."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` (value read as YAML, so numbers and lists work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = parse_yaml(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({yaml_problem(exc)})") from None
    return parts, value


def _override_slot(node: Any, part: str, text: str) -> Any:
    """The key under which ``part`` addresses ``node``: a list index for a list (``datasets.0``),
    else a mapping key, matching an existing integer key for a digit string (``budget_params.1000``)."""
    if isinstance(node, list):
        try:
            index = int(part)
        except ValueError:
            raise ConfigError(f"override {text!r}: {part!r} must be a list index (0..{len(node) - 1})") from None
        if not -len(node) <= index < len(node):
            raise ConfigError(f"override {text!r}: index {index} is out of range (the list has {len(node)} items)")
        return index
    if not isinstance(node, dict):
        raise ConfigError(f"override {text!r}: cannot address {part!r} inside a {type(node).__name__}")
    if part not in node and part.lstrip("-").isdigit() and int(part) in node:
        return int(part)
    return part


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to raw config data; validation happens when it is built.

    ``a.b.c=value`` sets a nested key (creating missing mappings); a number addresses an item
    of a list, e.g. ``datasets.0.karpathy.image_root=/data/flickr30k`` or
    ``methods.4.params.iterations=100``."""
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = data
        for part in parts[:-1]:
            slot = _override_slot(node, part, text)
            nxt = node[slot] if isinstance(node, list) else node.get(slot)
            if nxt is None:
                nxt = node[slot] = {}
            if not isinstance(nxt, (dict, list)):
                raise ConfigError(f"override {text!r}: {part!r} is not a mapping")
            node = nxt
        node[_override_slot(node, parts[-1], text)] = value
    return data


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config {path} is a directory; give a YAML file (e.g. configs/quickstart.yaml)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def stable_hash_config(cfg: Any) -> str:
    """Content hash of a config (dict-order independent)."""
    from bench.core.io import stable_hash

    return stable_hash(to_dict(cfg))


#: Field metadata of a config field that names a file or directory on disk. Such fields are
#: made absolute in the driver (:func:`absolute_paths`) so that a worker of a Ray cluster, whose
#: working directory is not the driver's, reads and writes the same places.
PATH_FIELD = {"path": True}

#: Prefixes of a path field's value that are names, not places (weights shipped in the package).
NON_PATH_PREFIXES = ("package:",)


def absolute_path(value: str | Path, base: Path) -> str:
    """``value`` made absolute against ``base`` (``~`` expanded; symlinks kept as written)."""
    text = str(value)
    if text.startswith(NON_PATH_PREFIXES):
        return text
    path = Path(text).expanduser()
    return str(path if path.is_absolute() else Path(os.path.normpath(base / path)))


def absolute_paths(obj: T, base: Path) -> T:
    """A copy of config ``obj`` in which every field marked :data:`PATH_FIELD` (in nested
    configs, tuples and mappings of configs too) is absolute against ``base``."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {}
        for f in dataclasses.fields(obj):
            if not f.init:
                continue
            value = getattr(obj, f.name)
            if f.metadata.get("path") and isinstance(value, (str, Path)):
                new = absolute_path(value, base)
                new = Path(new) if isinstance(value, Path) else new
            else:
                new = absolute_paths(value, base)
            if new is not value:
                changes[f.name] = new
        return dataclasses.replace(obj, **changes) if changes else obj
    if isinstance(obj, tuple):
        items = tuple(absolute_paths(v, base) for v in obj)
        return obj if all(a is b for a, b in zip(items, obj)) else items  # type: ignore[return-value]
    if isinstance(obj, dict):
        items = {k: absolute_paths(v, base) for k, v in obj.items()}
        return obj if all(items[k] is obj[k] for k in obj) else items  # type: ignore[return-value]
    return obj
