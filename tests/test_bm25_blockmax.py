"""The block-max window kernel against a brute-force reference, at block and window edges.

The kernel is called on hand-made CSC arrays (bm25s' layout) whose scores come from a
few values, so that many rows tie; lists are longer than a block (`maxscore.BLOCK`) and
span several windows (`maxscore.WINDOW`).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from search_env.retrievers.bm25 import maxscore, scorers  # noqa: E402

LEVELS = np.array([0.25, 0.5, 0.75, 1.0, 1.5], dtype=np.float32)


def _csc(lists: list[tuple[np.ndarray, np.ndarray]], n_docs: int) -> dict:
    """bm25s' score dict from (rows ascending, scores) per term."""
    indptr = np.zeros(len(lists) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(r) for r, _ in lists])
    indices = np.concatenate([r for r, _ in lists]).astype(np.int32)
    data = np.concatenate([s for _, s in lists]).astype(np.float32)
    return {"data": data, "indices": indices, "indptr": indptr, "num_docs": n_docs}


def _random_lists(rng: np.random.Generator, n_docs: int, dfs: list[int]) -> list:
    out = []
    for df in dfs:
        rows = np.sort(rng.choice(n_docs, size=df, replace=False))
        out.append((rows, rng.choice(LEVELS, size=df)))
    return out


def _reference(scores: dict, query: list[int], k: int) -> list[tuple[float, int]]:
    """float32 sums in query order, (score desc, row asc), positive scores only."""
    acc = np.zeros(scores["num_docs"], dtype=np.float32)
    data, indices, indptr = scores["data"], scores["indices"], scores["indptr"]
    for t in query:
        acc[indices[indptr[t] : indptr[t + 1]]] += data[indptr[t] : indptr[t + 1]]
    rows = np.flatnonzero(acc > 0)
    hits = sorted(zip(acc[rows].tolist(), rows.tolist()), key=lambda h: (-h[0], h[1]))
    return hits[:k]


def _search(scores: dict, queries: list[list[int]], k: int) -> list[list[tuple[float, int]]]:
    rows, vals, counts = scorers.PrunedScorer(scores, None, "lucene").search(queries, k, 1)
    return [
        list(zip(vals[q, : counts[q]].tolist(), rows[q, : counts[q]].tolist()))
        for q in range(len(queries))
    ]


def _check(scores: dict, queries: list[list[int]], ks=(1, 3, 10, 50)) -> None:
    for k in ks:
        assert _search(scores, queries, k) == [_reference(scores, q, k) for q in queries], k


def test_block_max_is_the_max_of_each_block_including_short_and_empty_lists():
    b = maxscore.BLOCK
    lists = [
        (np.arange(b + 1), np.r_[np.full(b - 1, 0.5), 2.0, 3.0]),  # maxima at both edges
        (np.arange(3), np.array([0.125, 0.875, 0.25])),  # fewer postings than a block
        (np.arange(0), np.arange(0)),  # an empty list
        (np.arange(2 * b), np.r_[4.0, np.full(2 * b - 1, 1.0)]),
    ]
    s = _csc(lists, 2 * b)
    boff = maxscore.block_offsets(s["indptr"])
    assert boff.tolist() == [0, 2, 3, 3, 5]
    got = maxscore.block_max(s["data"], s["indptr"], boff)
    assert got.dtype == np.float32
    assert got.tolist() == [2.0, 3.0, 0.875, 4.0, 1.0]


def test_random_tie_heavy_lists_across_blocks_and_windows():
    rng = np.random.default_rng(0)
    n_docs = 3 * maxscore.WINDOW + 17
    dfs = [5, 40, maxscore.BLOCK - 1, maxscore.BLOCK, maxscore.BLOCK + 1, 900, 3000, 9000]
    scores = _csc(_random_lists(rng, n_docs, dfs), n_docs)
    queries = [
        list(rng.choice(len(dfs), size=int(rng.integers(1, 7)), replace=True)) for _ in range(60)
    ]
    _check(scores, queries + [[7], [6, 7], [0, 7, 7, 7], [2, 3, 4]])


def test_best_rows_at_block_and_window_edges():
    """The top rows sit on the first and last posting of a block and of a window."""
    b, w = maxscore.BLOCK, maxscore.WINDOW
    n_docs = 3 * w
    rows = np.arange(0, n_docs, 3)
    low = np.full(len(rows), 0.5, dtype=np.float32)
    for edge in (b - 1, b, 5 * b - 1, 5 * b):  # posting positions at block edges
        low[edge] = 2.0
    low[np.searchsorted(rows, w - 1)] = 2.0  # rows at window edges
    low[np.searchsorted(rows, w)] = 2.0
    other = np.arange(1, n_docs, 2)
    scores = _csc([(rows, low), (other, np.full(len(other), 0.75)), (np.array([w]), [1.0])], n_docs)
    _check(scores, [[0], [0, 1], [1, 0], [0, 2], [2, 0, 1], [1, 1, 0]], ks=(1, 3, 6, 7, 20))


