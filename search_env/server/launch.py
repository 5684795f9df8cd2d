"""Running the retrieval server: uvicorn in the foreground or a background thread, and the
``search-env serve`` command's arguments. Index directories are opened by the kind their
manifest names (`search_env.retrievers.loading`).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from search_env.retrievers.base import RetrievalError, Retriever
from search_env.retrievers.loading import index_info, load_index, register_index_kind

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = [
    "ServerThread",
    "add_serve_arguments",
    "index_info",
    "load_index",
    "register_index_kind",
    "run_serve",
    "serve",
    "warm_up",
]

logger = logging.getLogger(__name__)


def warm_up(retriever: Retriever) -> None:
    """Makes one real search so that one-time costs (numba compile: ~10 s) are not paid by
    the first client, whose timeout may be short (GEM's search tool waits 5 s).

    Calls ``retriever.warmup()`` if it has one; for a BM25 index, searches the text of its
    first passage. Failures are logged, not raised: the server can still start.
    """
    try:
        warmup = getattr(retriever, "warmup", None)  # optional: not in the Retriever protocol
        if callable(warmup):
            warmup()
            return
        # BM25Retriever has no public "any passage" accessor: use its store.
        store = getattr(retriever, "_store", None)
        if store is not None and len(store) > 0:
            retriever.search([store.passage(0).contents[:500]], 1)
    except Exception as e:  # pragma: no cover - depends on the retriever
        logger.warning("warm-up search failed: %s: %s", type(e).__name__, e)


def _import_uvicorn() -> Any:
    try:
        import uvicorn
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the retrieval server needs fastapi and uvicorn: pip install 'search-env[server]'"
        ) from e
    return uvicorn


def _warn_if_exposed(host: str) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        logger.warning(
            "binding the retrieval server to %s: it has no authentication, "
            "anyone who can reach it can query it",
            host,
        )


def _uvicorn_config(app: FastAPI, host: str, port: int, log_level: str) -> Any:
    uvicorn = _import_uvicorn()
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,  # one log line per request would cost more than a BM25 search
        timeout_graceful_shutdown=5,
        timeout_keep_alive=30,  # rollout workers keep connections open between turns
    )


def serve(
    retriever: Retriever,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    log_level: str = "info",
    **app_kwargs: Any,
) -> None:
    """Serves ``retriever`` until interrupted (Ctrl-C).

    Args:
        retriever: The retriever to serve.
        host: Address to bind; loopback by default. Anything else exposes the server
            (without authentication) and is logged as a warning.
        port: TCP port.
        log_level: uvicorn's log level.
        **app_kwargs: Passed to `create_app` (``max_batch``, ``max_wait_ms``, ...).
    """
    from search_env.server.app import create_app

    _warn_if_exposed(host)
    app = create_app(retriever, **app_kwargs)
    logger.info("serving %s on http://%s:%d/retrieve", type(retriever).__name__, host, port)
    _import_uvicorn().Server(_uvicorn_config(app, host, port, log_level)).run()


class ServerThread:
    """Runs an app under uvicorn in a background thread (tests, benchmarks, notebooks).

    ``with ServerThread(app) as server: RemoteRetriever(server.url)`` starts the server
    on a free loopback port and stops it on exit.
    """

    def __init__(
        self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning"
    ) -> None:
        _warn_if_exposed(host)
        self.host = host
        self._server = _import_uvicorn().Server(_uvicorn_config(app, host, port, log_level))
        self._thread = threading.Thread(target=self._run, name="search-env-server", daemon=True)
        self._error: BaseException | None = None
        self.port = port

    def _run(self) -> None:
        try:
            self._server.run()
        except BaseException as e:  # uvicorn raises SystemExit when it cannot bind
            self._error = e.__context__ if isinstance(e, SystemExit) and e.__context__ else e

    def start(self, timeout: float = 10.0) -> ServerThread:
        """Starts the server and waits until it accepts connections.

        Raises:
            RuntimeError: If it failed to start (port in use, ...) or took too long.
        """
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                cause = f": {self._error}" if self._error is not None else " (see the log)"
                raise RuntimeError(
                    f"the retrieval server failed to start on {self.host}:{self.port}{cause}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the retrieval server did not start within {timeout} s")
            time.sleep(0.005)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:8000``."""
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        """Asks the server to exit and waits for the thread (at most ``timeout`` s)."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------- CLI
def add_serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds ``search-env serve``'s arguments to ``parser``; returns it."""
    add = parser.add_argument
    add("--index", required=True, help="index directory (its manifest.json names the kind)")
    add("--host", default="127.0.0.1", help="address to bind (loopback; no authentication)")
    add("--port", type=int, default=8000)
    add("--max-batch", type=int, default=512, help="most queries merged into one retriever call")
    add("--max-wait-ms", type=float, default=5.0, help="longest a request waits to join a batch")
    add("--no-batching", action="store_true", help="one retriever call per request")
    add("--topk", type=int, default=3, help="topk for requests without one (reference: 3)")
    add("--max-topk", type=int, default=100)
    add("--max-queries", type=int, default=4096, help="most queries in one request")
    add("--max-query-chars", type=int, default=2000)
    add(
        "--max-body-bytes",
        type=int,
        default=None,
        help="largest request body (default: what the largest valid request needs)",
    )
    add(
        "--body-timeout",
        type=float,
        default=10.0,
        help="seconds a client has to send a request body (slower: 408, connection closed)",
    )
    add(
        "--backend",
        default="auto",
        choices=["auto", "pruned", "exhaustive", "numpy"],
        help="bm25 backend",
    )
    add("--threads", type=int, default=-1, help="retriever threads (-1: all cores)")
    add("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return parser


def _open_index(args: argparse.Namespace) -> tuple[Retriever, dict[str, Any]]:
    info = index_info(args.index)
    loader_kwargs: dict[str, Any] = {}
    if info["kind"] == "bm25":
        loader_kwargs = {"backend": args.backend, "n_threads": args.threads}
    elif info["kind"] == "dense":
        loader_kwargs = {"n_threads": args.threads}
    return load_index(args.index, **loader_kwargs), info


def run_serve(args: argparse.Namespace) -> int:
    """Loads ``args.index`` and serves it until interrupted; returns the exit code.

    An index that cannot be opened (missing directory, damaged or unreadable files, an
    unknown kind, a missing extra) is one ``error:`` line on stderr and exit code 1, not
    a traceback; with ``-v`` the traceback is shown.
    """
    try:
        retriever, info = _open_index(args)
    except (OSError, RetrievalError, ValueError, ImportError) as e:
        if getattr(args, "verbose", False):
            raise
        print(f"error: cannot serve the index {args.index}: {e}", file=sys.stderr)
        return 1
    logger.info("warming up the retriever")
    warm_up(retriever)
    serve(
        retriever,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        batching=not args.no_batching,
        default_topk=args.topk,
        max_topk=args.max_topk,
        max_queries_per_request=args.max_queries,
        max_query_chars=args.max_query_chars,
        max_body_bytes=args.max_body_bytes,
        body_timeout_s=args.body_timeout,
        info=info,
    )
    return 0
