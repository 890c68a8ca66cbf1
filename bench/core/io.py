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
import math
import os
import re
import secrets
import shutil
import socket
import stat
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


def _process_is_gone(host: str, pid: int) -> bool:
    """True when process ``pid`` of ``host`` is known not to exist: only a process of this host
    can be judged (another host's may be alive), and never this process itself."""
    if host != _HOST or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _writer_is_dead(temp: Path) -> bool:
    """True when ``temp`` was made by a process of this host that no longer exists.

    Files of other hosts (a shared filesystem) and files without an owner in their name are
    never judged dead here: their writer may be alive elsewhere."""
    owner = temp.name[:-len(".tmp")].rsplit(".", 1)[-1].split(_OWNER_SEP)
    if len(owner) != 3 or not owner[1].isdigit():
        return False
    return _process_is_gone(owner[0], int(owner[1]))


def _remove_dead_siblings(final: Path) -> None:
    """Temp files of ``final`` left by a writer that died (e.g. a SIGKILLed worker whose retry
    now writes the same checkpoint): nobody will ever rename them, so they go now."""
    for temp in final.parent.glob(f".{final.name}.*.tmp"):
        if _writer_is_dead(temp):
            temp.unlink(missing_ok=True)


@contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it onto ``final`` only on success.

    The file keeps the mode it was created with (0666 minus the umask) even when the writer
    replaces it (safetensors writes a new file of mode 0600). A write that fails because the
    disk is full raises :class:`DiskFullError`, one the filesystem refuses (a directory in the
    way, a parent that is a file, no permission, read-only) :class:`UnwritableFileError`; both
    name ``final``, whatever the writer raised. A symbolic link is written through (the file it
    names is replaced, the link stays); a destination that is no regular file (a FIFO, a
    device) is refused (:func:`write_destination`)."""
    final = write_destination(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UnwritableFileError(f"cannot write {final}: {os_error_reason(exc)}") from exc
    _remove_dead_siblings(final)
    while True:
        tmp_path = final.parent / _temp_name(final)
        try:  # 0o666 & ~umask, like any file the user creates (mkstemp would give 0600)
            os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue
        except OSError as exc:
            raise (disk_full_error(exc, final) or UnwritableFileError(
                f"cannot write {final}: {os_error_reason(exc)}")) from exc
    mode = tmp_path.stat().st_mode & 0o777
    try:
        yield tmp_path
        if tmp_path.stat().st_mode & 0o777 != mode:
            os.chmod(tmp_path, mode)
        os.replace(tmp_path, final)
    except Exception as exc:
        full = disk_full_error(exc, final)  # judged before the temp file goes and frees its space
        if full is not None:
            raise full from exc
        if isinstance(exc, OSError) and not isinstance(exc, UserError) and exc.errno in _REFUSALS:
            raise UnwritableFileError(f"cannot write {final}: {os_error_reason(exc)}") from exc
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def file_kind(mode: int) -> str:
    """What a file of ``st_mode`` ``mode`` is, in words ("a directory", "a named pipe (FIFO)", ...)."""
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a device"),
             (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"))
    return next((words for test, words in kinds if test(mode)), "not a regular file")


def write_destination(final: str | os.PathLike[str]) -> Path:
    """The path an atomic write of ``final`` renames onto: the file a symbolic link points to
    (so the link stays a link and the file it names is the one written), else ``final``.

    A destination that exists and is no regular file (a directory, a FIFO, a device such as
    ``/dev/full``, a socket) is refused with :class:`UnwritableFileError`: renaming a new file
    over it would silently replace the pipe or the device node with a regular file."""
    given = Path(final)
    target = Path(os.path.realpath(given)) if given.is_symlink() else given
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:  # a new name (or a dangling link: its target is created)
        return target
    except OSError as exc:  # a parent that is a file, a symlink loop, ...: named when the write fails
        if exc.errno == errno.ELOOP:
            raise UnwritableFileError(f"cannot write {given}: too many levels of symbolic links") from None
        return target
    if stat.S_ISDIR(mode):
        raise UnwritableFileError(f"cannot write {given}: it is a directory")
    if not stat.S_ISREG(mode):
        via = f" (the link points to {target})" if target != given else ""
        raise UnwritableFileError(f"cannot write {given}: it is {file_kind(mode)}, not a regular file{via}; "
                                  "give the name of a regular file or a new one")
    return target


class UnwritableFileError(UserError, OSError):
    """A file cannot be written where it should go (the message names it and says why)."""


class DiskFullError(UserError, OSError):
    """A file could not be written because its filesystem is full (the message names it)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.ENOSPC


