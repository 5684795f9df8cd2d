"""The ``/retrieve`` request: its limits, validation and JSON schema.

`parse_retrieve_request` turns a decoded body into a `RetrieveRequest` or raises a
`RequestError` carrying the HTTP status and a message naming the field; `RequestLimits`
bounds what one request may ask for. Body bytes are read and decoded in
:mod:`search_env.server.wire`; the routes live in :mod:`search_env.server.app`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

DEFAULT_TOPK = 3
"""The reference server's ``--topk`` default, used when a request has no ``topk``."""
_ENVELOPE_BYTES = 1024
"""Body bytes besides the query strings: keys, ``topk``, ``return_scores``, brackets."""


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


REQUEST_SCHEMA = {
    "type": "object",
    "oneOf": [{"required": ["queries"]}, {"required": ["query"]}],
    "properties": {
        "queries": {"type": "array", "items": {"type": "string"}},
        "query": {"type": "string", "description": "one query; answered with a flat list"},
        "topk": {"type": ["integer", "null"], "minimum": 1, "default": DEFAULT_TOPK},
        "return_scores": {"type": "boolean", "default": False},
    },
}
