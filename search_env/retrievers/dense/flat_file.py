"""The streamed writer of flat index files: faiss' IndexFlatIP layout, found out and checked.

This is the one place that writes a faiss file without faiss: a flat index of the whole
corpus would need the memory of every vector at once, so the header is reverse-engineered
from tiny indexes that faiss serializes itself (`flat_file_layout`), checked byte for byte,
and the rows are streamed after it. If this faiss lays the file out differently, the check
raises `RuntimeError` and the build falls back to faiss' own (in-memory) writer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from search_env.retrievers.dense.faiss_io import import_faiss, read_faiss_index

if TYPE_CHECKING:
    from search_env.retrievers.dense.build import ChunkRows

__all__ = ["flat_file_layout", "write_flat_streaming"]


def flat_file_layout(d: int) -> tuple[bytes, int, int]:
    """How this faiss writes an IndexFlatIP: (header for 0 rows, ntotal offset, size unit).

    Derived by serializing tiny indexes and checked byte for byte, so the streaming
    writer produces exactly what ``faiss.write_index`` would.
    """
    faiss = import_faiss()

    def serialized(n: int) -> bytes:
        index = faiss.IndexFlatIP(d)
        if n:
            index.add(np.arange(n * d, dtype=np.float32).reshape(n, d))
        return faiss.serialize_index(index).tobytes()

    empty, one, three = serialized(0), serialized(1), serialized(3)
    header, ntotal_at = empty[:-8], 8  # fourcc (4) + d (int32), then ntotal (int64)
    unit = int.from_bytes(one[len(header) : len(header) + 8], "little")

    def layout(n: int) -> bytes:
        h = bytearray(header)
        h[ntotal_at : ntotal_at + 8] = n.to_bytes(8, "little")
        return bytes(h) + (n * unit).to_bytes(8, "little")

    for n, blob in ((1, one), (3, three)):
        rows = np.arange(n * d, dtype=np.float32).tobytes()
        if blob != layout(n) + rows or int.from_bytes(empty[-8:], "little") != 0:
            raise RuntimeError("unrecognised faiss IndexFlat file layout")
    return header, ntotal_at, unit


def write_flat_streaming(path: Path, chunks: ChunkRows, show_progress: bool) -> None:
    """Writes an IndexFlatIP file from the chunk files without holding all rows in memory."""
    header, ntotal_at, unit = flat_file_layout(chunks.d)
    h = bytearray(header)
    h[ntotal_at : ntotal_at + 8] = chunks.n.to_bytes(8, "little")
    with open(path, "wb") as f:
        f.write(bytes(h) + (chunks.n * unit).to_bytes(8, "little"))
        bar = tqdm(chunks.arrays, desc="dense write flat", unit="chunk", disable=not show_progress)
        for a in bar:
            f.write(np.ascontiguousarray(a, dtype="<f4").tobytes())
        f.flush()
        os.fsync(f.fileno())
    check = read_faiss_index(path, mmap=True)
    last = check.reconstruct(chunks.n - 1)
    if check.ntotal != chunks.n or not np.array_equal(last, chunks.arrays[-1][-1]):
        raise RuntimeError(f"{path}: the streamed flat index does not read back")
