"""The one exception family the command line shows as a single line.

A :class:`UserError` is a problem the user can fix without reading our code: a config value,
a data file, a path, a plugin. ``run_bench.py`` prints it as ``error: <message>`` on stderr and
exits with status 2 (``--debug`` shows the traceback); anything else is a bug and keeps its
traceback. Subclasses also derive from the builtin they refine (``ValueError``, ``OSError``,
``ImportError``) so existing ``except`` clauses keep working.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem in what the user gave us; the message alone must say what to fix."""
