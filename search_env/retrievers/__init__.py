"""Retrievers: the protocol, the backends and the wrappers.

Heavy backends are imported on first use: ``from search_env.retrievers import DenseRetriever``
needs ``pip install 'search-env[dense]'`` only when it is used.
"""

from typing import Any

from search_env.retrievers.base import CorruptIndexError, RetrievalError, Retriever
from search_env.retrievers.loading import load_index, register_index_kind

_LAZY = {
    "BM25Retriever": "search_env.retrievers.bm25",
    "DenseRetriever": "search_env.retrievers.dense",
    "HybridRetriever": "search_env.retrievers.hybrid",
    "CachedRetriever": "search_env.retrievers.cache",
    "RemoteRetriever": "search_env.retrievers.remote",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'search_env.retrievers' has no attribute {name!r}")


__all__ = [
    "BM25Retriever",
    "CachedRetriever",
    "CorruptIndexError",
    "DenseRetriever",
    "HybridRetriever",
    "RemoteRetriever",
    "RetrievalError",
    "Retriever",
    "load_index",
    "register_index_kind",
]
