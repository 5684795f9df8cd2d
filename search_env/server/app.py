"""The retrieval HTTP service: Search-R1's ``POST /retrieve`` over any `Retriever`.

Request (JSON, as Search-R1's rollout sends it; a msgpack body is understood too and
answered in msgpack)::

    {"queries": ["q1", "q2"], "topk": 3, "return_scores": true}

Response, one list per query, best first::

    {"result": [[{"document": {"id": "12", "contents": "..."}, "score": 7.1}, ...], ...]}

A single ``"query": "q1"`` string instead of ``queries`` (what GEM's search tool sends,
as msgpack without a Content-Type) is answered with the flat list of that query's items:
``{"result": [{"document": ..., "score": ...}, ...]}``. With ``"return_scores": false``
each item is the document itself (``{"id", "contents"}``).

Compatibility with the reference server (``search_r1/search/retrieval_server.py``):
field names, nesting and defaults are the same (``topk`` missing or null -> the server
default, 3; ``return_scores`` missing -> false). Differences, all on inputs the
reference mishandles: ``topk`` 0 is a 422 here (the reference silently uses its
default), strings such as ``"3"`` for ``topk`` or ``"true"`` for ``return_scores`` are
422s (pydantic coerces them there), limits on query count, query length and ``topk``
give 422s, and ``return_scores: false`` returns documents (the reference endpoint
unpacks the retriever's single return value into two and fails). Documents carry
``id`` and ``contents`` only (the reference's Lucene path returns ``title``, ``text``
and ``contents`` and no ``id``; its dense path the whole corpus row). Both rollout
clients read only ``["document"]["contents"]``.

Status codes: 400 malformed body, 408 body not received in time, 413 body too large
(both close the connection), 422 invalid request (the ``detail`` field says what and
where), 503 the retriever raised (the message is passed on; the server keeps serving),
500 only for a bug in this module. Decoding a large body and encoding a large answer
run in a worker thread, so a maximal request does not hold up other clients.

This module builds the app and its routes (`create_app`); the request model and its
validation are in :mod:`search_env.server.requests`, body decoding and answer encoding
in :mod:`search_env.server.wire`, micro-batching in :mod:`search_env.server.batching`
and the ``serve`` entry point in :mod:`search_env.server.launch`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from search_env.retrievers.base import Retriever
from search_env.server.batching import MicroBatcher
from search_env.server.requests import DEFAULT_TOPK, REQUEST_SCHEMA, RequestError, RequestLimits
from search_env.server.wire import decode_request, encode_answer, import_msgspec, read_body

if TYPE_CHECKING:
    from fastapi import FastAPI, Request, Response

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

_INLINE_BODY_BYTES = 64 << 10
"""Bodies up to this size are decoded on the event loop (a thread hop costs more)."""
_INLINE_PASSAGES = 2048
"""Answers up to this many passages are encoded on the event loop."""


def _import_fastapi() -> Any:
    try:
        import fastapi
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the retrieval server needs fastapi and uvicorn: pip install 'search-env[server]'"
        ) from e
    return fastapi


def _guess_kind(retriever: Any) -> str:
    name = type(retriever).__name__
    if name.endswith("Retriever") and name != "Retriever":
        return name[: -len("Retriever")].lower()
    return name


def _num_passages(retriever: Any, info: dict[str, Any]) -> int | None:
    if isinstance(info.get("num_passages"), int):
        return info["num_passages"]
    try:
        return len(retriever)
    except TypeError:
        return None


def create_app(
    retriever: Retriever,
    *,
    max_batch: int = 512,
    max_wait_ms: float = 5.0,
    batching: bool = True,
    max_queries_per_request: int = 4096,
    max_topk: int = 100,
    max_query_chars: int = 2000,
    default_topk: int = DEFAULT_TOPK,
    max_body_bytes: int | None = None,
    body_timeout_s: float = 10.0,
    info: dict[str, Any] | None = None,
) -> FastAPI:
    """A FastAPI app serving ``POST /retrieve`` and ``GET /health`` over ``retriever``.

    Args:
        retriever: Anything with ``search(queries, k)``; called from one worker thread.
        max_batch: Most queries merged into one ``search`` call.
        max_wait_ms: Longest a request is held for others to join its batch (only
            while others keep arriving; a lone request goes at once).
        batching: If False, each request gets its own ``search`` call.
        max_queries_per_request: Requests with more queries get a 422.
        max_topk: Largest ``topk`` accepted.
        max_query_chars: Longest query accepted, in characters.
        default_topk: ``topk`` for requests without one (the reference's default, 3).
        max_body_bytes: Largest request body (413 beyond); None derives it from the
            other limits (`RequestLimits.body_limit`).
        body_timeout_s: Seconds allowed for receiving a body after its headers (408
            beyond): a stalled or trickling upload does not hold a connection forever.
        info: Facts about the index (kind, path, sizes...) shown by ``/health``.

    Returns:
        The app; ``app.state.batcher`` holds the `MicroBatcher` and its counters.
    """
    fastapi = _import_fastapi()
    from fastapi.responses import JSONResponse, Response
    from starlette.requests import ClientDisconnect
    from starlette.requests import Request as StarletteRequest

    if not callable(getattr(retriever, "search", None)):
        raise TypeError(
            f"retriever must have a search(queries, k) method, got {type(retriever).__name__}"
        )
    msgspec = import_msgspec()
    limits = RequestLimits(
        max_queries_per_request=max_queries_per_request,
        max_topk=max_topk,
        max_query_chars=max_query_chars,
        default_topk=default_topk,
        max_body_bytes=max_body_bytes,
        body_timeout_s=body_timeout_s,
    )
    batcher = MicroBatcher(
        retriever.search, max_batch=max_batch, max_wait_ms=max_wait_ms, enabled=batching
    )
    info = json.loads(json.dumps(info or {}, default=str))  # JSON-safe once, not per /health
    started = time.time()
    counters = {"bad_requests": 0, "retriever_errors": 0}

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        await batcher.close()

    app = fastapi.FastAPI(
        title="search-env retrieval server",
        description="Search-R1 compatible retrieval API with dynamic micro-batching.",
        lifespan=lifespan,
    )
    app.state.retriever = retriever
    app.state.batcher = batcher
    app.state.limits = limits

    def error(status: int, message: str) -> Response:
        if status < 500:
            counters["bad_requests"] += 1
        # The rest of a refused or stalled body is not read: close rather than parse it.
        headers = {"connection": "close"} if status in (408, 413) else None
        return JSONResponse({"detail": message}, status_code=status, headers=headers)

    async def retrieve(request: Request) -> Response:
        """Search-R1 retrieval: one passage list per query (flat for a single ``query``)."""
        content_type = request.headers.get("content-type")
        try:
            body = await read_body(request, limits)
            if len(body) > _INLINE_BODY_BYTES:  # keep the event loop free for other clients
                req, as_msgpack = await asyncio.to_thread(
                    decode_request, body, content_type, limits
                )
            else:
                req, as_msgpack = decode_request(body, content_type, limits)
        except RequestError as e:
            return error(e.status, str(e))
        except ClientDisconnect:
            return error(400, "client disconnected while sending the body")
        del body
        try:
            results = await batcher.submit(req.queries, req.topk)
        except Exception as e:
            counters["retriever_errors"] += 1
            message = f"retrieval failed: {type(e).__name__}: {e}"
            logger.warning("%s (request of %d queries)", message, len(req.queries))
            return JSONResponse({"detail": message}, status_code=503)
        try:
            if sum(len(hits) for hits in results) > _INLINE_PASSAGES:
                content = await asyncio.to_thread(encode_answer, results, req, as_msgpack)
            else:
                content = encode_answer(results, req, as_msgpack)
        except Exception as e:  # the retriever returned something that is not passages
            logger.exception("cannot encode the retriever's answer")
            message = f"cannot encode the retriever's answer: {type(e).__name__}: {e}"
            return JSONResponse({"detail": message}, status_code=500)
        media_type = "application/msgpack" if as_msgpack else "application/json"
        return Response(content, media_type=media_type)

    async def health() -> Response:
        """Server status, retriever and index facts, batching settings and counters."""
        body = {
            "status": "ok",
            "retriever": {
                "class": type(retriever).__name__,
                "kind": info.get("kind") or _guess_kind(retriever),
            },
            "num_passages": _num_passages(retriever, info),
            "index": info,
            "batching": batcher.settings(),
            "limits": {
                "max_queries_per_request": limits.max_queries_per_request,
                "max_topk": limits.max_topk,
                "max_query_chars": limits.max_query_chars,
                "default_topk": limits.default_topk,
                "max_body_bytes": limits.body_limit,
                "body_timeout_s": limits.body_timeout_s,
            },
            "counters": {**batcher.stats.as_dict(), **counters},
            "uptime_s": round(time.time() - started, 3),
        }
        return Response(msgspec.json.encode(body), media_type="application/json")

    # Annotations are strings here (postponed evaluation) and fastapi is imported
    # lazily, so hand FastAPI the classes it uses to recognize the Request parameter.
    retrieve.__annotations__.update({"request": StarletteRequest, "return": Response})
    health.__annotations__.update({"return": Response})
    app.add_api_route(
        "/retrieve",
        retrieve,
        methods=["POST"],
        response_class=Response,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": REQUEST_SCHEMA}},
            }
        },
    )
    app.add_api_route("/health", health, methods=["GET"], response_class=Response)
    return app
