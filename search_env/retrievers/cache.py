"""An LRU cache in front of any retriever.

RL rollouts repeat queries a lot (GRPO samples several answers per question, which
often issue the same first search), so answering repeats from memory saves encoder
and index time.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from search_env.retrievers.base import RetrievalError, Retriever
from search_env.types import Passage

__all__ = ["CacheInfo", "CachedRetriever"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheInfo:
    """Counters of a `CachedRetriever`."""

    hits: int
    misses: int
    maxsize: int
    currsize: int


class CachedRetriever:
    """Caches ``(query, k) -> passages`` with least-recently-used eviction.

    `search` is batched: the batch's cache misses go to the inner retriever in one
    call (each distinct query once); a query repeated within a batch counts as one
    miss and then hits.
    """

    def __init__(self, inner: Retriever, maxsize: int = 100_000) -> None:
        """Wraps ``inner``.

        Args:
            inner: The retriever to cache.
            maxsize: Most ``(query, k)`` entries kept; 0 disables caching.
        """
        if not callable(getattr(inner, "search", None)):
            raise TypeError(f"{inner!r} is not a retriever (no search method)")
        if maxsize < 0:
            raise ValueError(f"maxsize must be >= 0, got {maxsize}")
        self.inner = inner
        self.maxsize = int(maxsize)
        self._cache: OrderedDict[tuple[str, int], tuple[Passage, ...]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        """Like the inner retriever's `search`; only misses reach it, in one call.

        Raises:
            TypeError: If ``queries`` is a single string.
            RetrievalError: If the inner retriever returns a wrong number of lists.
        """
        if isinstance(queries, (str, bytes)):
            raise TypeError("queries must be a sequence of strings, not a single string")
        queries = list(queries)
        found: list[tuple[Passage, ...] | None] = [None] * len(queries)
        missing: dict[str, list[int]] = {}  # distinct missed query -> positions in the batch
        with self._lock:
            for i, q in enumerate(queries):
                key = (q, k)
                hit = self._cache.get(key)
                if hit is not None:
                    self._cache.move_to_end(key)
                    found[i] = hit
                    self.hits += 1
                elif q in missing:
                    missing[q].append(i)
                    self.hits += 1
                else:
                    missing[q] = [i]
                    self.misses += 1
        if missing:
            fetched = self.inner.search(list(missing), k)
            if len(fetched) != len(missing):
                raise RetrievalError(
                    f"{type(self.inner).__name__} returned {len(fetched)} lists "
                    f"for {len(missing)} queries"
                )
            with self._lock:
                for (q, positions), passages in zip(missing.items(), fetched):
                    value = tuple(passages)
                    for i in positions:
                        found[i] = value
                    if self.maxsize:
                        self._cache[(q, k)] = value
                        self._cache.move_to_end((q, k))
                while len(self._cache) > self.maxsize:
                    self._cache.popitem(last=False)
        return [list(passages or ()) for passages in found]

    def cache_info(self) -> CacheInfo:
        """Hits, misses and sizes so far."""
        with self._lock:
            return CacheInfo(self.hits, self.misses, self.maxsize, len(self._cache))

    def clear(self) -> None:
        """Empties the cache and resets the counters."""
        with self._lock:
            self._cache.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._cache)

    def __repr__(self) -> str:
        info = self.cache_info()
        return (
            f"CachedRetriever({self.inner!r}, maxsize={info.maxsize}, size={info.currsize}, "
            f"hits={info.hits}, misses={info.misses})"
        )