_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(exc: BaseException, final: Path) -> DiskFullError | None:
    """The :class:`DiskFullError` a failed write of ``final`` amounts to, or None. Writers do
    not all say ENOSPC (``torch.save`` raises a RuntimeError from its C++ writer), so a failure
    that is no OSError on a filesystem with less than :data:`MIN_FREE_BYTES` free counts too."""
    if isinstance(exc, DiskFullError):
        return None
    if isinstance(exc, OSError):
        if exc.errno not in _FULL_ERRNOS:
            return None
    else:
        try:
            if shutil.disk_usage(final.parent).free >= MIN_FREE_BYTES:
                return None
        except OSError:
            return None
    return DiskFullError(f"no space left on the device of {final.parent} while writing {final.name}")


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it wraps (its cause or context, or a Ray error's
    ``cause``), is a full disk."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFullError) or (isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS):
            return True
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return False


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


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None: JSON has no such numbers, and
    Python's ``NaN`` token makes the file unreadable to every strict JSON reader."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json_atomic(final: str | os.PathLike[str], obj: Any) -> Path:
    """``obj`` as JSON (sorted keys; non-finite floats as null, see :func:`json_safe`)."""
    text = json.dumps(json_safe(obj), indent=2, sort_keys=True, default=str, allow_nan=False)
    return write_text_atomic(final, text + "\n")


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

_REASONS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exhausted",
            errno.EROFS: "read-only filesystem", errno.EACCES: "permission denied", errno.EPERM: "permission denied",
            errno.ENOTDIR: "a parent is a file", errno.EEXIST: "a parent is a file", errno.EISDIR: "it is a directory"}
#: Errors of a write that say where the file was to go is unusable (not a bug of the writer).
_REFUSALS = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR)


def os_error_reason(exc: OSError) -> str:
    """Why a file operation failed, in a few words (for one-line user errors)."""
    return _REASONS.get(exc.errno or 0, exc.strerror or str(exc))


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
        raise UnusableDirectoryError(f"{what} {path} cannot be written: {os_error_reason(exc)}") from None
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


class DirectoryInUseError(UserError, OSError):
    """Another live process holds the lock of a directory this run must own (names the holder)."""


LOCK_NAME = ".lock"
_HELD: dict[Path, int] = {}  # locks this process holds -> how many times (a lock is re-entrant)


def _lock_holder(lock: Path) -> tuple[str, int, str] | None:
    """(host, pid, since) written in ``lock``, or None when it cannot be read."""
    try:
        host, pid, since = lock.read_text(encoding="utf-8").split(maxsplit=2)
        return host, int(pid), since.strip()
    except (OSError, ValueError):
        return None


def _check_lock_file(lock: Path, what: str) -> None:
    """A ``.lock`` in the way that no run wrote (a directory, a FIFO, a link): no holder can be
    read from it (a FIFO would even block the read), and ``rm`` would not remove a directory;
    :class:`UnusableDirectoryError` says what it is and how to remove it."""
    try:
        mode = os.lstat(lock).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISREG(mode):
        return
    remove = f"rm -r {lock}" if stat.S_ISDIR(mode) else f"rm {lock}"
    raise UnusableDirectoryError(
        f"{what} {lock.parent} cannot be locked: {lock} is {file_kind(mode)}, not the lock file a run writes; "
        f"remove it ({remove}) and rerun")


def _take_lock(lock: Path, what: str) -> None:
    """Create ``lock`` holding this process's host, pid and start time, atomically (a complete
    file is hard-linked into place, so a reader never sees a half-written one); break a lock
    whose holder died on this host; refuse one held by a live process (or another host's)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = lock.parent / _temp_name(lock)
        try:
            tmp.write_text(f"{_HOST} {os.getpid()} {stamp}\n", encoding="utf-8")
            os.link(tmp, lock)
            return
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        _check_lock_file(lock, what)
        holder = _lock_holder(lock)
        if holder is not None and _process_is_gone(holder[0], holder[1]):
            lock.unlink(missing_ok=True)  # a killed run's lock: nobody will release it
            continue
        who = f"pid {holder[1]} on host {holder[0]}, since {holder[2]}" if holder else "a process that left no name"
        raise DirectoryInUseError(
            f"{what} {lock.parent} is in use by another run ({who}); wait for it to end, or, if that "
            f"process is gone, delete {lock}")


@contextmanager
def directory_lock(directory: str | os.PathLike[str], what: str) -> Iterator[Path]:
    """Hold ``<directory>/.lock`` for the duration: one writer per directory (two runs into one
    results directory would replace each other's records, or compute every cell twice).

    Re-entrant within a process. A lock left by a process of this host that no longer exists
    is broken; one of another host is only reported (its holder may be alive). Directories
    the lock had to create are removed on release when still empty, so a run that stops
    early leaves nothing behind."""
    directory = Path(directory).absolute()
    lock = directory / LOCK_NAME
    created: list[Path] = []
    if _HELD.get(lock):
        _HELD[lock] += 1
    else:
        created = [p for p in (directory, *directory.parents) if not p.exists()]
        _take_lock(lock, what)
        _HELD[lock] = 1
    try:
        yield lock
    finally:
        _HELD[lock] -= 1
        if not _HELD[lock]:
            del _HELD[lock]
            lock.unlink(missing_ok=True)
            for path in created:
                try:
                    path.rmdir()
                except OSError:
                    break


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-serialisable object that does not depend on dict order."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def file_digest(path: str | os.PathLike[str]) -> tuple[int, str]:
    """(size in bytes, sha256 hex digest) of a file, read in 1 MiB chunks."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def bytes_hash(*chunks: bytes | memoryview, length: int = 16) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(len(chunk).to_bytes(8, "little"))
        h.update(chunk)
    return h.hexdigest()[:length]
