"""Wire formats of ``/retrieve``: reading and decoding request bodies (JSON or msgpack)
and encoding answers.

`read_body` enforces the body size limit and deadline, `decode_body` / `decode_request`
turn bytes into a validated request, `encode_answer` (fast, msgspec structs) and
`format_result` (plain dicts, the reference document) build the response. msgspec is an
optional extra, imported on first use.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from search_env.server.requests import (
    RequestError,
    RequestLimits,
    RetrieveRequest,
    parse_retrieve_request,
)
from search_env.types import Passage

if TYPE_CHECKING:
    from fastapi import Request

MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")
_MSGPACK_MAP_FIRST_BYTES = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}
"""fixmap, map16, map32: no JSON text starts with these bytes."""


def import_msgspec() -> Any:
    """The msgspec module, or an ImportError naming the extra that installs it."""
    try:
        import msgspec
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the retrieval server needs msgspec: pip install 'search-env[server]'"
        ) from e
    return msgspec


async def read_body(request: Request, limits: RequestLimits) -> bytes:
    """The request's body, at most ``limits.body_limit`` bytes within ``body_timeout_s``.

    Raises:
        RequestError: (413) If the body is too large, (408) if it is not received in time.
    """
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
    msgspec = import_msgspec()
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


def decode_request(
    body: bytes, content_type: str | None, limits: RequestLimits
) -> tuple[RetrieveRequest, bool]:
    """Decodes and validates a request body; returns ``(request, is_msgpack)``."""
    payload, as_msgpack = decode_body(body, content_type)
    return parse_retrieve_request(payload, limits), as_msgpack


@functools.cache
def _answer_types() -> tuple[type, type]:
    """msgspec structs for result items, made on first use (msgspec is an optional extra).

    ``gc=False``: a maximal answer holds 409,600 items; as tracked objects (dicts), the
    garbage collector passes over them again and again while they are built.
    """
    import_msgspec()  # the clear ImportError when the extra is missing
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
    msgspec = import_msgspec()
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
