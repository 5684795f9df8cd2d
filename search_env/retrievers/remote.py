"""A retriever that queries a retrieval server over HTTP (Search-R1's ``/retrieve`` API).

Works with ``search-env serve`` and with the reference server
(``search_r1/search/retrieval_server.py``): one POST of ``{"queries", "topk",
"return_scores"}`` per batch, answers parsed from either response shape
(``{"document": {...}, "score": s}`` items, or bare documents).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Sequence

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


class RemoteRetriever:
    """Searches a remote retrieval server; a drop-in `Retriever`.

    Each ``search`` call sends one request (or one per ``max_batch`` queries) on a
    kept-alive connection. Connection errors, timeouts and 5xx answers are retried
    with exponential backoff (``backoff``, ``2 * backoff``, ``4 * backoff``... seconds);
    4xx answers are not (the request itself is wrong). When every attempt failed, a
    `RetrievalError` names the URL, the number of attempts and the last cause.

    Args:
        url: ``http://host:port`` or the full ``http://host:port/retrieve`` URL.
        timeout: Seconds allowed for connecting, and between bytes of the answer.
        retries: Extra attempts after the first one (0: no retry).
        backoff: Seconds before the first retry; doubles each retry.
        return_scores: Ask for scores (``Passage.score``); otherwise scores are None.
        max_batch: Most queries per request; None sends each call in one request.
        transport: An httpx transport to use instead of the network (tests, proxies).

    Example:
        >>> with RemoteRetriever("http://127.0.0.1:8000") as r:  # doctest: +SKIP
        ...     r.search(["capital of Norway"], k=3)
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        return_scores: bool = True,
        max_batch: int | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        httpx = _import_httpx()
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if backoff < 0:
            raise ValueError(f"backoff must be >= 0, got {backoff}")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1 or None, got {max_batch}")
        self.base_url, self.url = _split_url(url)
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.return_scores = bool(return_scores)
        self.max_batch = max_batch
        self._httpx = httpx
        self._client: httpx.Client = httpx.Client(timeout=self.timeout, transport=transport)

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
        return f"RemoteRetriever({self.url!r}, timeout={self.timeout}, retries={self.retries})"

    # ------------------------------------------------------------------ internals
    def _retrieve(self, queries: list[str], k: int) -> list[list[Passage]]:
        payload = {"queries": queries, "topk": k, "return_scores": self.return_scores}
        attempts = self.retries + 1
        cause = ""
        for attempt in range(attempts):
            if attempt:
                delay = self.backoff * 2 ** (attempt - 1)
                logger.warning(
                    "retrieval request to %s failed (%s); retry %d/%d in %.2f s",
                    self.url, cause, attempt, self.retries, delay,
                )  # fmt: skip
                time.sleep(delay)
            try:
                response = self._client.post(self.url, json=payload)
            except self._httpx.TimeoutException as e:
                cause = f"timed out after {self.timeout:g} s ({type(e).__name__})"
                continue
            except self._httpx.TransportError as e:
                cause = f"{type(e).__name__}: {e}"
                continue
            if response.status_code >= 500:
                cause = f"HTTP {response.status_code}: {_detail(response)}"
                continue
            if response.status_code >= 400:
                raise RetrievalError(
                    f"retrieval server at {self.url} refused the request: "
                    f"HTTP {response.status_code}: {_detail(response)}"
                )
            try:
                return parse_response(response.json(), len(queries))
            except ValueError as e:
                raise RetrievalError(
                    f"retrieval server at {self.url} sent an unexpected answer: {e}"
                ) from e
        raise RetrievalError(
            f"retrieval server at {self.url} failed after {attempts} attempt(s): {cause}"
        )


def _detail(response: httpx.Response) -> str:
    """The server's error message: FastAPI's ``detail`` field, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return str(body)[:500]
