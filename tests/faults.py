"""Test doubles that fail on purpose: a retriever that is down for a while, a long question."""

from __future__ import annotations

from typing import Sequence

from search_env.retrievers.base import RetrievalError
from search_env.types import Passage, QAExample
from tests.conftest import PASSAGES, MemoryRetriever

# A question whose prompt cannot fit a 4096-token context with the test tokenizer.
LONG_QUESTION = QAExample("long", "word " * 5000, ("x",))


class FlakyRetriever(MemoryRetriever):
    """A :class:`MemoryRetriever` whose next ``failures`` calls raise (a server that is down).

    Failed calls are not recorded in ``calls``; ``failed`` counts them.
    """

    def __init__(self, passages: Sequence[Passage] = PASSAGES, failures: int = 0) -> None:
        super().__init__(passages)
        self.failures = failures
        self.failed = 0

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        if self.failures > 0:
            self.failures -= 1
            self.failed += 1
            raise RetrievalError("server at http://127.0.0.1:9 is down")
        return super().search(queries, k)
