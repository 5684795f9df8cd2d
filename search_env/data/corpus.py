"""Read and write wiki-18 style passage corpora.

A corpus is JSONL (optionally gzip-compressed), one passage a line::

    {"id": "0", "contents": "\\"Aaron\\"\\nAaron is a prophet ..."}

``contents`` keeps the wiki-18 convention: the first line is the title (in double
quotes), the rest is the text. Records with ``title`` and ``text`` fields instead of
``contents`` are accepted too and turned into ``"{title}"\\n{text}``. Ids may be
integers or strings in the file; they are always returned as strings.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from search_env.files import atomic_file
from search_env.types import Passage

try:  # orjson is about 3x faster on big corpora; plain json gives the same result.
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads

__all__ = ["iter_corpus", "write_corpus", "corpus_fingerprint", "record_to_passage"]

logger = logging.getLogger(__name__)

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")


def _open_binary(path: Path) -> BinaryIO:
    """Opens ``path`` for reading, decompressing it when it starts with gzip's magic."""
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == _GZIP_MAGIC:
        return cast(BinaryIO, gzip.open(path, "rb"))
    return open(path, "rb")


def record_to_passage(record: Any) -> Passage:
    """Turns one decoded corpus record into a `Passage`.

    Args:
        record: A dict with ``id`` and either ``contents`` or ``title`` + ``text``.

    Returns:
        The passage, with ``id`` converted to ``str``.

    Raises:
        ValueError: If a field is missing or has the wrong type.
    """
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if "id" not in record:
        raise ValueError("missing field 'id'")
    pid = record["id"]
    if isinstance(pid, bool) or not isinstance(pid, (int, str)):
        raise ValueError(f"field 'id' must be an int or a string, got {type(pid).__name__}")
    if "contents" in record:
        contents = record["contents"]
        if not isinstance(contents, str):
            raise ValueError(f"field 'contents' must be a string, got {type(contents).__name__}")
    elif "title" in record and "text" in record:
        title, text = record["title"], record["text"]
        if not isinstance(title, str) or not isinstance(text, str):
            raise ValueError("fields 'title' and 'text' must be strings")
        contents = f'"{title}"\n{text}'
    else:
        raise ValueError("missing field 'contents' (or 'title' and 'text')")
    return Passage(id=str(pid), contents=contents)


def iter_corpus(path: str | Path) -> Iterator[Passage]:
    """Streams the passages of a JSONL or JSONL.gz corpus file.

    Blank lines are skipped. Gzip is detected from the file's first bytes, so the
    suffix does not matter when reading.

    Args:
        path: The corpus file.

    Yields:
        One `Passage` per record, in file order, with ``score=None``.

    Raises:
        FileNotFoundError: If ``path`` is not a file.
        ValueError: If a line is not valid JSON or not a valid record (the message
            names the file and the 1-based line number), or the gzip stream is corrupt.
    """
    path = Path(path)
    _check_file(path)
    lineno = 0
    try:
        with _open_binary(path) as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    passage = record_to_passage(_loads(line))
                except ValueError as e:  # JSONDecodeError and UnicodeDecodeError included
                    raise ValueError(f"{path}: line {lineno}: malformed corpus record: {e}") from e
                yield passage
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ValueError(f"{path}: corrupt gzip stream after line {lineno}: {e}") from e


def write_corpus(passages: Iterable[Passage], path: str | Path) -> int:
    """Writes passages as a wiki-18 JSONL corpus, gzip-compressed if ``path`` ends in ``.gz``.

    The file is written under a temporary name and renamed, so a failure never leaves
    a partial corpus at ``path``. Scores are not written.

    Args:
        passages: The passages to write.
        path: The output file; parent directories are created.

    Returns:
        The number of passages written.
    """
    path = Path(path)
    n = 0
    with atomic_file(path) as raw:
        gz = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if path.suffix == ".gz" else None
        out = cast(IO[bytes], gz if gz is not None else raw)
        for p in passages:
            record = {"id": p.id, "contents": p.contents}
            out.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
            n += 1
        if gz is not None:
            gz.close()  # writes the gzip trailer; leaves ``raw`` open
    logger.info("wrote %d passages to %s", n, path)
    return n


def corpus_fingerprint(path: str | Path) -> str:
    """Returns the sha256 (hex) of the file's bytes, read in 1 MiB chunks.

    The fingerprint is of the bytes on disk: the same passages gzip-compressed or not
    give different fingerprints.

    Raises:
        FileNotFoundError: If ``path`` is not a file.
    """
    path = Path(path)
    _check_file(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()
