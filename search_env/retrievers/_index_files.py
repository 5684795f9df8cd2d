"""On-disk pieces shared by the index formats (BM25, dense).

* a passage store: ``passages.jsonl`` found by byte offset (``passages.offsets.npy``);
* file records for manifests (size + sha256) and their verification;
* atomic publication of an index directory (write a temporary sibling, fsync, rename).

Files up to 64 MiB are hashed whole (sha256). Larger ones record the sha256 of their
size plus their first and last 1 MiB: loading a 20 GB index stays fast, but a change in
the middle of a large file is only caught by the size check or when it is read.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import mmap as _mmap
import os
import shutil
import sys
from array import array
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from search_env.data.corpus import corpus_fingerprint, record_to_passage
from search_env.files import fsync, make_staging_dir
from search_env.retrievers.base import CorruptIndexError
from search_env.types import Passage

try:
    import orjson

    def dumps_line(record: dict[str, str]) -> bytes:
        """One JSONL line (newline included)."""
        return orjson.dumps(record) + b"\n"

    loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment

    def dumps_line(record: dict[str, str]) -> bytes:
        """One JSONL line (newline included)."""
        return json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n"

    loads = json.loads

__all__ = [
    "FULL_HASH_MAX_BYTES",
    "HASH_NOTE",
    "MANIFEST_NAME",
    "OFFSETS_NAME",
    "PASSAGES_NAME",
    "PassageStore",
    "PassageWriter",
    "file_record",
    "fsync",
    "package_version",
    "publish_dir",
    "read_manifest",
    "sha256_file",
    "stage_dir",
    "stage_prefix",
    "verify_corpus",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
PASSAGES_NAME = "passages.jsonl"
OFFSETS_NAME = "passages.offsets.npy"
FULL_HASH_MAX_BYTES = 64 << 20
SAMPLE_BYTES = 1 << 20
HASH_NOTE = (
    f"files up to {FULL_HASH_MAX_BYTES >> 20} MiB: sha256 of the whole file; larger "
    "files: sha256 of the size (8 bytes little-endian) + first 1 MiB + last 1 MiB"
)

Hasher = Callable[[Path, int], "tuple[str, str]"]


# ---------------------------------------------------------------------- passages
class PassageStore:
    """Passages stored as JSONL lines, found by byte offset (``offsets[i]:offsets[i+1]``).

    A slice may hold surrounding blank lines (a published corpus read in place), which
    the JSON parser ignores.
    """

    def __init__(self, path: Path, offsets: np.ndarray, *, use_mmap: bool) -> None:
        self.path = path
        self.offsets = offsets
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if use_mmap and size > 0:
                self._buf: bytes | _mmap.mmap = _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_READ)
            else:
                self._buf = f.read()
        if len(offsets) < 1 or int(offsets[0]) != 0 or int(offsets[-1]) != size:
            raise CorruptIndexError(
                f"{path}: passage offsets do not match the file "
                f"(file has {size} bytes, offsets end at {int(offsets[-1]) if len(offsets) else None})"
            )
        self._id_to_row: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def passage(self, row: int, score: float | None = None) -> Passage:
        """The passage on ``row`` (0-based), with ``score`` attached."""
        start, end = self.offsets[row : row + 2].tolist()
        try:
            record = loads(self._buf[start:end])
            if type(record) is dict:
                pid, contents = record.get("id"), record.get("contents")
                if type(pid) is str and type(contents) is str:  # the usual case, fast
                    return Passage(pid, contents, score)
            return record_to_passage(record).with_score(score)  # int ids, title + text, errors
        except ValueError as e:  # JSON, UTF-8 and record errors
            raise CorruptIndexError(f"{self.path}: passage {row} is unreadable: {e}") from e

    def row_of(self, passage_id: str) -> int | None:
        """The row of the first passage with this id, or None."""
        # wiki-18 ids are row numbers: try that before building the id map.
        if passage_id.isdigit():
            row = int(passage_id)
            if row < len(self) and self.passage(row).id == passage_id:
                return row
        if self._id_to_row is None:
            logger.info("building the passage id map for %d passages", len(self))
            id_to_row: dict[str, int] = {}
            for row in range(len(self)):
                id_to_row.setdefault(self.passage(row).id, row)  # first of duplicate ids wins
            self._id_to_row = id_to_row
        return self._id_to_row.get(passage_id)

    def get(self, passage_id: str) -> Passage:
        """The first passage with this id (``score=None``); KeyError if there is none."""
        row = self.row_of(str(passage_id))
        if row is None:
            raise KeyError(passage_id)
        return self.passage(row)


class PassageWriter:
    """Spools passages to a JSONL file while the corpus streams by, recording offsets."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "wb", buffering=1 << 20)
        self._ends = array("q", [0])

    def add(self, passage: Passage) -> None:
        line = dumps_line({"id": passage.id, "contents": passage.contents})
        self._file.write(line)
        self._ends.append(self._ends[-1] + len(line))

    def __len__(self) -> int:
        return len(self._ends) - 1

    def close(self) -> np.ndarray:
        """Closes the file; returns the int64 offsets (one more than the passages)."""
        self._file.close()
        return np.frombuffer(self._ends, dtype=np.int64).copy()


# ---------------------------------------------------------------------- hashes
def sha256_file(
    path: Path,
    size: int,
    *,
    full_hash_max_bytes: int | None = None,
    sample_bytes: int | None = None,
) -> tuple[str, str]:
    """Returns (mode, hex digest): whole file, or size + head + tail for large files.

    Args:
        path: The file.
        size: Its size in bytes.
        full_hash_max_bytes: Hash whole files up to this size (default 64 MiB).
        sample_bytes: Head and tail sample size for larger files (default 1 MiB).
    """
    full_max = FULL_HASH_MAX_BYTES if full_hash_max_bytes is None else full_hash_max_bytes
    sample = SAMPLE_BYTES if sample_bytes is None else sample_bytes
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= full_max:
            while chunk := f.read(1 << 20):
                h.update(chunk)
            return "full", h.hexdigest()
        h.update(size.to_bytes(8, "little"))
        h.update(f.read(sample))
        f.seek(max(0, size - sample))
        h.update(f.read(sample))
        return "head-tail-1MiB", h.hexdigest()


