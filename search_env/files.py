"""Small file-system helpers shared by index builds and training checkpoints.

* staging directories named after their owner (host and PID), so that a later build or
  save recognises the ones a killed process left behind and removes them;
* atomic writes: a file (:func:`atomic_file`, :func:`atomic_write_text`) or a whole
  directory (:func:`build_dir`) is made under a temporary name beside its destination
  and renamed into place, so a reader never sees half of one;
* the cache directory, and the sha256 of a whole file.

``agents`` may import this module; nothing here imports ``agents``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

__all__ = [
    "atomic_file",
    "atomic_write_text",
    "build_dir",
    "cache_dir",
    "fsync",
    "make_staging_dir",
    "pid_alive",
    "remove_stale_staging",
    "sha256_of",
    "staging_owner",
]

logger = logging.getLogger(__name__)


def fsync(path: Path) -> None:
    """Flushes a file or directory to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_of(path: Path) -> str:
    """The hex sha256 of the whole file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID runs on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def _host() -> str:
    # '-' separates the name's fields; a host name keeps its own dashes (parsed from the right).
    return socket.gethostname().replace(os.sep, "_") or "localhost"


def make_staging_dir(parent: Path, prefix: str) -> Path:
    """A new empty directory ``{parent}/{prefix}{host}-{pid}-{random}``.

    Stale directories of the same ``prefix`` (their owner no longer runs) are removed
    first, so a killed build or save leaves its files behind only until the next one.
    """
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(parent, prefix)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{_host()}-{os.getpid()}-", dir=parent))


def staging_owner(name: str, prefix: str) -> tuple[str, int] | None:
    """``(host, pid)`` of a staging directory name made by :func:`make_staging_dir`."""
    if not name.startswith(prefix):
        return None
    parts = name[len(prefix) :].rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def remove_stale_staging(parent: Path, prefix: str) -> list[Path]:
    """Removes ``parent``'s staging directories of ``prefix`` whose owner has exited.

    Only directories made on this host are judged (a PID means nothing elsewhere), and
    those of live processes (a concurrent build) are left alone.

    Returns:
        The directories removed.
    """
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    host = _host()
    for path in parent.iterdir():
        owner = staging_owner(path.name, prefix)
        if owner is None or owner[0] != host or pid_alive(owner[1]) or not path.is_dir():
            continue
        logger.info("removing %s, left by process %d that no longer runs", path, owner[1])
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def cache_dir() -> Path:
    """Where search-env keeps what it builds: ``$SEARCH_ENV_CACHE`` or ``~/.cache/search_env``."""
    return Path(os.environ.get("SEARCH_ENV_CACHE") or Path.home() / ".cache" / "search_env")


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[IO[bytes]]:
    """Writes ``path`` (binary) through a temporary sibling, renamed over it on success.

    Parent directories are created. A kill, a full disk or an exception inside the block
    leaves the old file (or none), never a cut one, and removes the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically, as :func:`atomic_file` does."""
    with atomic_file(path) as f:
        f.write(text.encode("utf-8"))
    return Path(path)


def build_dir(target: str | Path, build: Callable[[Path], object]) -> Path:
    """Fills a staging sibling of ``target`` with ``build(staging)``, then renames it to
    ``target``.

    If another process published ``target`` first, theirs is kept and ours removed; the
    staging directory never outlives the call.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
