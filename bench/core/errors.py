"""The one exception family the command line shows as a single line.

A :class:`UserError` is a problem the user can fix without reading our code: a config value,
a data file, a path, a plugin. ``run_bench.py`` prints it as ``error: <message>`` on stderr and
exits with status 2 (``--debug`` shows the traceback); anything else is a bug and keeps its
traceback. Subclasses also derive from the builtin they refine (``ValueError``, ``OSError``,
``ImportError``) so existing ``except`` clauses keep working.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


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


_SHOWN: set[str] = set()  # warning texts this process has shown


def show_warning_once(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: TextIO | None = None, line: str | None = None) -> None:
    """Show a warning as a console line, ``warning: <message>``, the first time its text comes
    up in this process (for :data:`warnings.showwarning`). The default format adds the source
    line that issued it, which tells a user nothing, and Python's once-per-location rule does
    not hold across cells: every ``warnings.catch_warnings`` or ``filterwarnings`` call (torch
    makes them) resets it, so the same warning printed again for every cell."""
    text = str(message)
    if text in _SHOWN:
        return
    _SHOWN.add(text)
    try:
        print(f"warning: {text}", file=file or sys.stderr)
    except OSError:  # a closed stderr: nothing to show it on
        pass


def console_warnings_setup() -> None:
    """Warnings as a console shows them, for the rest of this process (a Ray task)."""
    warnings.showwarning = show_warning_once


@contextmanager
def console_warnings() -> Iterator[None]:
    """Warnings as a console shows them (:func:`show_warning_once`) for the duration: the
    command line; the previous behaviour is restored after."""
    with warnings.catch_warnings():
        console_warnings_setup()
        yield
