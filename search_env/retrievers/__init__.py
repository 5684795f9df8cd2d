"""Retrievers: the protocol and the in-process backends."""

from search_env.retrievers.base import CorruptIndexError, RetrievalError, Retriever

__all__ = ["CorruptIndexError", "RetrievalError", "Retriever"]