def file_record(path: Path, hasher: Hasher = sha256_file) -> dict[str, Any]:
    """The manifest entry of one file: size, sha256 and hash mode."""
    size = path.stat().st_size
    mode, digest = hasher(path, size)
    return {"size": size, "sha256": digest, "hash": mode}


def read_manifest(
    index_dir: Path,
    *,
    format_name: str,
    format_version: int,
    required_files: Iterable[str],
    corrupt: Callable[[str], CorruptIndexError],
    hasher: Hasher = sha256_file,
) -> dict[str, Any]:
    """Reads ``manifest.json`` and checks every listed file's presence, size and hash.

    Args:
        index_dir: The index directory.
        format_name: The expected ``format`` field.
        format_version: The only ``format_version`` this code reads.
        required_files: Files the manifest must list.
        corrupt: Builds the error for a problem description.
        hasher: How files were hashed.

    Returns:
        The manifest.

    Raises:
        CorruptIndexError: Built by ``corrupt``, for the first problem found.
    """
    path = index_dir / MANIFEST_NAME
    if not path.is_file():
        raise corrupt(f"missing {MANIFEST_NAME} (not an index, or not written by save())")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise corrupt(f"unreadable {MANIFEST_NAME}: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != format_name:
        raise corrupt(f"{MANIFEST_NAME} is not a {format_name} manifest")
    version = manifest.get("format_version")
    if version != format_version:
        raise corrupt(
            f"unsupported format version {version!r} "
            f"(this search_env reads version {format_version})"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise corrupt(f"{MANIFEST_NAME} has no file list")
    for name in required_files:
        if name not in files:
            raise corrupt(f"{MANIFEST_NAME} does not list required file {name}")
    for name, rec in files.items():
        if not _plain_file_name(name):
            raise corrupt(f"{MANIFEST_NAME} names {name!r}: only plain file names are allowed")
        file = index_dir / name
        if not file.is_file():
            raise corrupt(f"missing file {name}")
        size = file.stat().st_size
        try:
            want_size, want_hash, want_mode = int(rec["size"]), rec["sha256"], rec["hash"]
        except (KeyError, TypeError, ValueError) as e:
            raise corrupt(f"bad manifest entry for {name}: {e}") from e
        if size != want_size:
            raise corrupt(f"size mismatch for {name}: {size} bytes, manifest says {want_size}")
        mode, digest = hasher(file, size)
        if mode != want_mode or digest != want_hash:
            raise corrupt(f"sha256 mismatch for {name} (file was modified or damaged)")
    known = {*files, MANIFEST_NAME}
    extra = sorted(p.name for p in index_dir.iterdir() if p.name not in known)
    if extra:
        logger.warning("%s: files not in the manifest are ignored: %s", index_dir, ", ".join(extra))
    return manifest


def _plain_file_name(name: object) -> bool:
    """A bare file name: no directory part, not ``.``/``..``, not absolute, no NUL."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
        and Path(name).name == name
        and not Path(name).is_absolute()
    )


def verify_corpus(
    manifest: dict[str, Any], expected: Path, corrupt: Callable[[str], CorruptIndexError]
) -> None:
    """Checks that the manifest's corpus sha256 is that of the file ``expected``.

    Raises:
        CorruptIndexError: Built by ``corrupt``, if no fingerprint was recorded or it differs.
    """
    recorded = manifest.get("corpus") or {}
    if "sha256" not in recorded:
        raise corrupt(
            f"no corpus fingerprint recorded (built from passages), cannot check {expected}"
        )
    actual = corpus_fingerprint(expected)
    if actual != recorded["sha256"]:
        raise corrupt(
            f"corpus fingerprint mismatch: index built from {recorded.get('path')} "
            f"(sha256 {recorded['sha256'][:12]}...), expected corpus {expected} "
            f"has sha256 {actual[:12]}..."
        )


# ---------------------------------------------------------------------- atomic writes
def stage_prefix(final: Path) -> str:
    """The name prefix of ``final``'s staging directories (see `stage_dir`)."""
    return f".{final.name}.tmp-"


def stage_dir(final: Path) -> Path:
    """A new empty temporary sibling of ``final`` to write an index into.

    It is named after this process, and staging directories of ``final`` left by a
    process that no longer runs (a killed build or save) are removed first.
    """
    return make_staging_dir(final.parent, stage_prefix(final))


def publish_dir(tmp: Path, final: Path) -> None:
    """Fsyncs ``tmp`` and its files, then renames it to ``final``.

    An existing ``final`` is moved aside first and deleted after, so a crash at that
    moment leaves no index under the name rather than a broken one.
    """
    for p in tmp.iterdir():
        fsync(p)
    fsync(tmp)
    if final.exists():
        trash = make_staging_dir(final.parent, f".{final.name}.old-")
        os.replace(final, trash / final.name)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync(final.parent)


# ---------------------------------------------------------------------- misc
def package_version() -> str | None:
    """The installed search-env version (or the source tree's ``__version__``)."""
    try:
        return importlib.metadata.version("search-env")
    except importlib.metadata.PackageNotFoundError:  # running from a source checkout
        return getattr(sys.modules.get("search_env"), "__version__", None)


def available_cpus() -> int:
    """Cores this process may run on (its affinity mask), for 'all cores' thread counts."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
