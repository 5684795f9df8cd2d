"""Reciprocal-rank fusion and the LRU retrieval cache."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from search_env.retrievers.base import RetrievalError, Retriever
from search_env.retrievers.cache import CachedRetriever, CacheInfo
from search_env.retrievers.hybrid import HybridRetriever, rrf_fuse
from search_env.types import Passage
from tests.conftest import PASSAGES, MemoryRetriever


def P(pid: str, score: float | None = None) -> Passage:
    return Passage(pid, f'"T{pid}"\ntext {pid}', score)


class ScriptedRetriever:
    """Returns fixed rankings per query (truncated to k); records each call."""

    def __init__(self, rankings: dict[str, list[str]]) -> None:
        self.rankings = rankings
        self.calls: list[tuple[list[str], int]] = []

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        self.calls.append((list(queries), k))
        out = []
        for q in queries:
            ranking = self.rankings.get(q, [])[:k]
            out.append([P(pid, 1.0 / (r + 1)) for r, pid in enumerate(ranking)])
        return out


# ---------------------------------------------------------------------- RRF
def test_rrf_matches_a_hand_computation():
    # Retriever A ranks a, b, c; retriever B ranks c, a, d. Weights 1 and 0.5, k_rrf = 60.
    a = [P("a"), P("b"), P("c")]
    b = [P("c"), P("a"), P("d")]
    fused = rrf_fuse([a, b], weights=[1.0, 0.5], k_rrf=60, k=4)
    expected = {
        "a": 1 / 61 + 0.5 / 62,  # 0.0244588...
        "b": 1 / 62,  # 0.0161290...
        "c": 1 / 63 + 0.5 / 61,  # 0.0240700...
        "d": 0.5 / 63,  # 0.0079365...
    }
    assert [p.id for p in fused] == ["a", "c", "b", "d"]
    for p in fused:
        assert p.score == pytest.approx(expected[p.id], rel=1e-12)
    assert fused[0].contents == a[0].contents and fused[0].score is not None


def test_rrf_with_k_rrf_zero_and_equal_weights():
    fused = rrf_fuse([[P("x"), P("y")], [P("y"), P("x")]], weights=[1, 1], k_rrf=0, k=2)
    # x: 1/1 + 1/2, y: 1/2 + 1/1 -> a tie, kept in first-seen order
    assert [p.id for p in fused] == ["x", "y"]
    assert fused[0].score == fused[1].score == pytest.approx(1.5)


def test_rrf_counts_a_repeated_passage_once_at_its_best_rank():
    fused = rrf_fuse([[P("x"), P("y"), P("x")]], weights=[1.0], k_rrf=60, k=5)
    assert [p.id for p in fused] == ["x", "y"]
    assert fused[0].score == pytest.approx(1 / 61)


def test_rrf_k_truncates_and_zero_weight_only_adds_candidates():
    fused = rrf_fuse([[P("a"), P("b")], [P("c")]], weights=[1.0, 0.0], k_rrf=60, k=2)
    assert [p.id for p in fused] == ["a", "b"]
    fused = rrf_fuse([[P("a")], [P("c")]], weights=[1.0, 0.0], k_rrf=60, k=5)
    assert [(p.id, p.score) for p in fused] == [("a", pytest.approx(1 / 61)), ("c", 0.0)]


# ---------------------------------------------------------------------- HybridRetriever
def test_hybrid_calls_each_retriever_once_per_batch_with_depth():
    a = ScriptedRetriever({"q1": ["a", "b", "c"], "q2": ["x"]})
    b = ScriptedRetriever({"q1": ["c", "a", "d"], "q2": ["y", "x"]})
    hybrid = HybridRetriever([a, b], weights=[1.0, 0.5], depth=10)
    assert isinstance(hybrid, Retriever)
    results = hybrid.search(["q1", "q2"], k=2)
    assert a.calls == [(["q1", "q2"], 10)] and b.calls == [(["q1", "q2"], 10)]
    assert [p.id for p in results[0]] == ["a", "c"]
    assert [p.id for p in results[1]] == ["x", "y"]  # x: 1/61 + 0.5/62 > y: 0.5/61
    hybrid.search(["q1"], k=20)
    assert a.calls[-1] == (["q1"], 20)  # depth is at least k


def test_hybrid_of_one_retriever_keeps_its_order(retriever):
    hybrid = HybridRetriever([retriever])
    plain = retriever.search(["capital of Norway", "city in Switzerland"], k=3)
    fused = hybrid.search(["capital of Norway", "city in Switzerland"], k=3)
    assert [[p.id for p in row] for row in fused] == [[p.id for p in row] for row in plain]


def test_hybrid_edge_cases():
    hybrid = HybridRetriever([ScriptedRetriever({})])
    assert hybrid.search([], k=3) == []
    assert hybrid.search(["unknown"], k=3) == [[]]
    with pytest.raises(ValueError, match="k must be >= 1"):
        hybrid.search(["q"], k=0)
    with pytest.raises(TypeError):
        hybrid.search("q", k=1)


def test_hybrid_rejects_a_wrong_number_of_result_lists():
    class Broken:
        def search(self, queries, k):
            return []

    with pytest.raises(RetrievalError, match="returned 0 lists for 1 queries"):
        HybridRetriever([Broken()]).search(["q"], k=1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(retrievers=[]), "at least one"),
        (dict(weights=[1.0, 2.0]), "2 weights for 1 retrievers"),
        (dict(weights=[-1.0]), "weights"),
        (dict(weights=[0.0]), "weights"),
        (dict(k_rrf=-1), "k_rrf"),
        (dict(depth=0), "depth"),
    ],
)
def test_hybrid_validates_arguments(kwargs, match):
    kwargs.setdefault("retrievers", [ScriptedRetriever({})])
    with pytest.raises(ValueError, match=match):
        HybridRetriever(**kwargs)
    with pytest.raises(TypeError, match="not a retriever"):
        HybridRetriever([object()])


# ---------------------------------------------------------------------- CachedRetriever
def test_cache_hits_misses_and_batching():
    inner = MemoryRetriever(PASSAGES)
    cached = CachedRetriever(inner, maxsize=10)
    assert isinstance(cached, Retriever)
    first = cached.search(["capital of Norway", "city in Switzerland"], k=2)
    assert inner.calls == [["capital of Norway", "city in Switzerland"]]
    assert cached.cache_info() == CacheInfo(hits=0, misses=2, maxsize=10, currsize=2)

    second = cached.search(["city in Switzerland", "capital of France", "capital of Norway"], k=2)
    assert inner.calls[-1] == ["capital of France"]  # only the miss, in one call
    assert len(inner.calls) == 2
    assert second[0] == first[1] and second[2] == first[0]
    assert second[1] == inner.search(["capital of France"], k=2)[0]
    assert (cached.hits, cached.misses) == (2, 3)


def test_cache_key_includes_k_and_repeats_in_a_batch_are_fetched_once():
    inner = ScriptedRetriever({"q": ["a", "b", "c"]})
    cached = CachedRetriever(inner)
    out = cached.search(["q", "q", "q"], k=2)
    assert inner.calls == [(["q"], 2)]
    assert out[0] == out[1] == out[2] and len(out[0]) == 2
    assert (cached.hits, cached.misses) == (2, 1)
    cached.search(["q"], k=3)
    assert inner.calls[-1] == (["q"], 3)
    assert cached.misses == 2


def test_cache_evicts_the_least_recently_used():
    inner = ScriptedRetriever({q: [q] for q in "abcd"})
    cached = CachedRetriever(inner, maxsize=2)
    cached.search(["a", "b"], k=1)
    cached.search(["a"], k=1)  # a is now more recent than b
    cached.search(["c"], k=1)  # evicts b
    assert len(cached) == 2
    inner.calls.clear()
    cached.search(["a", "b", "c"], k=1)
    assert inner.calls == [(["b"], 1)]


def test_cache_returns_copies_and_can_be_disabled_or_cleared():
    inner = ScriptedRetriever({"q": ["a"]})
    cached = CachedRetriever(inner)
    cached.search(["q"], k=1)[0].append(P("junk"))
    assert [p.id for p in cached.search(["q"], k=1)[0]] == ["a"]
    cached.clear()
    assert cached.cache_info() == CacheInfo(0, 0, 100_000, 0)

    off = CachedRetriever(inner, maxsize=0)
    off.search(["q"], k=1)
    off.search(["q"], k=1)
    assert (off.hits, off.misses, len(off)) == (0, 2, 0)
    assert cached.search([], k=1) == []


def test_cache_checks_its_inner_retriever():
    class Broken:
        def search(self, queries, k):
            return [[]]

    with pytest.raises(RetrievalError, match="returned 1 lists for 2 queries"):
        CachedRetriever(Broken()).search(["a", "b"], k=1)
    with pytest.raises(TypeError, match="not a retriever"):
        CachedRetriever(object())
    with pytest.raises(ValueError, match="maxsize"):
        CachedRetriever(Broken(), maxsize=-1)
    with pytest.raises(TypeError):
        CachedRetriever(Broken()).search("a", k=1)


def test_cache_in_front_of_a_hybrid():
    a = ScriptedRetriever({"q": ["a", "b"]})
    b = ScriptedRetriever({"q": ["b", "c"]})
    cached = CachedRetriever(HybridRetriever([a, b], depth=5))
    first = cached.search(["q"], k=2)
    assert cached.search(["q"], k=2) == first
    assert len(a.calls) == len(b.calls) == 1
    assert [p.id for p in first[0]] == ["b", "a"]  # b: 1/62 + 1/61 beats a: 1/61
