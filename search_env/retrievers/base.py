"""The retriever protocol: a batched search over a passage collection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from search_env.types import Passage


class RetrievalError(RuntimeError):
    """A retriever could not answer (server down, corrupt index, ...)."""


class CorruptIndexError(RetrievalError):
    """An index directory is missing files, damaged or built from another corpus."""


@runtime_checkable
class Retriever(Protocol):
    """Anything that answers a batch of queries with ``k`` passages each.

    ``search(["q1", "q2"], k=3)`` returns one list per query, best first. Implementations
    should make one call do the whole batch: the vector env sends every sub-env's query
    in a single call.
    """

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]: ...
