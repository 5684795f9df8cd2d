"""Exact top-k BM25 by dynamic pruning: a numba MaxScore kernel over bm25s' own arrays.

Why a kernel of our own (measured 2026-12-02 on the 2-core machine, details in
``benchmarks/results/bm25_scale.json``):

* pyterrier-pisa 0.4.9 (PISA, block-max WAND/MaxScore) ranks with its own BM25: fed
  the text already analyzed by our tokenizer, with k1=0.9, b=0.4, its top-3 sets equal
  bm25s' on 81.7% of queries (100k passages; ``bm25_library_eval.json``); its own
  analyzer (Porter2, its stopwords) would differ further; and it pulls in PyTerrier,
  pyjnius and 17 other packages.
* tantivy-py 0.27: ``Searcher.search`` wraps the top-docs collector in a multi-collector,
  which bypasses tantivy's block-max WAND (so it is exhaustive through Python), and its
  BM25 has ``k1=1.2, b=0.75`` fixed.
* Pyserini/Lucene needs Java 21; this machine's Debian offers OpenJDK 17 only.
* bm25s is exhaustive: a corpus-sized score array per query.

bm25s already stores what MaxScore needs: a CSC score matrix (``indptr`` over terms,
``indices`` = document rows in ascending order, ``data`` = float32 BM25 term scores).
This module adds one float32 per term (its largest score, an upper bound) and scores
documents at a time, skipping documents that cannot enter the top k.

Algorithm (MaxScore, Turtle & Flood 1995): query terms are sorted by upper bound; the
longest prefix whose bounds sum to at most the current k-th score ``theta`` is
"non-essential": a document that contains none of the other (essential) terms cannot
beat ``theta``, so candidates come only from the essential lists, and a non-essential
list is probed (galloping search) only while the candidate's partial score plus the
remaining bounds can still beat ``theta``. A candidate that survives is scored exactly.
``theta`` starts high rather than at 0: the first rows of the shortest posting list
(the rarest query term) are scored exactly first, and the pass starts from just below
their k-th best score (`_prime`); without that, on question-like queries over 200k
passages, theta rose so slowly in row order that most postings stayed essential.

Exactness: a document's score is the float32 sum of its term scores in query-token order
(repeated query words count once per occurrence), the same additions in the same order
as bm25s' ``scores[doc] += data[j]``, so scores are bit-identical to the exhaustive path.
Bounds are computed in float64 and inflated by a relative slack that covers float32
rounding, so pruning never drops a document that belongs in the top k.

Ties: results are ordered by score, best first, then by corpus row, lowest first. A
document enters a full heap only with a score strictly above ``theta``; as rows are
visited in ascending order, among equal scores the lowest rows are kept.

Only documents with a score above 0 are returned (those sharing a term with the query).
The kernel needs non-negative term scores with no per-document baseline: methods
``lucene`` and ``atire`` (``params.PRUNABLE_METHODS``).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["SLACK", "search_batch", "search_batch_parallel", "term_max"]

PRIME_DOCS = 1024
"""Rows of the shortest posting list scored first to start the threshold high (`_prime`)."""

SLACK = 4e-7
"""Relative slack per query token on bounds: float32 sums of m terms are off by at most
about ``m * 2**-24`` of the sum, so ``(1 + SLACK * (m + 1))`` covers it with room."""


@njit(cache=True, nogil=True)
def term_max(data: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """The largest score of each term's posting list (0 for an empty list)."""
    n_terms = len(indptr) - 1
    out = np.zeros(n_terms, dtype=np.float32)
    for t in range(n_terms):
        best = np.float32(0.0)
        for j in range(indptr[t], indptr[t + 1]):
            if data[j] > best:
                best = data[j]
        out[t] = best
    return out


@njit(cache=True, nogil=True, inline="always")
def _worse(s1: float, d1: int, s2: float, d2: int) -> bool:
    """Whether hit (s1, d1) ranks below (s2, d2): lower score, or equal score, higher row."""
    return s1 < s2 or (s1 == s2 and d1 > d2)