def test_k_larger_than_the_matches_and_duplicate_terms():
    rng = np.random.default_rng(1)
    n_docs = maxscore.WINDOW + 5
    scores = _csc(_random_lists(rng, n_docs, [3, 7, 300]), n_docs)
    assert _search(scores, [[0]], 10)[0] == _reference(scores, [0], 10)
    assert len(_search(scores, [[0, 1]], 50)[0]) == 10
    _check(scores, [[0, 0], [1, 0, 1], [2, 2, 2, 0], [2, 1, 2]], ks=(1, 4, 400))


def test_all_rows_tie_and_the_lowest_rows_win():
    n_docs = 2 * maxscore.WINDOW
    rows = np.arange(n_docs)
    scores = _csc([(rows, np.ones(n_docs)), (rows[::2], np.ones(n_docs // 2))], n_docs)
    got = _search(scores, [[0], [1, 0], [0, 1, 0]], 5)
    assert [[r for _, r in h] for h in got] == [
        [0, 1, 2, 3, 4],
        [0, 2, 4, 6, 8],
        [0, 2, 4, 6, 8],
    ]


def test_a_stored_block_max_of_the_wrong_length_is_refused():
    s = _csc([(np.arange(300), np.ones(300))], 300)
    with pytest.raises(ValueError, match="block_max has 2 blocks, the score matrix 3"):
        scorers.PrunedScorer(s, None, "lucene", np.ones(2, dtype=np.float32))


def _saved(tmp_path):
    from search_env.retrievers.bm25 import BM25Retriever
    from search_env.types import Passage

    words = ["alpha", "beta", "gamma", "delta"]
    rng = np.random.default_rng(2)
    passages = [
        Passage(str(i), " ".join(rng.choice(words, int(rng.integers(1, 6))))) for i in range(400)
    ]
    return BM25Retriever.build(passages, show_progress=False, stemmer=None).save(tmp_path / "i")


def _rewrite(index, name, array=None, **fields):
    import json

    from search_env.retrievers.bm25 import files

    manifest = json.loads((index / "manifest.json").read_text())
    if array is not None:
        np.save(index / name, array)
        manifest["files"][name] = files.file_record(index / name)
    else:
        (index / name).unlink()
        del manifest["files"][name]
    manifest.update(fields)
    (index / "manifest.json").write_text(json.dumps(manifest))


def test_block_maxima_are_saved_and_loaded(tmp_path):
    import json

    from search_env.retrievers.bm25 import BM25Retriever, files

    index = _saved(tmp_path)
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["maxscore_block"] == maxscore.BLOCK
    assert files.BLOCK_MAX_NAME in manifest["files"]
    r = BM25Retriever.load(index)
    stored = np.load(index / files.BLOCK_MAX_NAME)
    assert np.array_equal(r._scorer.block_max, stored)
    s = r._scorer
    assert np.array_equal(stored, maxscore.block_max(s.data, s.indptr, s.block_offsets))


def test_an_index_without_block_maxima_or_of_another_block_size_computes_them(tmp_path):
    from search_env.retrievers.bm25 import BM25Retriever, files

    index = _saved(tmp_path)
    queries = ["alpha beta", "gamma gamma delta", "delta"]
    expected = BM25Retriever.load(index).search(queries, k=5)
    wrong = np.zeros(len(np.load(index / files.BLOCK_MAX_NAME)), dtype=np.float32)
    _rewrite(index, files.BLOCK_MAX_NAME, wrong, maxscore_block=maxscore.BLOCK * 2)
    assert BM25Retriever.load(index).search(queries, k=5) == expected  # zeros ignored
    _rewrite(index, files.BLOCK_MAX_NAME)  # an index written before block maxima
    assert BM25Retriever.load(index).search(queries, k=5) == expected


def test_block_maxima_of_the_wrong_length_are_corrupt(tmp_path):
    from search_env.retrievers.base import CorruptIndexError
    from search_env.retrievers.bm25 import BM25Retriever, files

    index = _saved(tmp_path)
    _rewrite(index, files.BLOCK_MAX_NAME, np.ones(99, dtype=np.float32))
    with pytest.raises(CorruptIndexError, match="block_max.maxscore.npy has 99 blocks"):
        BM25Retriever.load(index)
    _rewrite(index, files.BLOCK_MAX_NAME, np.ones(99, dtype=np.float64))
    with pytest.raises(CorruptIndexError, match="block_max.maxscore.npy is not a float32"):
        BM25Retriever.load(index)
