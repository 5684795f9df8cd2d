"""A retriever that queries a retrieval server over HTTP (Search-R1's ``/retrieve`` API).

Works with ``search-env serve`` and with the reference server
(``search_r1/search/retrieval_server.py``): one POST of ``{"queries", "topk",
"return_scores"}`` per batch, answers parsed from either response shape
(``{"document": {...}, "score": s}`` items, or bare documents).

``timeout`` bounds each attempt by the wall clock: every socket operation of an attempt
(connect, send, each read) gets only what is left of it, so a server that trickles its
answer a byte at a time cannot stretch an attempt (httpx's own timeouts apply to each
operation separately).
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from search_env.retrievers.base import RetrievalError
from search_env.types import Passage

if TYPE_CHECKING:
    import httpx

__all__ = ["RemoteRetriever", "parse_passage", "parse_response"]

logger = logging.getLogger(__name__)


def _import_httpx() -> Any:
    try:
        import httpx
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("RemoteRetriever needs httpx: pip install 'search-env[server]'") from e
    return httpx


def _split_url(url: str) -> tuple[str, str]:
    """(base URL, /retrieve URL) from either form."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"url must be an http(s) URL, got {url!r}")
    url = url.rstrip("/")
    if url.endswith("/retrieve"):
        return url[: -len("/retrieve")], url
    return url, url + "/retrieve"


def parse_passage(item: Any) -> Passage:
    """One result item, with or without its score, as a `Passage`.

    Accepts ``{"document": {"id", "contents"}, "score": s}`` and the bare document
    ``{"id", "contents"}``. A document without ``contents`` but with ``title`` and
    ``text`` (some Lucene setups) gets wiki-18 style contents; a missing ``id`` becomes "".

    Raises:
        ValueError: If the item has no usable contents.
    """
    if not isinstance(item, dict):
        raise ValueError(f"result item must be an object, got {type(item).__name__}")
    score = None
    doc = item
    if isinstance(item.get("document"), dict):
        doc = item["document"]
        raw = item.get("score")
        score = None if raw is None else float(raw)
    contents = doc.get("contents")
    if contents is None and "title" in doc and "text" in doc:
        contents = f'"{doc["title"]}"\n{doc["text"]}'
    if not isinstance(contents, str):
        raise ValueError(f"result item has no 'contents' string: {str(item)[:200]}")
    pid = doc.get("id")
    return Passage("" if pid is None else str(pid), contents, score)


def parse_response(body: Any, num_queries: int) -> list[list[Passage]]:
    """``{"result": [[item, ...], ...]}`` as one passage list per query.

    Raises:
        ValueError: If the shape is wrong or the number of lists is not ``num_queries``.
    """
    result = body.get("result") if isinstance(body, dict) else None
    if not isinstance(result, list):
        raise ValueError(f"response has no 'result' list: {str(body)[:200]}")
    if len(result) != num_queries:
        raise ValueError(f"response has {len(result)} result lists for {num_queries} queries")
    out = []
    for i, hits in enumerate(result):
        if not isinstance(hits, list):
            raise ValueError(f"result[{i}] must be a list, got {type(hits).__name__}")
        out.append([parse_passage(item) for item in hits])
    return out


class _Deadline(threading.local):
    """The current attempt's wall-clock deadline, per thread (None: no deadline)."""

    at: float | None = None

    def clamp(self, timeout: float | None, error: type[Exception]) -> float | None:
        """``timeout`` cut to what is left of the deadline; raises ``error`` if none is."""
        if self.at is None:
            return timeout
        left = self.at - time.monotonic()
        if left <= 0:
            raise error("the attempt's deadline passed")
        return left if timeout is None else min(timeout, left)


