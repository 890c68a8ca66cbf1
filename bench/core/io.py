"""Atomic file writes, cache reads that repair themselves, and content hashing.

Every artifact (caches, result records, buffers) is written to a temporary file in the same
directory and renamed into place, so a crash never leaves a half-written file under the final
name and readers never see a partial result.

Temporary files are named ``.<final name>.<host>~<pid>~<random>.tmp`` and created with mode
0666 minus the umask (as ``open()`` would), so results and caches on a shared filesystem are
as readable as any other file the user writes. The writer's host and pid in the name let a
later writer tell a temp file whose process died (SIGKILL, out of memory) from one that is
still being written, and remove only the former.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.core.errors import UserError

TEMP_GLOB = ".*.tmp"  # the names atomic_path gives its temporary files
_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"  # no "." or "~": they delimit
_OWNER_SEP = "~"


def _temp_name(final: Path) -> str:
    return f".{final.name}.{_HOST}{_OWNER_SEP}{os.getpid()}{_OWNER_SEP}{secrets.token_hex(4)}.tmp"


def _writer_is_dead(temp: Path) -> bool:
    """True when ``temp`` was made by a process of this host that no longer exists.

    Files of other hosts (a shared filesystem) and files without an owner in their name are
    never judged dead here: their writer may be alive elsewhere."""
    owner = temp.name[:-len(".tmp")].rsplit(".", 1)[-1].split(_OWNER_SEP)
    if len(owner) != 3 or owner[0] != _HOST or not owner[1].isdigit():
        return False
    pid = int(owner[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _remove_dead_siblings(final: Path) -> None:
    """Temp files of ``final`` left by a writer that died (e.g. a SIGKILLed worker whose retry
    now writes the same checkpoint): nobody will ever rename them, so they go now."""
    for temp in final.parent.glob(f".{final.name}.*.tmp"):
        if _writer_is_dead(temp):
            temp.unlink(missing_ok=True)


@contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it onto ``final`` only on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_siblings(final)
    while True:
        tmp_path = final.parent / _temp_name(final)
        try:  # 0o666 & ~umask, like any file the user creates (mkstemp would give 0600)
            os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


#: Temp files in a shared cache older than this are a dead writer's even on another host.
SHARED_TEMP_MAX_AGE_S = 3600


def remove_stale_temp_files(root: str | os.PathLike[str], older_than_s: float = 0.0) -> list[Path]:
    """Delete temporary files that a killed writer left under ``root``: those whose writer
    process on this host is gone, and any not modified for ``older_than_s`` seconds (so a live
    writer elsewhere keeps its file when a threshold is given)."""
    root = Path(root)
    if not root.is_dir():
        return []
    now = time.time()
    removed = []
    for path in root.rglob(TEMP_GLOB):
        try:
            if path.is_file() and (_writer_is_dead(path) or now - path.stat().st_mtime >= older_than_s):
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # its writer finished (renamed it) meanwhile
            continue
    return removed


def write_atomic(final: str | os.PathLike[str], writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``final`` atomically."""
    with atomic_path(final) as tmp:
        writer(tmp)
    return Path(final)


def write_text_atomic(final: str | os.PathLike[str], text: str) -> Path:
    return write_atomic(final, lambda p: p.write_text(text, encoding="utf-8"))


def write_json_atomic(final: str | os.PathLike[str], obj: Any) -> Path:
    return write_text_atomic(final, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def torch_save_atomic(final: str | os.PathLike[str], obj: Any) -> Path:
    import torch  # here, so modules that only write JSON (records, reports) stay light

    return write_atomic(final, lambda p: torch.save(obj, p))


def discard_corrupt(path: str | os.PathLike[str], what: str, reason: str) -> None:
    """Warn that the cache file ``path`` is unusable (naming it and why) and delete it, so the
    caller rebuilds it instead of failing on it on every run."""
    warnings.warn(f"{what} {path} is unusable ({reason}); removing it and rebuilding it", stacklevel=3)
    Path(path).unlink(missing_ok=True)


def load_torch_or_none(path: str | os.PathLike[str], what: str, weights_only: bool = False,
                       check: Callable[[Any], str | None] | None = None) -> Any | None:
    """The object saved at ``path``, or None when there is none or it is unusable.

    A file that ``torch.load`` cannot read (truncated, not a torch file) or that ``check``
    rejects (``check(obj)`` returns a reason) is reported with :func:`discard_corrupt` and
    deleted: the caller recomputes it. ``what`` names the artifact in the warning, e.g.
    ``"distillation checkpoint"``."""
    import torch

    path = Path(path)
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is rebuilt, never trusted
        discard_corrupt(path, what, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return None
    reason = check(obj) if check is not None else None
    if reason is not None:
        discard_corrupt(path, what, reason)
        return None
    return obj


class UnusableDirectoryError(UserError, OSError):
    """A directory the run must write to cannot be used (the message says which and why)."""


#: A directory with less free space than this is reported before any work starts.
MIN_FREE_BYTES = 16 * 2**20


def check_writable_dir(path: str | os.PathLike[str], what: str, min_free: int = MIN_FREE_BYTES) -> Path:
    """Create ``path`` if needed and prove it takes a file, before any compute depends on it.

    Raises :class:`UnusableDirectoryError` (one line: ``what``, the path and the reason) for
    a path that is a file, a directory that cannot be created or written (read-only, no
    permission) and a filesystem with less than ``min_free`` bytes free."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UnusableDirectoryError(f"{what} {path} is a file, not a directory")
    created = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = write_text_atomic(path / f".write-probe-{_HOST}-{os.getpid()}", "ok")
        probe.unlink()
        free = shutil.disk_usage(path).free
    except OSError as exc:
        reason = {errno.ENOSPC: "the disk is full", errno.EROFS: "read-only filesystem",
                  errno.EACCES: "permission denied", errno.ENOTDIR: "a parent is a file"}.get(
            exc.errno or 0, exc.strerror or str(exc))
        raise UnusableDirectoryError(f"{what} {path} cannot be written: {reason}") from None
    finally:  # a check leaves nothing behind: what it created goes (writers create it again)
        for directory in created:
            try:
                directory.rmdir()
            except OSError:
                break
    if free < min_free:
        raise UnusableDirectoryError(
            f"{what} {path} has only {free / 2**20:.1f} MiB free (need at least {min_free / 2**20:.0f} MiB)")
    return path


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-serialisable object that does not depend on dict order."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def bytes_hash(*chunks: bytes, length: int = 16) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(len(chunk).to_bytes(8, "little"))
        h.update(chunk)
    return h.hexdigest()[:length]
