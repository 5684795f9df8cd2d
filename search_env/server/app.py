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
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from search_env.retrievers.base import Retriever
from search_env.server.batching import MicroBatcher
from search_env.types import Passage

if TYPE_CHECKING:
    from fastapi import FastAPI, Request, Response

__all__ = [
    "DEFAULT_TOPK",
    "decode_body",
    "encode_answer",
    "RequestError",
    "RequestLimits",
    "RetrieveRequest",
    "create_app",
    "format_result",
    "parse_retrieve_request",
]

logger = logging.getLogger(__name__)

DEFAULT_TOPK = 3
"""The reference server's ``--topk`` default, used when a request has no ``topk``."""
MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")
_MSGPACK_MAP_FIRST_BYTES = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}
"""fixmap, map16, map32: no JSON text starts with these bytes."""
_ENVELOPE_BYTES = 1024
"""Body bytes besides the query strings: keys, ``topk``, ``return_scores``, brackets."""
_INLINE_BODY_BYTES = 64 << 10
"""Bodies up to this size are decoded on the event loop (a thread hop costs more)."""
_INLINE_PASSAGES = 2048
"""Answers up to this many passages are encoded on the event loop."""


def _import_msgspec() -> Any:
    try:
        import msgspec
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the retrieval server needs msgspec: pip install 'search-env[server]'"
        ) from e
    return msgspec


def _import_fastapi() -> Any:
    try:
        import fastapi
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the retrieval server needs fastapi and uvicorn: pip install 'search-env[server]'"
        ) from e
    return fastapi


