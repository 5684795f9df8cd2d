"""The search backends behind `BM25Retriever`: pruned (MaxScore) and exhaustive (bm25s).

Both answer a batch of encoded queries with ``(rows, scores, counts)``: row ``q`` holds
the ``counts[q]`` best passages of query ``q``, best first, ties by corpus row (lowest
first), only passages scoring above 0. Scores are bm25s' float32 sums; the two
backends return the same scores (bit for bit) and, away from ties at the k-th place,
the same rows (bm25s picks any of the passages tied at the k-th score).

Threads per call (the contention fix of issue 15): a call uses
``min(n_threads, len(batch) // MIN_QUERIES_PER_THREAD)`` threads, at least one, and one
thread runs the serial kernel without touching numba's thread pool. A parallel call
waits for its slowest thread, and with another process on a core that thread may be
descheduled for a whole time slice (~8 ms with the OpenMP layer, measured): worth it for
a batch of many queries, not for a few.

Threading layer: unless ``NUMBA_THREADING_LAYER`` is set, the first parallel call picks
numba's ``workqueue`` layer. Under a competing load (load average ~6 on 2 cores), 2,048
queries over 200,000 passages ran at 296 q/s on 2 threads with the OpenMP layer (its
threads spin while waiting for a descheduled peer) against 2,056 q/s on one thread; with
``workqueue``, 1,186 q/s on 2 threads. The layer is process-wide and fixed at numba's
first parallel launch, so it also applies to bm25s' (exhaustive) kernels.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from search_env.retrievers.bm25.params import PRUNABLE_METHODS

logger = logging.getLogger(__name__)

__all__ = ["MIN_QUERIES_PER_THREAD", "ExhaustiveScorer", "Hits", "PrunedScorer", "threads_for"]

MIN_QUERIES_PER_THREAD = 32
"""A batch gets one thread per this many queries (on 2 shared cores, one thread was
faster for up to about this many: a query costs ~0.1-1 ms, a pool call ~0.05 ms idle and
up to a time slice under contention)."""

NUMPY_THREADS_MIN_PASSAGES = 20_000
"""bm25s' numpy scorer searches a smaller corpus without its thread pool: a query costs
about 0.1 ms there, less than handing it to a thread (on 2 cores, 48 queries over 5,000
passages took 5.4 ms in one thread and 9.3 ms in two)."""

Hits = tuple[np.ndarray, np.ndarray, np.ndarray]
"""``(rows (Q, k) int64, scores (Q, k) float32, counts (Q,) int64)``."""


DEFAULT_THREADING_LAYER = "workqueue"
"""numba's threading layer when ``NUMBA_THREADING_LAYER`` is not set (see above)."""


def use_threading_layer() -> None:
    """Selects `DEFAULT_THREADING_LAYER` before numba's first parallel launch.

    A ``NUMBA_THREADING_LAYER`` set by the user wins; once a layer is running, numba
    keeps it (nothing to do then).
    """
    if os.environ.get("NUMBA_THREADING_LAYER"):
        return
    import numba
    from numba.np.ufunc import parallel

    if not getattr(parallel, "_is_initialized", False):
        numba.config.THREADING_LAYER = DEFAULT_THREADING_LAYER


