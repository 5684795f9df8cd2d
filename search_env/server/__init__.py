"""The retrieval HTTP service (Search-R1's ``POST /retrieve``) with dynamic micro-batching.

``create_app(retriever)`` builds the FastAPI app, ``serve(retriever)`` runs it under
uvicorn on 127.0.0.1:8000, ``ServerThread(app)`` runs it in a background thread, and
`RemoteRetriever` (``search_env.retrievers.remote``) is the matching client. fastapi,
uvicorn and msgspec are imported only when an app is built or served:
``pip install 'search-env[server]'``.
"""

from search_env.server.app import create_app
from search_env.server.batching import BatchStats, MicroBatcher
from search_env.server.launch import (
    ServerThread,
    add_serve_arguments,
    index_info,
    load_index,
    register_index_kind,
    run_serve,
    serve,
    warm_up,
)
from search_env.server.requests import (
    DEFAULT_TOPK,
    RequestError,
    RequestLimits,
    RetrieveRequest,
    parse_retrieve_request,
)
from search_env.server.wire import format_result

__all__ = [
    "DEFAULT_TOPK",
    "BatchStats",
    "MicroBatcher",
    "RequestError",
    "RequestLimits",
    "RetrieveRequest",
    "ServerThread",
    "add_serve_arguments",
    "create_app",
    "format_result",
    "index_info",
    "load_index",
    "parse_retrieve_request",
    "register_index_kind",
    "run_serve",
    "serve",
    "warm_up",
]
