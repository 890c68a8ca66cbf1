"""Method registry: a decorator, lazy discovery, and helpful errors.

Built-in methods live in the ``methods`` package and register when imported. Third-party
methods register the same way from their own package, found through the entry-point group
``vl_bench.methods`` (each entry point names a module to import) or ``--plugin some.module``.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import pkgutil
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import TypeVar

from bench.core.config import check_path_name
from bench.core.errors import UserError
from bench.methods_api import Method, MethodKind

ENTRY_POINT_GROUP = "vl_bench.methods"
_KINDS = ("coreset", "distillation", "reference")
_REGISTRY: dict[str, type[Method]] = {}
#: What an unknown method name is told besides any close match: a method of a plugin file is
#: registered only once that file is given (a close built-in name may be a coincidence).
PLUGIN_HINT = "defined in a plugin? pass --plugin FILE"
_discovered = False
_discovering = False

M = TypeVar("M", bound=type[Method])


class UnknownMethodError(KeyError):
    def __str__(self) -> str:  # KeyError would print the repr with quotes
        return str(self.args[0])


class PluginError(UserError, ImportError):
    """A plugin that cannot be imported or registered; the message names the plugin."""


def _origin(cls: type) -> str:
    """``Class in file`` (or ``module.Class``), so a collision names both files involved."""
    file = getattr(sys.modules.get(cls.__module__), "__file__", None)
    return f"{cls.__qualname__} in {file}" if file else f"{cls.__module__}.{cls.__qualname__}"


def register(name: str, kind: MethodKind, description: str) -> Callable[[M], M]:
    """Class decorator: ``@register("herding", "coreset", "greedy mean matching")``."""
    if kind not in _KINDS:
        raise ValueError(f"method kind must be one of {_KINDS}, got {kind!r}")
    check_path_name(name, "method name")  # it becomes part of result file names

    def decorate(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"@register({name!r}) must decorate a subclass of bench.methods_api.Method")
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls:
            if (existing.__module__, existing.__qualname__) != (cls.__module__, cls.__qualname__):
                raise ValueError(
                    f"method name {name!r} of {_origin(cls)} is already taken by {_origin(existing)}; "
                    "register the new method under another name")
        cls.name, cls.kind, cls.description = name, kind, description
        _REGISTRY[name] = cls
        return cls

    return decorate


def _import_submodules(package: str) -> None:
    pkg = importlib.import_module(package)
    for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}."):
        importlib.import_module(info.name)


def load_plugins(modules: list[str] | tuple[str, ...] = ()) -> None:
    """Import plugins given on the command line: a module name (``my_pkg.my_method``) or the
    path of a ``.py`` file. They register themselves on import.

    The built-in methods are registered first, so a plugin that reuses a built-in name fails
    while *it* is imported, and the error names the plugin. Any failure of a plugin (missing
    file, syntax error, exception at import, name collision) is a :class:`PluginError`."""
    if modules:
        discover()
    for module in modules:
        try:
            if module.endswith(".py"):
                _import_file(Path(module))
            else:
                importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - whatever broke, the plugin is to blame
            raise PluginError(f"cannot import plugin {module!r}: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    """One line: a syntax error with its file and line, else the exception's own message."""
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} ({exc.filename}, line {exc.lineno})"
    if isinstance(exc, (ImportError, FileNotFoundError, ValueError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _import_file(path: Path) -> None:
    path = path.resolve()
    name = f"vl_bench_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return
    if not path.is_file():
        raise FileNotFoundError(f"no such plugin file: {path}")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except BaseException:
        del sys.modules[name]
        raise


def discover() -> None:
    """Import the built-in methods and every entry-point plugin (once; re-entrant calls from
    a plugin being loaded return at once)."""
    global _discovered, _discovering
    if _discovered or _discovering:
        return
    _discovering = True
    try:
        _import_submodules("methods")
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                ep.load()
            except Exception as exc:  # a broken third-party plugin should say who it is
                raise PluginError(
                    f"plugin entry point {ep.name!r} ({ep.value}) failed to load: {_describe(exc)}") from exc
        _discovered = True
    finally:
        _discovering = False


def get_method(name: str) -> type[Method]:
    discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownMethodError(
            f"unknown method {name!r}{hint} (known: {', '.join(sorted(_REGISTRY))}; "
            f"`python run_bench.py methods` lists them); {PLUGIN_HINT}"
        ) from None


def all_methods() -> dict[str, type[Method]]:
    discover()
    return dict(sorted(_REGISTRY.items()))
