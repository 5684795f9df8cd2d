"""Hybrid retrieval: several retrievers fused by reciprocal-rank fusion (RRF).

A passage's fused score is ``sum_r w_r / (k_rrf + rank_r)`` over the retrievers ``r``
that returned it, with ``rank_r`` its 1-based rank there (Cormack et al., 2009; the
usual ``k_rrf = 60``). Passages are matched by id. Only ranks matter, so BM25 and
inner-product scores need no normalisation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from search_env.retrievers.base import RetrievalError, Retriever
from search_env.types import Passage

__all__ = ["HybridRetriever", "rrf_fuse"]

logger = logging.getLogger(__name__)


def rrf_fuse(
    ranked_lists: Sequence[Sequence[Passage]], weights: Sequence[float], k_rrf: float, k: int
) -> list[Passage]:
    """Fuses one query's ranked lists (best first) into the top ``k`` by RRF.

    A passage repeated within one list counts at its best rank. Ties keep the order
    in which passages were first seen (retriever order, then rank).

    Returns:
        Up to ``k`` passages, best first, with ``score`` = the fused score.
    """
    scores: dict[str, float] = {}
    first: dict[str, Passage] = {}
    for ranked, weight in zip(ranked_lists, weights):
        seen: set[str] = set()
        for rank, passage in enumerate(ranked, start=1):
            if passage.id in seen:
                continue
            seen.add(passage.id)
            first.setdefault(passage.id, passage)
            scores[passage.id] = scores.get(passage.id, 0.0) + weight / (k_rrf + rank)
    order = sorted(scores, key=scores.__getitem__, reverse=True)  # stable: ties by first sight
    return [first[pid].with_score(scores[pid]) for pid in order[:k]]


class HybridRetriever:
    """Fuses several retrievers (e.g. BM25 + dense) by weighted reciprocal-rank fusion.

    Each `search` calls every sub-retriever once for the whole batch, asking each for
    ``max(depth, k)`` passages per query.
    """

    def __init__(
        self,
        retrievers: Sequence[Retriever],
        weights: Sequence[float] | None = None,
        k_rrf: float = 60.0,
        depth: int = 50,
    ) -> None:
        """Sets up the fusion.

        Args:
            retrievers: The retrievers to fuse (at least one).
            weights: One non-negative weight per retriever (default: all 1).
            k_rrf: The RRF constant; larger values flatten the rank discount.
            depth: Passages asked of each retriever per query (at least ``k``).

        Raises:
            ValueError: On an empty retriever list or a bad weight, ``k_rrf`` or depth.
            TypeError: If a retriever has no ``search`` method.
        """
        self.retrievers = list(retrievers)
        if not self.retrievers:
            raise ValueError("HybridRetriever needs at least one retriever")
        for r in self.retrievers:
            if not callable(getattr(r, "search", None)):
                raise TypeError(f"{r!r} is not a retriever (no search method)")
        if weights is None:
            weights = [1.0] * len(self.retrievers)
        self.weights = [float(w) for w in weights]
        if len(self.weights) != len(self.retrievers):
            raise ValueError(f"{len(self.weights)} weights for {len(self.retrievers)} retrievers")
        if any(w < 0 for w in self.weights) or not any(w > 0 for w in self.weights):
            raise ValueError(f"weights must be >= 0 with at least one > 0, got {self.weights}")
        if k_rrf < 0:
            raise ValueError(f"k_rrf must be >= 0, got {k_rrf}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.k_rrf = float(k_rrf)
        self.depth = int(depth)

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        """Retrieves up to ``k`` fused passages per query, best first.

        Raises:
            ValueError: If ``k < 1``.
            TypeError: If ``queries`` is a single string.
            RetrievalError: If a sub-retriever returns a wrong number of lists.
        """
        if isinstance(queries, (str, bytes)):
            raise TypeError("queries must be a sequence of strings, not a single string")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = list(queries)
        if not queries:
            return []
        depth = max(self.depth, k)
        per_retriever = []
        for r in self.retrievers:
            results = r.search(queries, depth)
            if len(results) != len(queries):
                raise RetrievalError(
                    f"{type(r).__name__} returned {len(results)} lists for {len(queries)} queries"
                )
            per_retriever.append(results)
        return [
            rrf_fuse([results[i] for results in per_retriever], self.weights, self.k_rrf, k)
            for i in range(len(queries))
        ]

    def __repr__(self) -> str:
        names = ", ".join(type(r).__name__ for r in self.retrievers)
        return (
            f"HybridRetriever([{names}], weights={self.weights}, k_rrf={self.k_rrf}, "
            f"depth={self.depth})"
        )
