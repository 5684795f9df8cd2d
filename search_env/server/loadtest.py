"""A light load generator for the retrieval server (tests and benchmarks, loopback only).

httpx's async connection pool costs milliseconds per request at 64 connections (its
pool scan is quadratic), so a load test driven by it measures the client, not the
server. `run_load` instead keeps one raw HTTP/1.1 keep-alive connection per simulated
client on asyncio streams: a few tens of microseconds of client work per request.
It speaks just enough HTTP for ``POST`` with a ``Content-Length`` answer, which is what
the retrieval server sends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["LoadResult", "RawConnection", "run_load"]


class RawConnection:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._host = host

    @classmethod
    async def open(cls, host: str, port: int) -> RawConnection:
        """Connects to ``host:port``."""
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, f"{host}:{port}")

    async def post(
        self, path: str, body: bytes, content_type: str = "application/json"
    ) -> tuple[int, bytes]:
        """Sends one POST and returns ``(status, body)``.

        Raises:
            ConnectionError: If the server closed the connection or answered without a
                Content-Length.
        """
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self._host}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode("ascii")
        self._writer.write(head + body)
        try:
            raw_head = await self._reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as e:
            raise ConnectionError("the server closed the connection") from e
        lines = raw_head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length is None:
            raise ConnectionError(f"answer without Content-Length (status {status})")
        return status, await self._reader.readexactly(length)

    async def close(self) -> None:
        """Closes the connection."""
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except ConnectionError:
            pass


@dataclass
class LoadResult:
    """What a load run measured."""

    requests: int = 0
    errors: int = 0
    """Requests answered with a status other than 200."""
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    """Seconds from send to full answer, one per request."""

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def latency_ms(self, q: float) -> float:
        """The ``q``-quantile (0..1) of the latencies, in milliseconds."""
        if not self.latencies:
            return float("nan")
        return float(np.quantile(self.latencies, q)) * 1e3


async def run_load(
    host: str,
    port: int,
    clients: int,
    next_body: Callable[[int], bytes],
    *,
    requests_per_client: int | None = None,
    duration: float | None = None,
    on_response: Callable[[int, bytes, int, bytes], None] | None = None,
    path: str = "/retrieve",
) -> LoadResult:
    """``clients`` connections, each sending its next request as soon as the last is answered.

    Args:
        host: Server address (loopback).
        port: Server port.
        clients: Concurrent connections.
        next_body: ``next_body(client_index)`` -> the next request body (JSON bytes).
        requests_per_client: Stop each client after this many requests, or
        duration: stop all clients after this many seconds (at least one must be set).
        on_response: Called with ``(client_index, request_body, status, answer_body)``
            for every answer, e.g. to check it.
        path: Request path.

    Returns:
        Counts, wall time and per-request latencies.
    """
    if requests_per_client is None and duration is None:
        raise ValueError("set requests_per_client or duration")
    result = LoadResult()
    connections = [await RawConnection.open(host, port) for _ in range(clients)]
    start = time.perf_counter()
    stop_at = start + duration if duration is not None else float("inf")

    async def client(i: int) -> None:
        conn = connections[i]
        sent = 0
        limit = requests_per_client if requests_per_client is not None else float("inf")
        while sent < limit and time.perf_counter() < stop_at:
            body = next_body(i)
            t0 = time.perf_counter()
            status, answer = await conn.post(path, body)
            result.latencies.append(time.perf_counter() - t0)
            result.requests += 1
            sent += 1
            if status != 200:
                result.errors += 1
            if on_response is not None:
                on_response(i, body, status, answer)

    try:
        await asyncio.gather(*(client(i) for i in range(clients)))
    finally:
        result.seconds = time.perf_counter() - start
        for conn in connections:
            await conn.close()
    return result
