"""Rich progress bars that switch off cleanly (tests, non-interactive workers), and the plain
lines a log file gets instead (:class:`TaskLines`)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")


def make_progress(transient: bool = False, disable: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=transient,
        disable=disable,
    )


def track(items: Iterable[T], description: str, enabled: bool = True, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar when enabled, plainly otherwise."""
    if not enabled:
        yield from items
        return
    if total is None and isinstance(items, Sized):
        total = len(items)
    with make_progress(transient=True) as progress:
        task = progress.add_task(description, total=total, status="")
        for item in items:
            yield item
            progress.advance(task)


def interactive() -> bool:
    """Whether stdout is a terminal. A bar redrawn in place is for a person watching; written
    to a file or a pipe it shows nothing until it ends (then blank lines and its last state)."""
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


class TaskLines:
    """One line per task started and ended, with its elapsed time, flushed at once: what a run
    prints instead of progress bars when stdout is a log file (or with ``--no-progress``), so
    that the log says what runs now and how long each task took::

        start expert 0 of embedded
        done  expert 0 of embedded in 21.5 s
        failed cell <cell id> after <seconds> s: <the error's first line>

    Lines go to the ``sys.stdout`` of the moment they are printed."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._started: dict[str, float] = {}

    def say(self, text: str) -> None:
        print(text, file=sys.stdout, flush=True)

    def start(self, name: str) -> None:
        self._started[name] = self._clock()
        self.say(f"start {name}")

    def end(self, name: str, error: str | None = None, suffix: str = "") -> None:
        """``name`` ended: done when ``error`` is None, else failed with its first line. A task
        that never started (an input it needs failed) says so instead of a time."""
        began = self._started.pop(name, None)
        took = None if began is None else f"{self._clock() - began:.1f} s"
        if error is None:
            self.say(f"done  {name}" + (f" in {took}" if took else "") + suffix)
            return
        first = error.strip().splitlines()[0] if error.strip() else "failed"
        when = f"after {took}" if took else "(not started)"
        self.say(f"failed {name} {when}: {first}{suffix}")