class RequestError(ValueError):
    """A request the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RequestLimits:
    """Bounds on what one ``/retrieve`` request may ask for."""

    max_queries_per_request: int = 4096
    """Most queries in one request (Search-R1's GRPO runs send up to 2,560)."""
    max_topk: int = 100
    """Largest ``topk``."""
    max_query_chars: int = 2000
    """Longest query, in characters; longer ones are refused (422), not cut."""
    default_topk: int = DEFAULT_TOPK
    """``topk`` for requests that leave it out or send null."""
    max_body_bytes: int | None = None
    """Largest request body; None derives it from the other limits (`body_limit`)."""
    body_timeout_s: float = 10.0
    """Seconds a client has to send the whole body once its headers arrived; a slower
    (stalled, trickling) body gets a 408 and its connection is closed."""

    def __post_init__(self) -> None:
        for name in ("max_queries_per_request", "max_topk", "max_query_chars", "default_topk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.default_topk <= self.max_topk:
            raise ValueError(
                f"default_topk ({self.default_topk}) must be <= max_topk ({self.max_topk})"
            )
        if self.max_body_bytes is not None and self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1 or None, got {self.max_body_bytes}")
        if not self.body_timeout_s > 0:
            raise ValueError(f"body_timeout_s must be > 0, got {self.body_timeout_s}")

    @property
    def body_limit(self) -> int:
        """The body size limit in bytes.

        Derived, it is the size of the largest valid request: ``max_queries_per_request``
        queries of ``max_query_chars`` characters, each at most 4 bytes in UTF-8 (raw JSON
        or msgpack) plus 4 bytes of quotes, comma and space (or a msgpack string header),
        plus the envelope. A maximal request whose non-ASCII text a client escapes as
        ``\\uXXXX`` (6 bytes; Python's ``json.dumps`` default) needs more: raise
        ``max_body_bytes`` for those.
        """
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return self.max_queries_per_request * (4 * self.max_query_chars + 4) + _ENVELOPE_BYTES


@dataclass(frozen=True)
class RetrieveRequest:
    """A validated ``/retrieve`` request."""

    queries: tuple[str, ...]
    topk: int
    return_scores: bool
    single: bool = False
    """The request sent one ``query`` string (answered with a flat list)."""


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def parse_retrieve_request(
    payload: Any, limits: RequestLimits = RequestLimits()
) -> RetrieveRequest:
    """Validates a decoded request body.

    Takes ``queries`` (a list of strings) or ``query`` (one string; GEM's search tool).
    Unknown fields are ignored, as in the reference (pydantic's default).

    Raises:
        RequestError: With a message naming the field and the problem.
    """
    if not isinstance(payload, dict):
        raise RequestError(
            f"the request body must be an object with a 'queries' list, got {_type_name(payload)}"
        )
    single = "query" in payload
    if single and "queries" in payload:
        raise RequestError("send 'queries' (a list of strings) or 'query' (one string), not both")
    if single:
        query = payload["query"]
        if not isinstance(query, str):
            raise RequestError(f"'query' must be a string, got {_type_name(query)}")
        if len(query) > limits.max_query_chars:
            raise RequestError(
                f"'query' is {len(query)} characters long, the limit is {limits.max_query_chars}"
            )
    elif "queries" not in payload:
        raise RequestError("missing field 'queries' (a list of strings) or 'query' (a string)")
    queries = [payload["query"]] if single else payload["queries"]
    if not isinstance(queries, list):
        raise RequestError(f"'queries' must be a list of strings, got {_type_name(queries)}")
    if len(queries) > limits.max_queries_per_request:
        raise RequestError(
            f"too many queries: {len(queries)} in one request, the limit is "
            f"{limits.max_queries_per_request} (send several requests)"
        )
    for i, q in enumerate(queries):
        if not isinstance(q, str):
            raise RequestError(f"queries[{i}] must be a string, got {_type_name(q)}")
        if len(q) > limits.max_query_chars:
            raise RequestError(
                f"queries[{i}] is {len(q)} characters long, the limit is {limits.max_query_chars}"
            )

    topk = payload.get("topk")
    if topk is None:
        topk = limits.default_topk
    elif isinstance(topk, float) and math.isfinite(topk) and topk.is_integer():
        topk = int(topk)
    if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= limits.max_topk:
        raise RequestError(
            f"'topk' must be an integer from 1 to {limits.max_topk}, "
            f"got {topk!r} ({_type_name(topk)})"
        )

    return_scores = payload.get("return_scores")
    if return_scores is None:
        return_scores = False
    if not isinstance(return_scores, bool):
        raise RequestError(
            f"'return_scores' must be true or false, "
            f"got {return_scores!r} ({_type_name(return_scores)})"
        )
    return RetrieveRequest(tuple(queries), topk, return_scores, single)


def _item(p: Passage, return_scores: bool) -> dict[str, Any]:
    doc = {"id": p.id, "contents": p.contents}
    if not return_scores:
        return doc
    return {"document": doc, "score": None if p.score is None else float(p.score)}


def format_result(
    results: Sequence[Sequence[Passage]], return_scores: bool, single: bool = False
) -> dict[str, Any]:
    """The reference response body for one passage list per query.

    With ``single`` (a ``query`` request) ``result`` is the one query's flat item list.
    """
    lists = [[_item(p, return_scores) for p in hits] for hits in results]
    if single:
        if len(lists) != 1:
            raise ValueError(f"a single-query answer needs 1 result list, got {len(lists)}")
        return {"result": lists[0]}
    return {"result": lists}


def _is_msgpack(content_type: str | None, body: bytes) -> bool:
    if content_type:
        media = content_type.split(";", 1)[0].strip().lower()
        if media in MSGPACK_TYPES:
            return True
        if media.endswith("json"):
            return False
    # GEM's tool sends msgpack bytes with no Content-Type; a map's first byte cannot start JSON.
    return bool(body) and body[0] in _MSGPACK_MAP_FIRST_BYTES


def decode_body(body: bytes, content_type: str | None) -> tuple[Any, bool]:
    """Decodes a request body; returns ``(payload, is_msgpack)``.

    Raises:
        RequestError: (400) If the body is not valid JSON or msgpack.
    """
    msgspec = _import_msgspec()
    if _is_msgpack(content_type, body):
        try:
            return msgspec.msgpack.decode(body), True
        except msgspec.DecodeError as e:
            raise RequestError(f"malformed msgpack body: {e}", status=400) from e
    if not body.strip():
        raise RequestError(
            "empty request body: send a JSON object with a 'queries' list", status=400
        )
    try:
        return msgspec.json.decode(body), False
    except msgspec.DecodeError as e:
        raise RequestError(f"malformed JSON body: {e}", status=400) from e


def _decode_request(
    body: bytes, content_type: str | None, limits: RequestLimits
) -> tuple[RetrieveRequest, bool]:
    payload, as_msgpack = decode_body(body, content_type)
    return parse_retrieve_request(payload, limits), as_msgpack


@functools.cache
def _answer_types() -> tuple[type, type]:
    """msgspec structs for result items, made on first use (msgspec is an optional extra).

    ``gc=False``: a maximal answer holds 409,600 items; as tracked objects (dicts), the
    garbage collector passes over them again and again while they are built.
    """
    _import_msgspec()  # the clear ImportError when the extra is missing
    import msgspec  # the typed module: the structs' base and ``gc=`` are checked

    class Document(msgspec.Struct, gc=False):
        id: str
        contents: str

    class Scored(msgspec.Struct, gc=False):
        document: Document
        score: float | None

    return Document, Scored


def encode_answer(
    results: Sequence[Sequence[Passage]], request: RetrieveRequest, as_msgpack: bool
) -> bytes:
    """The response body bytes (msgpack or JSON) for ``request``'s results: the same
    document as `format_result` gives.

    Raises:
        TypeError: If a passage's fields have the wrong types.
        ValueError: If a single-query request got other than one result list.
    """
    msgspec = _import_msgspec()
    Document, Scored = _answer_types()
    encode = msgspec.msgpack.encode if as_msgpack else msgspec.json.encode
    if request.single and len(results) != 1:
        raise ValueError(f"a single-query answer needs 1 result list, got {len(results)}")

    def items(hits: Sequence[Passage]) -> list[Any]:
        if request.return_scores:
            return [
                Scored(Document(p.id, p.contents), None if p.score is None else float(p.score))
                for p in hits
            ]
        return [Document(p.id, p.contents) for p in hits]

    if request.single:
        return encode({"result": items(results[0])})
    # One encode call per query, spliced in as raw bytes: a single call over a maximal
    # answer would hold the GIL (and so the event loop) for a third of a second.
    return encode({"result": [msgspec.Raw(encode(items(hits))) for hits in results]})


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
    msgspec = _import_msgspec()
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

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.body_limit:
            raise RequestError(
                f"request body of {declared} bytes exceeds the limit of {limits.body_limit}", 413
            )
        body = bytearray()

        async def receive() -> None:
            async for chunk in request.stream():
                body.extend(chunk)
                if len(body) > limits.body_limit:
                    raise RequestError(
                        f"request body exceeds the limit of {limits.body_limit} bytes", 413
                    )

        try:
            # One deadline for the whole body (wall clock), not per chunk: a client that
            # trickles a byte a second must not keep its connection either. wait_for, not
            # asyncio.timeout: that is Python 3.11+, and 3.10 is supported.
            await asyncio.wait_for(receive(), limits.body_timeout_s)
        except asyncio.TimeoutError:  # not the builtin TimeoutError on 3.10
            raise RequestError(
                f"request body not received within {limits.body_timeout_s:g} s "
                f"({len(body)} bytes arrived)",
                408,
            ) from None
        return bytes(body)

    async def retrieve(request: Request) -> Response:
        """Search-R1 retrieval: one passage list per query (flat for a single ``query``)."""
        content_type = request.headers.get("content-type")
        try:
            body = await read_body(request)
            if len(body) > _INLINE_BODY_BYTES:  # keep the event loop free for other clients
                req, as_msgpack = await asyncio.to_thread(
                    _decode_request, body, content_type, limits
                )
            else:
                req, as_msgpack = _decode_request(body, content_type, limits)
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
                "content": {"application/json": {"schema": _REQUEST_SCHEMA}},
            }
        },
    )
    app.add_api_route("/health", health, methods=["GET"], response_class=Response)
    return app


_REQUEST_SCHEMA = {
    "type": "object",
    "oneOf": [{"required": ["queries"]}, {"required": ["query"]}],
    "properties": {
        "queries": {"type": "array", "items": {"type": "string"}},
        "query": {"type": "string", "description": "one query; answered with a flat list"},
        "topk": {"type": ["integer", "null"], "minimum": 1, "default": DEFAULT_TOPK},
        "return_scores": {"type": "boolean", "default": False},
    },
}
