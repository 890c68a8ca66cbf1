"""The one exception family the command line shows as a single line.

A :class:`UserError` is a problem the user can fix without reading our code: a config value,
a data file, a path, a plugin. ``run_bench.py`` prints it as ``error: <message>`` on stderr and
exits with status 2 (``--debug`` shows the traceback); anything else is a bug and keeps its
traceback. Subclasses also derive from the builtin they refine (``ValueError``, ``OSError``,
``ImportError``) so existing ``except`` clauses keep working.
"""

from __future__ import annotations

import re


class UserError(Exception):
    """A problem in what the user gave us; the message alone must say what to fix."""


# Escape sequences (colours, cursor moves: CSI and two-byte ESC forms) and the other control
# characters a terminal would act on; newlines and tabs stay.
_TERMINAL_CODES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f]")


def strip_terminal_codes(text: str) -> str:
    """``text`` without terminal escape sequences or control characters (Ray colours its
    errors; the raw bytes would end up in records, Markdown and LaTeX)."""
    return _TERMINAL_CODES.sub("", text)


def error_text(exc: BaseException) -> str:
    """``<Type>: <message>`` of the error a user should read. A Ray task error stands for its
    cause (``RayTaskError(RuntimeError): ray::_ray_cell() ...`` hides the method's message
    behind Ray's process title), so the cause is shown; terminal codes are removed."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    return strip_terminal_codes(f"{type(exc).__name__}: {exc}")


def one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                     line: str | None = None) -> str:
    """A warning as one console line (``warning: ...``), for :data:`warnings.formatwarning`:
    the default format repeats the source line that issued it, which tells a user nothing."""
    return f"warning: {message}\n"