@njit(cache=True, nogil=True)
def _sift_down(hs: np.ndarray, hd: np.ndarray, size: int, i: int) -> None:
    """Restores the min-heap (root = worst hit) below position ``i``."""
    while True:
        left = 2 * i + 1
        if left >= size:
            return
        worst = left
        right = left + 1
        if right < size and _worse(hs[right], hd[right], hs[left], hd[left]):
            worst = right
        if _worse(hs[worst], hd[worst], hs[i], hd[i]):
            hs[i], hs[worst] = hs[worst], hs[i]
            hd[i], hd[worst] = hd[worst], hd[i]
            i = worst
        else:
            return


@njit(cache=True, nogil=True)
def _sift_up(hs: np.ndarray, hd: np.ndarray, i: int) -> None:
    while i > 0:
        parent = (i - 1) // 2
        if _worse(hs[i], hd[i], hs[parent], hd[parent]):
            hs[i], hs[parent] = hs[parent], hs[i]
            hd[i], hd[parent] = hd[parent], hd[i]
            i = parent
        else:
            return


@njit(cache=True, nogil=True)
def _advance(indices: np.ndarray, pos: int, end: int, doc: int) -> int:
    """The first position in ``[pos, end)`` whose row is >= ``doc`` (galloping search)."""
    if pos >= end or indices[pos] >= doc:
        return pos
    step = 1
    lo = pos
    while lo + step < end and indices[lo + step] < doc:
        lo += step
        step *= 2
    hi = min(lo + step, end)  # indices[lo] < doc, and indices[hi] >= doc or hi == end
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if indices[mid] < doc:
            lo = mid
        else:
            hi = mid
    return hi


@njit(cache=True, nogil=True)
def _prime(
    data: np.ndarray,
    indices: np.ndarray,
    uterm: np.ndarray,
    cnt: np.ndarray,
    tok_u: np.ndarray,
    pos: np.ndarray,
    end: np.ndarray,
    nu: int,
    k: int,
) -> float:
    """A starting threshold: just below the k-th best exact score among the first
    `PRIME_DOCS` rows of the shortest posting list (0 if they are fewer than k).

    Those are real rows, so the final k-th score is at least that score; a row that ties
    it may still belong to the top k, hence the largest float32 below it.
    """
    short = 0
    for u in range(1, nu):
        if end[u] - pos[u] < end[short] - pos[short]:
            short = u
    n = min(end[short] - pos[short], PRIME_DOCS)
    if n < k:
        return 0.0
    cur = pos[:nu].copy()
    vals = np.zeros(nu, dtype=np.float32)
    best = np.zeros(k, dtype=np.float32)  # ascending: best[0] is the k-th best so far
    for j in range(pos[short], pos[short] + n):
        doc = indices[j]
        for u in range(nu):
            p = _advance(indices, cur[u], end[u], doc)
            cur[u] = p
            vals[u] = data[p] if p < end[u] and indices[p] == doc else np.float32(0.0)
        score = np.float32(0.0)
        for t in range(len(tok_u)):
            score += vals[tok_u[t]]
        if score > best[0]:
            i = 0
            while i + 1 < k and best[i + 1] < score:
                best[i] = best[i + 1]
                i += 1
            best[i] = score
    if best[0] <= 0:
        return 0.0
    return np.float64(np.nextafter(best[0], np.float32(-np.inf)))