def threads_for(n_queries: int, n_threads: int) -> int:
    """Threads for a batch of ``n_queries``: one per `MIN_QUERIES_PER_THREAD`, capped."""
    return max(1, min(n_threads, n_queries // MIN_QUERIES_PER_THREAD))


def _flatten(queries: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of all queries in one array, and the offsets of each query's ids."""
    ptr = np.zeros(len(queries) + 1, dtype=np.int64)
    ptr[1:] = np.cumsum([len(q) for q in queries])
    flat = np.fromiter((t for q in queries for t in q), dtype=np.int64, count=int(ptr[-1]))
    return flat, ptr


class PrunedScorer:
    """Exact top-k by MaxScore over bm25s' CSC arrays (see `maxscore`)."""

    name = "pruned"

    def __init__(
        self,
        scores: dict[str, Any],
        term_max: np.ndarray | None,
        method: str,
        block_max: np.ndarray | None = None,
    ) -> None:
        """Wraps bm25s' ``model.scores``; ``term_max`` and ``block_max`` (of
        `maxscore.BLOCK` postings) are computed when None (one pass over the scores)."""
        if method not in PRUNABLE_METHODS:
            raise ValueError(f"the pruned backend scores {PRUNABLE_METHODS}, not {method!r}")
        from search_env.retrievers.bm25 import maxscore

        self._kernel = maxscore
        self.data = scores["data"]
        self.indices = scores["indices"]
        self.indptr = scores["indptr"]
        self.num_docs = int(scores["num_docs"])
        self.term_max = maxscore.term_max(self.data, self.indptr) if term_max is None else term_max
        self.block = maxscore.BLOCK
        self.block_offsets = maxscore.block_offsets(self.indptr)
        if block_max is None:
            block_max = maxscore.block_max(self.data, self.indptr, self.block_offsets)
        elif len(block_max) != self.block_offsets[-1]:
            raise ValueError(
                f"block_max has {len(block_max)} blocks, the score matrix "
                f"{int(self.block_offsets[-1])} of {maxscore.BLOCK} postings"
            )
        self.block_max = block_max

    def search(self, queries: Sequence[Sequence[int]], k: int, n_threads: int) -> Hits:
        """Top-``k`` of each query (token ids), using up to ``n_threads`` threads."""
        flat, ptr = _flatten(queries)
        n = len(queries)
        rows = np.zeros((n, k), dtype=np.int64)
        scores = np.zeros((n, k), dtype=np.float32)
        counts = np.zeros(n, dtype=np.int64)
        threads = threads_for(n, n_threads)
        args = (
            self.data,
            self.indices,
            self.indptr,
            self.term_max,
            self.block_max,
            self.block_offsets,
            flat,
            ptr,
            k,
        )
        if threads == 1:
            self._kernel.search_batch(*args, rows, scores, counts)
        else:
            import numba

            use_threading_layer()
            previous = numba.get_num_threads()
            numba.set_num_threads(threads)
            try:
                self._kernel.search_batch_parallel(*args, rows, scores, counts)
            finally:
                numba.set_num_threads(previous)
        return rows, scores, counts


class ExhaustiveScorer:
    """bm25s' own retrieval: every query scores every passage (the reference)."""

    def __init__(self, model: Any, name: str) -> None:
        """Wraps a loaded ``bm25s.BM25`` whose backend is ``numba`` or ``numpy``."""
        self._model = model
        self.name = name
        self.num_docs = int(model.scores["num_docs"])

    def search(self, queries: Sequence[Sequence[int]], k: int, n_threads: int) -> Hits:
        """Top-``k`` of each query (token ids), using up to ``n_threads`` threads."""
        k_eff = min(k, self.num_docs)
        threads = threads_for(len(queries), n_threads)
        if self.name == "numpy" and self.num_docs < NUMPY_THREADS_MIN_PASSAGES:
            threads = 1
        if threads > 1 and self.name == "exhaustive":
            use_threading_layer()
        docs, scores = self._model.retrieve(
            [list(q) for q in queries],
            k=k_eff,
            show_progress=False,
            n_threads=0 if threads == 1 else threads,  # bm25s: 0 = no thread pool
            return_as="tuple",
        )
        n = len(queries)
        out_rows = np.zeros((n, k), dtype=np.int64)
        out_scores = np.zeros((n, k), dtype=np.float32)
        counts = np.zeros(n, dtype=np.int64)
        for q in range(n):
            hits = sorted(
                ((s, d) for s, d in zip(scores[q].tolist(), docs[q].tolist()) if s > 0),
                key=lambda t: (-t[0], t[1]),
            )
            counts[q] = len(hits)
            for j, (s, d) in enumerate(hits):
                out_rows[q, j] = d
                out_scores[q, j] = s
        return out_rows, out_scores, counts
