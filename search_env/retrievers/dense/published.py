"""Search-R1's published index and corpus, read as they are.

``e5_Flat.index`` is a faiss IndexFlatIP whose rows follow the lines of ``wiki-18.jsonl``;
`published_corpus_offsets` finds the byte offset of every corpus row once (with numpy,
about a minute for wiki-18) and caches it, so that rows are read lazily by offset.
"""

from __future__ import annotations

import logging
import mmap as _mmap
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from search_env.files import cache_dir as default_cache_dir
from search_env.retrievers._index_files import PassageStore, sha256_file
from search_env.retrievers.base import CorruptIndexError
from search_env.retrievers.dense.faiss_io import read_faiss_index

__all__ = ["open_published", "published_corpus_offsets"]

logger = logging.getLogger(__name__)


def _line_starts(
    path: Path, show_progress: bool, block_bytes: int = 64 << 20
) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive, newline excluded) of every line, found with numpy."""
    newlines = []
    size = path.stat().st_size
    bar = tqdm(
        total=size, desc="corpus row offsets", unit="B", unit_scale=True, disable=not show_progress
    )
    with open(path, "rb") as f, bar:
        base = 0
        while block := f.read(block_bytes):
            newlines.append(np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10) + base)
            base += len(block)
            bar.update(len(block))
    size = base
    nl = np.concatenate(newlines) if newlines else np.zeros(0, dtype=np.int64)
    starts = np.concatenate([[0], nl + 1]).astype(np.int64)
    ends = np.concatenate([nl, [size]]).astype(np.int64)
    return starts, ends


def _scan_offsets(path: Path, show_progress: bool = False) -> np.ndarray:
    """Row offsets of a JSONL corpus (blank lines skipped, as `iter_corpus` does)."""
    starts, ends = _line_starts(path, show_progress)
    size = int(ends[-1])
    keep = ends > starts
    short = np.flatnonzero(keep & (ends - starts < 16))  # whitespace-only lines are short
    if len(short):
        with open(path, "rb") as f, _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_READ) as buf:
            for i in short.tolist():
                keep[i] = bool(buf[starts[i] : ends[i]].strip())
    if not keep.any():
        raise ValueError(f"{path}: no passages (the corpus file is empty)")
    offsets = np.append(starts[keep], size).astype(np.int64)
    offsets[0] = 0  # leading blank lines go with the first row
    return offsets


def published_corpus_offsets(
    corpus_path: str | Path, *, cache_dir: str | Path | None = None, show_progress: bool = True
) -> np.ndarray:
    """Byte offsets of the rows of a JSONL corpus, computed once and cached.

    The offsets file ``{name}.{key}.offsets.npy`` is kept in ``cache_dir`` if given,
    else next to the corpus when that directory is writable, else in
    ``$SEARCH_ENV_CACHE/offsets``. The key is the corpus' sha256 (whole file up to 64
    MiB; else of its size, first and last MiB, so that opening wiki-18 stays fast).

    Raises:
        FileNotFoundError: If the corpus does not exist.
        ValueError: If it is gzip-compressed (rows cannot be found by offset: gunzip it).
    """
    path = Path(corpus_path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")
    with open(path, "rb") as f:
        if f.read(2) == b"\x1f\x8b":
            raise ValueError(
                f"{path} is gzip-compressed; gunzip it first (rows are read by byte offset)"
            )
    size = path.stat().st_size
    key = sha256_file(path, size)[1][:16]
    name = f"{path.name}.{key}.offsets.npy"
    if cache_dir is not None:
        dirs = [Path(cache_dir)]
    else:
        dirs = [path.parent, default_cache_dir() / "offsets"]  # the argument shadows cache_dir()
    for d in dirs:
        if (d / name).is_file():
            offsets = np.load(d / name, mmap_mode="r", allow_pickle=False)
            if len(offsets) and int(offsets[0]) == 0 and int(offsets[-1]) == size:
                return offsets
            logger.warning("ignoring stale offsets file %s", d / name)
    start = time.perf_counter()
    logger.info("finding the rows of %s (once)", path)
    offsets = _scan_offsets(path, show_progress)
    seconds = time.perf_counter() - start
    logger.info("found %d rows in %s in %.1f s", len(offsets) - 1, path, seconds)
    for d in dirs:
        try:
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / f".{name}.{os.getpid()}.tmp.npy"
            np.save(tmp, offsets)
            os.replace(tmp, d / name)
            logger.info("saved row offsets to %s", d / name)
            break
        except OSError as e:
            logger.info("cannot write offsets to %s (%s)", d, e)
    return offsets


def open_published(
    index_path: Path,
    corpus_path: Path,
    *,
    mmap: bool,
    offsets_dir: str | Path | None,
    show_progress: bool,
) -> tuple[Any, PassageStore]:
    """The faiss index and the passage store of `DenseRetriever.from_published` (see there).

    Raises:
        FileNotFoundError: If a file does not exist.
        CorruptIndexError: If faiss cannot read the index, or its row count differs
            from the corpus'.
    """
    if not index_path.is_file():
        raise FileNotFoundError(f"faiss index file not found: {index_path}")
    try:
        index = read_faiss_index(index_path, mmap)
    except Exception as e:
        raise CorruptIndexError(
            f"cannot read faiss index {index_path}: {type(e).__name__}: {e}"
        ) from e
    offsets = published_corpus_offsets(
        corpus_path, cache_dir=offsets_dir, show_progress=show_progress
    )
    store = PassageStore(corpus_path, offsets, use_mmap=mmap)
    if index.ntotal != len(store):
        raise CorruptIndexError(
            f"{index_path} has {index.ntotal} rows but {corpus_path} has {len(store)} "
            "passages: "
            "the index and corpus do not belong together"
        )
    return index, store
