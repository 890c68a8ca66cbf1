"""``run_bench.py methods NAME``: what a method is and what it takes, read from its class.

A method describes itself through the plugin face: its registration (name, kind,
description), the frozen dataclass of its parameters (``Params``: every field with its type
and default, the values a grid's ``params:`` may set) and, where the class declares them, the
search spaces ``run_bench.py tune`` explores (``default_search``: parameter -> list of values
or ``{low, high, log, int}``; ``default_budget_search``: the same per budget, or keyed as the
class chooses). Nothing here runs the method or imports its machinery beyond its module.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import textwrap
import types
import typing
from collections.abc import Mapping
from typing import Any

from bench.methods_api import Method

#: The class attributes holding a method's search spaces, with their headings.
SEARCH_ATTRIBUTES = (("default_search", "search space (default_search)"),
                     ("default_budget_search", "search space per budget (default_budget_search)"))


def type_text(tp: Any) -> str:
    """A parameter's type as a grid author reads it: ``int | None``, ``'wbce' | 'infonce'``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "None"
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(a) for a in args)
    if origin is not None and args:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join('...' if a is Ellipsis else type_text(a) for a in args)}]"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return repr(field.default)
    if field.default_factory is not dataclasses.MISSING:
        return repr(field.default_factory())
    return "(required)"


def parameters(params_cls: type) -> list[tuple[str, str, str]]:
    """(name, type, default) of every field of a method's ``Params`` dataclass, in order."""
    if not dataclasses.is_dataclass(params_cls):
        return []
    try:  # each field's annotation resolved in the module of the class that declares it
        hints = typing.get_type_hints(params_cls)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve: show it as written
        hints = {}
    return [(f.name, type_text(hints[f.name]) if f.name in hints else str(f.type), _default(f))
            for f in dataclasses.fields(params_cls) if f.init]


def _range_text(space: Mapping[str, Any]) -> str:
    """``{low, high, log, int}`` as ``1e-05 .. 0.1 (log scale, integers)``."""
    notes = [note for key, note in (("log", "log scale"), ("int", "integers")) if space.get(key)]
    return f"{space.get('low')!r} .. {space.get('high')!r}" + (f" ({', '.join(notes)})" if notes else "")


def search_lines(space: Any, indent: str = "  ") -> list[str]:
    """A search space, one line per parameter: values listed, ranges as ``low .. high``; a
    nested mapping (e.g. per budget) indents its entries under their key."""
    if not isinstance(space, Mapping):
        return [f"{indent}{space!r}"]
    lines = []
    for key, value in space.items():
        if isinstance(value, Mapping) and ("low" in value or "high" in value):
            lines.append(f"{indent}{key}: {_range_text(value)}")
        elif isinstance(value, Mapping):
            lines += [f"{indent}{key}:", *search_lines(value, indent + "  ")]
        elif isinstance(value, (list, tuple)):
            lines.append(f"{indent}{key}: {', '.join(repr(v) for v in value)}")
        else:
            lines.append(f"{indent}{key}: {value!r}")
    return lines


def _first_paragraph(doc: str | None) -> str:
    text = inspect.cleandoc(doc or "")
    return " ".join(text.split("\n\n")[0].split())


def describe(cls: type[Method]) -> list[str]:
    """The lines ``methods NAME`` prints for ``cls``."""
    module = sys.modules.get(cls.__module__)
    where = getattr(module, "__file__", None) or cls.__module__
    uses = [what for flag, what in ((cls.uses_proxy, "the proxy run"), (cls.uses_experts, "expert trajectories"))
            if flag]
    lines = [f"{cls.name} ({cls.kind}): {cls.description}",
             f"  class {cls.__module__}.{cls.__qualname__} in {where}",
             f"  reads: {', '.join(uses) if uses else 'the training pairs only'}"]
    rows = parameters(cls.Params)
    params_name = getattr(cls.Params, "__qualname__", str(cls.Params))
    if not rows:
        lines += ["", f"parameters ({params_name}): none"]
    else:
        summary = _first_paragraph(cls.Params.__doc__)
        lines += ["", f"parameters ({params_name}; a grid sets them under the method's params:)"]
        lines += textwrap.wrap(summary, 100, initial_indent="  ", subsequent_indent="  ")
        widths = [max(len(r[i]) for r in [("name", "type", "default"), *rows]) for i in range(2)]
        lines.append(f"  {'name':<{widths[0]}}  {'type':<{widths[1]}}  default")
        lines += [f"  {name:<{widths[0]}}  {kind:<{widths[1]}}  {default}" for name, kind, default in rows]
    for attribute, heading in SEARCH_ATTRIBUTES:
        space = getattr(cls, attribute, None)
        lines += ["", f"{heading}:" if space else f"{heading}: none declared"]
        if space:
            lines += search_lines(space)
    return lines