@njit(cache=True, nogil=True)
def _search_one(
    data: np.ndarray,
    indices: np.ndarray,
    indptr: np.ndarray,
    tmax: np.ndarray,
    tokens: np.ndarray,
    k: int,
    out_docs: np.ndarray,
    out_scores: np.ndarray,
) -> int:
    """Top-k of one query into ``out_docs``/``out_scores``; returns the number of hits."""
    m = len(tokens)
    if m == 0:
        return 0
    # Unique terms, each with its multiplicity; tok_u maps query positions to them.
    uterm = np.empty(m, dtype=np.int64)
    cnt = np.zeros(m, dtype=np.int64)
    tok_u = np.empty(m, dtype=np.int64)
    nu = 0
    for j in range(m):
        t = tokens[j]
        found = -1
        for u in range(nu):
            if uterm[u] == t:
                found = u
                break
        if found < 0:
            uterm[nu] = t
            found = nu
            nu += 1
        cnt[found] += 1
        tok_u[j] = found
    inflate = 1.0 + SLACK * (m + 1)
    ub = np.empty(nu, dtype=np.float64)
    for u in range(nu):
        ub[u] = cnt[u] * np.float64(tmax[uterm[u]]) * inflate
    order = np.argsort(ub)  # ascending bound: non-essential terms are a prefix
    cum = np.empty(nu, dtype=np.float64)
    acc = 0.0
    for i in range(nu):
        acc += ub[order[i]]
        cum[i] = acc
    pos = np.empty(nu, dtype=np.int64)
    end = np.empty(nu, dtype=np.int64)
    for u in range(nu):
        pos[u] = indptr[uterm[u]]
        end[u] = indptr[uterm[u] + 1]
    vals = np.zeros(nu, dtype=np.float32)
    hs = np.empty(k, dtype=np.float32)
    hd = np.empty(k, dtype=np.int64)
    size = 0
    # A hit must score above theta: 0 at first, the k-th score once the heap is full.
    theta = _prime(data, indices, uterm, cnt, tok_u, pos, end, nu, k)
    ne = 0
    while ne < nu and cum[ne] * inflate <= theta:
        ne += 1
    n_docs_bound = np.int64(1) << 62
    while ne < nu:
        # The next candidate: the smallest current row among the essential lists.
        doc = n_docs_bound
        for i in range(ne, nu):
            u = order[i]
            if pos[u] < end[u] and indices[pos[u]] < doc:
                doc = indices[pos[u]]
        if doc == n_docs_bound:
            break
        for u in range(nu):
            vals[u] = 0.0
        bound = 0.0
        for i in range(ne, nu):
            u = order[i]
            p = pos[u]
            if p < end[u] and indices[p] == doc:
                vals[u] = data[p]
                bound += cnt[u] * np.float64(data[p])
                pos[u] = p + 1
        pruned = False
        for i in range(ne - 1, -1, -1):
            if (bound + cum[i]) * inflate <= theta:
                pruned = True
                break
            u = order[i]
            p = _advance(indices, pos[u], end[u], doc)
            pos[u] = p
            if p < end[u] and indices[p] == doc:
                vals[u] = data[p]
                bound += cnt[u] * np.float64(data[p])
        if pruned or bound * inflate <= theta:
            continue
        score = np.float32(0.0)
        for j in range(m):
            score += vals[tok_u[j]]  # float32 adds in query order, as bm25s does
        if size < k:
            if score > theta:
                hs[size] = score
                hd[size] = doc
                _sift_up(hs, hd, size)
                size += 1
        elif score > hs[0]:
            hs[0] = score
            hd[0] = doc
            _sift_down(hs, hd, size, 0)
        if size == k:
            theta = np.float64(hs[0])
            while ne < nu and cum[ne] * inflate <= theta:
                ne += 1
    # Heap -> best first: repeatedly move the worst hit to the end.
    n = size
    while size > 0:
        size -= 1
        out_scores[size] = hs[0]
        out_docs[size] = hd[0]
        hs[0] = hs[size]
        hd[0] = hd[size]
        _sift_down(hs, hd, size, 0)
    return n


@njit(cache=True, nogil=True)
def search_batch(
    data: np.ndarray,
    indices: np.ndarray,
    indptr: np.ndarray,
    tmax: np.ndarray,
    flat: np.ndarray,
    ptr: np.ndarray,
    k: int,
    out_docs: np.ndarray,
    out_scores: np.ndarray,
    out_count: np.ndarray,
) -> None:
    """Top-k of each query ``flat[ptr[q]:ptr[q + 1]]`` in this thread (no thread pool)."""
    for q in range(len(ptr) - 1):
        out_count[q] = _search_one(
            data, indices, indptr, tmax, flat[ptr[q] : ptr[q + 1]], k, out_docs[q], out_scores[q]
        )


@njit(cache=True, nogil=True, parallel=True)
def search_batch_parallel(
    data: np.ndarray,
    indices: np.ndarray,
    indptr: np.ndarray,
    tmax: np.ndarray,
    flat: np.ndarray,
    ptr: np.ndarray,
    k: int,
    out_docs: np.ndarray,
    out_scores: np.ndarray,
    out_count: np.ndarray,
) -> None:
    """`search_batch` with queries spread over numba's threads (``prange``)."""
    for q in prange(len(ptr) - 1):
        out_count[q] = _search_one(
            data, indices, indptr, tmax, flat[ptr[q] : ptr[q + 1]], k, out_docs[q], out_scores[q]
        )
