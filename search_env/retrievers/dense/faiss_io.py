"""faiss I/O helpers: the lazy import, the thread pool, reading an index file, its type."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from search_env.retrievers._index_files import available_cpus
from search_env.retrievers.encoders import DENSE_INSTALL_HINT

__all__ = ["import_faiss", "index_type_of", "read_faiss_index", "set_faiss_threads"]

logger = logging.getLogger(__name__)


def import_faiss() -> Any:
    """The faiss module, or an ImportError naming the extra to install."""
    try:
        import faiss
    except ImportError as e:
        raise ImportError(f"DenseRetriever needs faiss: {DENSE_INSTALL_HINT}") from e
    return faiss


def set_faiss_threads(n_threads: int) -> int:
    """faiss' OpenMP pool is process-wide; -1 means every usable core."""
    faiss = import_faiss()
    n = available_cpus() if n_threads == -1 else n_threads
    if n < 1:
        raise ValueError(f"n_threads must be >= 1 or -1 (all cores), got {n_threads}")
    faiss.omp_set_num_threads(n)
    return n


def read_faiss_index(path: Path, mmap: bool) -> Any:
    """Reads a faiss index file, memory-mapping its vectors when ``mmap`` and possible."""
    faiss = import_faiss()
    # IO_FLAG_MMAP_IFC maps flat codes (flat, HNSW storage) from the file; older faiss
    # only has IO_FLAG_MMAP, which maps IVF lists but reads flat indexes into memory.
    flag = getattr(faiss, "IO_FLAG_MMAP_IFC", None) if mmap else 0
    if flag is None:
        logger.warning("this faiss cannot memory-map flat codes; reading %s into memory", path)
        flag = 0
    return faiss.read_index(str(path), flag)


def index_type_of(index: Any) -> str:
    """``"flat"``, ``"hnsw"``, ``"ivfpq"``, or the class name of another faiss index."""
    faiss = import_faiss()
    if isinstance(index, faiss.IndexFlat):
        return "flat"
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(index, faiss.IndexIVFPQ):
        return "ivfpq"
    return type(index).__name__
