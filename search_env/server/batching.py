"""Dynamic micro-batching: concurrent requests merged into one retriever call.

Rollout workers that follow GEM send one query per HTTP request, many requests at a
time. Answering each with its own ``retriever.search`` call pays the per-call cost
(thread hand-off, bm25s/numba launch, encoder forward pass, GPU kernel launch) once
per query. `MicroBatcher` answers whatever requests wait with one call in a worker
thread and splits the result back. While a call runs, new requests queue up and form
the next batch, so under load batches form without any waiting. When the worker is
idle, a new batch lingers only while more requests keep arriving, and at most
``max_wait_ms`` after its oldest request (or until ``max_batch`` queries wait): a lone
client is not held back, a burst of simultaneous requests goes in one call.

Requests with different ``k`` share a batching window and are answered with one call
per distinct ``k`` (usually there is one). Searching with the largest ``k`` and cutting
would save those calls but make an answer depend on its neighbours in the batch: where
scores tie exactly at the cut (duplicate passages, short queries), a prefix of a top-5
need not equal a top-3. Here every answer is exactly what a direct
``retriever.search(queries, k)`` of that request returns, for any retriever that answers
each query of a call independently of the others (BM25Retriever does).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from search_env.retrievers.base import RetrievalError
from search_env.types import Passage

__all__ = ["BatchStats", "MicroBatcher"]

logger = logging.getLogger(__name__)

SearchFn = Callable[[list[str], int], list[list[Passage]]]
_QUIET_TURNS = 3
"""Event-loop turns without a new request after which a lingering batch is sent: a
request whose bytes have arrived reaches `submit` within one or two turns."""


@dataclass
class BatchStats:
    """Counters since the batcher started (updated on the event loop only)."""

    requests: int = 0
    """Requests answered or failed (requests with no queries included)."""
    queries: int = 0
    """Queries in those requests."""
    batches: int = 0
    """Retriever calls made (fallback calls after a failed batch included)."""
    failed_requests: int = 0
    """Requests answered with a retriever error."""
    max_batch_queries: int = 0
    """The most queries one call has answered."""
    search_seconds: float = 0.0
    """Wall time spent inside ``retriever.search``."""

    def as_dict(self) -> dict[str, Any]:
        """The counters plus derived means, JSON-ready."""
        return {
            "requests": self.requests,
            "queries": self.queries,
            "batches": self.batches,
            "failed_requests": self.failed_requests,
            "max_batch_queries": self.max_batch_queries,
            "mean_queries_per_batch": (
                round(self.queries / self.batches, 3) if self.batches else None
            ),
            "search_seconds": round(self.search_seconds, 6),
        }


@dataclass
class _Job:
    queries: list[str]
    k: int
    future: asyncio.Future[list[list[Passage]]]
    enqueued: float = field(default=0.0)


class MicroBatcher:
    """Merges concurrent ``submit`` calls into few ``search`` calls on one worker thread.

    All ``search`` calls run on a single worker thread, one at a time, whether batching
    is on or off: retrievers are not required to be thread-safe (numba's default
    threading layer, for one, must not be entered from two threads at once), and one
    call already uses every core it is given.

    Args:
        search: ``search(queries, k) -> one passage list per query`` (a retriever's
            ``search`` method).
        max_batch: Most queries in one call. A single request with more queries is
            still answered in one call of its own.
        max_wait_ms: Longest time the oldest waiting request is held back while
            others keep arriving to join it. 0 sends whatever is waiting at once.
        enabled: If False, every request gets its own call (no merging).
    """

    def __init__(
        self,
        search: SearchFn,
        *,
        max_batch: int = 512,
        max_wait_ms: float = 5.0,
        enabled: bool = True,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self._search = search
        self.max_batch = int(max_batch)
        self.max_wait_ms = float(max_wait_ms)
        self.enabled = bool(enabled)
        self.stats = BatchStats()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="search-env-retrieve")
        self._pending: deque[_Job] = deque()
        self._pending_queries = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # ------------------------------------------------------------------ public
    async def submit(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        """Answers ``queries`` with up to ``k`` passages each.

        Raises:
            Exception: Whatever the retriever raised for this request's batch (when a
                merged batch fails, its requests are retried one by one, so only the
                requests that fail on their own see an error).
            RuntimeError: If the batcher is closed.
        """
        if self._closed:
            raise RuntimeError("the retrieval server is shutting down")
        queries = list(queries)
        if not queries:
            self.stats.requests += 1
            return []
        if not self.enabled:
            return await self._submit_direct(queries, k)
        loop = asyncio.get_running_loop()
        self._ensure_worker(loop)
        job = _Job(queries, k, loop.create_future(), loop.time())
        self._pending.append(job)
        self._pending_queries += len(queries)
        assert self._wakeup is not None
        self._wakeup.set()
        return await job.future

    async def close(self) -> None:
        """Stops the batching task, fails waiting requests, releases the worker thread."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(RuntimeError("the retrieval server is shutting down"))
        self._pending_queries = 0
        self._executor.shutdown(wait=False, cancel_futures=True)

    def settings(self) -> dict[str, Any]:
        """The batching settings, JSON-ready."""
        return {
            "enabled": self.enabled,
            "max_batch": self.max_batch,
            "max_wait_ms": self.max_wait_ms,
        }

    # ------------------------------------------------------------------ internals
    def _ensure_worker(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is None or self._task.done():
            if self._task is not None and not self._task.cancelled() and self._task.exception():
                logger.error("batching task died: %r; restarting it", self._task.exception())
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._run(), name="search-env-microbatcher")

    def _timed_search(self, queries: list[str], k: int) -> tuple[list[list[Passage]], float]:
        start = time.perf_counter()
        results = self._search(queries, k)
        elapsed = time.perf_counter() - start
        if not isinstance(results, list) or len(results) != len(queries):
            got = len(results) if isinstance(results, list) else type(results).__name__
            raise RetrievalError(
                f"retriever returned {got} result lists for {len(queries)} queries"
            )
        return results, elapsed

    async def _call(self, queries: list[str], k: int) -> list[list[Passage]]:
        loop = asyncio.get_running_loop()
        self.stats.batches += 1
        self.stats.max_batch_queries = max(self.stats.max_batch_queries, len(queries))
        results, elapsed = await loop.run_in_executor(
            self._executor, self._timed_search, queries, k
        )
        self.stats.search_seconds += elapsed
        return results

    async def _submit_direct(self, queries: list[str], k: int) -> list[list[Passage]]:
        try:
            return await self._call(queries, k)
        except Exception:
            self.stats.failed_requests += 1
            raise
        finally:
            self.stats.requests += 1
            self.stats.queries += len(queries)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wakeup is not None
        wakeup = self._wakeup
        while True:
            while not self._pending:
                wakeup.clear()
                await wakeup.wait()
            # Linger while requests keep arriving: stop when the batch is full, when the
            # oldest request has waited max_wait_ms, or as soon as a few event-loop turns
            # bring nobody new (so a lone client pays microseconds, not max_wait_ms).
            # Requests that queued during the previous call go at once unless more keep
            # coming.
            deadline = self._pending[0].enqueued + self.max_wait_ms / 1000.0
            while self._pending_queries < self.max_batch and loop.time() < deadline:
                waiting = len(self._pending)
                for _ in range(_QUIET_TURNS):
                    await asyncio.sleep(0)
                if len(self._pending) == waiting:
                    break
            batch = self._take_batch()
            try:
                await self._answer(batch)
            except BaseException as e:  # cancelled by close(): leave no request hanging
                for job in batch:
                    if not job.future.done():
                        stopped = RuntimeError(f"the retrieval server stopped: {e!r}")
                        job.future.set_exception(stopped)
                raise

    def _take_batch(self) -> list[_Job]:
        batch: list[_Job] = []
        n = 0
        while self._pending:
            job = self._pending[0]
            if batch and n + len(job.queries) > self.max_batch:
                break
            self._pending.popleft()
            self._pending_queries -= len(job.queries)
            if job.future.done():  # the client went away (request cancelled)
                continue
            batch.append(job)
            n += len(job.queries)
        return batch

    async def _answer(self, batch: list[_Job]) -> None:
        by_k: dict[int, list[_Job]] = {}
        for job in batch:
            by_k.setdefault(job.k, []).append(job)
        for k, jobs in by_k.items():
            await self._answer_same_k(jobs, k)

    async def _answer_same_k(self, jobs: list[_Job], k: int) -> None:
        queries = [q for job in jobs for q in job.queries]
        try:
            results = await self._call(queries, k)
        except Exception as e:
            if len(jobs) == 1:
                self._finish(jobs[0], error=e)
                return
            # One bad request must not fail its neighbours: answer each on its own.
            logger.warning(
                "batched search of %d requests failed (%s); retrying them one by one", len(jobs), e
            )
            for job in jobs:
                try:
                    self._finish(job, await self._call(job.queries, job.k))
                except Exception as job_error:
                    self._finish(job, error=job_error)
            return
        start = 0
        for job in jobs:
            self._finish(job, results[start : start + len(job.queries)])
            start += len(job.queries)

    def _finish(
        self,
        job: _Job,
        results: list[list[Passage]] | None = None,
        *,
        error: BaseException | None = None,
    ) -> None:
        self.stats.requests += 1
        self.stats.queries += len(job.queries)
        if error is not None:
            self.stats.failed_requests += 1
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            assert results is not None  # every caller passes results or error=
            job.future.set_result(results)