def _deadline_backend(httpcore: Any, deadline: _Deadline) -> Any:
    """An httpcore network backend whose sockets honour ``deadline`` (made lazily: httpcore
    comes with httpx, an optional extra)."""

    class Stream(httpcore.NetworkStream):
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            return self._inner.read(max_bytes, deadline.clamp(timeout, httpcore.ReadTimeout))

        def write(self, buffer: bytes, timeout: float | None = None) -> None:
            self._inner.write(buffer, deadline.clamp(timeout, httpcore.WriteTimeout))

        def close(self) -> None:
            self._inner.close()

        def start_tls(
            self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
        ) -> Any:
            timeout = deadline.clamp(timeout, httpcore.ConnectTimeout)
            return Stream(self._inner.start_tls(ssl_context, server_hostname, timeout))

        def get_extra_info(self, info: str) -> Any:
            return self._inner.get_extra_info(info)

    class Backend(httpcore.NetworkBackend):
        def __init__(self) -> None:
            self._inner = httpcore.SyncBackend()

        def connect_tcp(
            self,
            host: str,
            port: int,
            timeout: float | None = None,
            local_address: str | None = None,
            socket_options: Any = None,
        ) -> Any:
            timeout = deadline.clamp(timeout, httpcore.ConnectTimeout)
            inner = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
            return Stream(inner)

        def connect_unix_socket(
            self, path: str, timeout: float | None = None, socket_options: Any = None
        ) -> Any:
            timeout = deadline.clamp(timeout, httpcore.ConnectTimeout)
            return Stream(self._inner.connect_unix_socket(path, timeout, socket_options))

        def sleep(self, seconds: float) -> None:
            self._inner.sleep(seconds)

    return Backend()


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds a 429 / 503 answer's ``Retry-After`` header asks for (delta or HTTP date)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class RemoteRetriever:
    """Searches a remote retrieval server; a drop-in `Retriever`.

    Each ``search`` call sends one request (or one per ``max_batch`` queries) on a
    kept-alive connection. Connection errors, timeouts, 5xx, 408 and 429 answers are
    retried after an exponential backoff with jitter (``backoff``, ``2 * backoff``,
    ``4 * backoff``... seconds, capped at ``max_backoff``, each times a random factor in
    [0.5, 1.5) so that many workers do not retry in lockstep); a ``Retry-After`` header
    sets the wait instead. Retrying stops after ``retries`` retries or when the next one
    would start more than ``retry_window`` seconds after the first attempt. The default
    60 s rides out a ``search-env serve`` restart (a small BM25 index with the numba
    backend, compile and warm-up included, answered after 39 s on a busy 2-core machine);
    raise it for an index that loads slower. Other 4xx answers
    are not retried (the request itself is wrong). When every attempt failed, a
    `RetrievalError` names the URL, the attempts, the time spent, the last cause and the
    options that give a slow server more time.

    A call returns or raises within about ``timeout + retry_window`` seconds (at most
    ``(retries + 1) * timeout`` plus the backoff waits).

    Args:
        url: ``http://host:port`` or the full ``http://host:port/retrieve`` URL.
        timeout: Wall-clock seconds one attempt may take: connecting, sending, waiting
            and reading the whole answer.
        retries: Most extra attempts after the first one (0: no retry).
        backoff: Seconds before the first retry; doubles each retry (before jitter).
        max_backoff: Longest wait between two attempts (before jitter).
        retry_window: No retry starts later than this many seconds after the first
            attempt started.
        return_scores: Ask for scores (``Passage.score``); otherwise scores are None.
        max_batch: Most queries per request; None sends each call in one request.
        transport: An httpx transport to use instead of the network (tests, proxies);
            ``timeout`` is then only httpx's per-operation timeout.

    Example:
        >>> with RemoteRetriever("http://127.0.0.1:8000", timeout=10) as r:  # doctest: +SKIP
        ...     r.search(["capital of Norway"], k=3)
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        retries: int = 10,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        retry_window: float = 60.0,
        return_scores: bool = True,
        max_batch: int | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._httpx = _import_httpx()  # not named httpx: that name is the module's type here
        seconds = {
            "timeout": timeout, "backoff": backoff, "max_backoff": max_backoff,
            "retry_window": retry_window,
        }  # fmt: skip
        for name, value in seconds.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                kind = type(value).__name__
                raise TypeError(f"{name} must be a number of seconds, got {kind}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        if isinstance(retries, bool) or not isinstance(retries, int):
            raise TypeError(f"retries must be an int, got {type(retries).__name__}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if not backoff >= 0:
            raise ValueError(f"backoff must be >= 0, got {backoff}")
        if not max_backoff >= backoff:
            raise ValueError(f"max_backoff ({max_backoff}) must be >= backoff ({backoff})")
        if not retry_window >= 0:
            raise ValueError(f"retry_window must be >= 0, got {retry_window}")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1 or None, got {max_batch}")
        self.base_url, self.url = _split_url(url)
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.retry_window = float(retry_window)
        self.return_scores = bool(return_scores)
        self.max_batch = max_batch
        self._rng = random.Random()
        self._deadline = _Deadline()
        self._client: httpx.Client = self._httpx.Client(timeout=self.timeout, transport=transport)
        if transport is None:
            self._clamp_sockets_to_the_deadline()

    # ------------------------------------------------------------------ Retriever
    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        """Retrieves up to ``k`` passages for each query.

        Raises:
            TypeError: If ``queries`` is a single string or holds a non-string.
            ValueError: If ``k < 1``.
            RetrievalError: If the server could not answer (after the retries), refused
                the request (4xx), or answered in an unexpected shape.
        """
        if isinstance(queries, (str, bytes)):
            raise TypeError("queries must be a sequence of strings, not a single string")
        queries = list(queries)
        for i, q in enumerate(queries):
            if not isinstance(q, str):
                raise TypeError(f"queries[{i}] must be a str, got {type(q).__name__}")
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"k must be an int, got {type(k).__name__}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not queries:
            return []
        step = self.max_batch or len(queries)
        out: list[list[Passage]] = []
        for lo in range(0, len(queries), step):
            out.extend(self._retrieve(queries[lo : lo + step], k))
        return out

    def health(self) -> dict[str, Any]:
        """The server's ``GET /health`` answer (no retries).

        Raises:
            RetrievalError: If the server is unreachable or answers with an error.
        """
        url = self.base_url + "/health"
        try:
            with self._attempt_deadline():
                response = self._client.get(url)
            response.raise_for_status()
            return response.json()
        except (self._httpx.HTTPError, ValueError) as e:
            raise RetrievalError(
                f"retrieval server health check at {url} failed: {type(e).__name__}: {e}"
            ) from e

    def close(self) -> None:
        """Closes the connection pool."""
        self._client.close()

    def __enter__(self) -> RemoteRetriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"RemoteRetriever({self.url!r}, timeout={self.timeout}, retries={self.retries}, "
            f"retry_window={self.retry_window})"
        )

    # ------------------------------------------------------------------ internals
    def _clamp_sockets_to_the_deadline(self) -> None:
        """Gives the client's connection pools (the direct one and any proxy from the
        environment) a network backend whose sockets stop at the attempt's deadline.

        httpx has no public hook for the socket layer, hence the private attributes; if
        they change, ``timeout`` falls back to httpx's per-operation meaning (logged).
        """
        import httpcore

        mounts = getattr(self._client, "_mounts", {}) or {}
        transports = [getattr(self._client, "_transport", None), *mounts.values()]
        pools: list[Any] = [getattr(t, "_pool", None) for t in transports if t is not None]
        pools = [pool for pool in pools if hasattr(pool, "_network_backend")]
        if not pools:  # pragma: no cover - a future httpx
            logger.warning("cannot reach httpx's sockets: timeout applies per socket operation")
        for pool in pools:
            pool._network_backend = _deadline_backend(httpcore, self._deadline)

    @contextmanager
    def _attempt_deadline(self) -> Iterator[None]:
        self._deadline.at = time.monotonic() + self.timeout
        try:
            yield
        finally:
            self._deadline.at = None

    def _delay(self, retry: int) -> float:
        """Backoff before retry number ``retry`` (1-based), with jitter."""
        base = min(self.max_backoff, self.backoff * 2 ** (retry - 1))
        return base * self._rng.uniform(0.5, 1.5)

    def _retrieve(self, queries: list[str], k: int) -> list[list[Passage]]:
        payload = {"queries": queries, "topk": k, "return_scores": self.return_scores}
        start = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            cause, asked = self._attempt(payload, len(queries))
            if cause is None:
                return asked
            if attempt > self.retries:
                stop = "no retries left"
                break
            delay = self._delay(attempt) if asked is None else asked
            elapsed = time.monotonic() - start
            if elapsed + delay > self.retry_window:
                stop = f"the next retry would start after the {self.retry_window:g} s retry window"
                break
            logger.warning(
                "retrieval request to %s failed (%s); retry %d/%d in %.2f s",
                self.url, cause, attempt, self.retries, delay,
            )  # fmt: skip
            time.sleep(delay)
        elapsed = time.monotonic() - start
        raise RetrievalError(
            f"retrieval server at {self.url} failed after {attempt} attempt(s) in "
            f"{elapsed:.1f} s: {cause} ({stop}). A server that is restarting (loading and "
            "warming up its index) or overloaded may need longer: raise retries=, "
            "retry_window= or timeout= (gym.make(..., retriever_options={...}))"
        )

    def _attempt(self, payload: dict[str, Any], num_queries: int) -> tuple[str | None, Any]:
        """One POST: ``(None, passages)`` on success, else ``(cause, Retry-After or None)``.

        Raises:
            RetrievalError: If the server refused the request (4xx other than 408 and
                429) or answered in an unexpected shape: retrying cannot help.
        """
        try:
            with self._attempt_deadline():
                response = self._client.post(self.url, json=payload)
        except self._httpx.TimeoutException as e:
            return f"timed out after {self.timeout:g} s ({type(e).__name__})", None
        except self._httpx.TransportError as e:
            return f"{type(e).__name__}: {e}", None
        status = response.status_code
        if status >= 500 or status in (408, 429):
            return f"HTTP {status}: {_detail(response)}", _retry_after(response)
        if status >= 400:
            raise RetrievalError(
                f"retrieval server at {self.url} refused the request: "
                f"HTTP {status}: {_detail(response)}"
            )
        try:
            return None, parse_response(response.json(), num_queries)
        except ValueError as e:
            raise RetrievalError(
                f"retrieval server at {self.url} sent an unexpected answer: {e}"
            ) from e


def _detail(response: httpx.Response) -> str:
    """The server's error message: FastAPI's ``detail`` field, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return str(body)[:500]
