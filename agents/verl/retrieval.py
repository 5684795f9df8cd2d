"""Where the verl adapters get their passages from, and how they show them.

One retriever spec serves both the tool and the agent loop. It is a mapping with exactly
one source key:

* ``retrieval_service_url``: a Search-R1 ``/retrieve`` server (``search-env serve`` or
  the reference one), queried with `RemoteRetriever` (``timeout``, ``retries``,
  ``retry_window`` apply);
* ``retriever``: an index directory (BM25 or dense, by its manifest), a server URL, or
  (from Python) a retriever object;
* ``corpus``: a wiki-18 style JSONL file, BM25-indexed once and cached;
* ``env_id`` (with optional ``env_kwargs``): the retriever of a registered env, e.g.
  ``SearchQA-Synth-v0`` for the offline synthetic world.

verl builds a new agent loop for every trajectory, so retrievers are cached per process,
keyed by their spec: an index is opened once, not once per sample.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from search_env.protocol import ProtocolConfig, format_documents
from search_env.retrievers.base import Retriever
from search_env.types import Passage

SOURCE_KEYS: tuple[str, ...] = ("retrieval_service_url", "retriever", "corpus", "env_id")
"""The keys that name where passages come from; a spec has exactly one of them."""

_CLIENT_KEYS = ("timeout", "retries", "retry_window")
"""Spec keys passed on to `RemoteRetriever` when the source is a server."""

_CACHE: dict[str, Retriever] = {}
_LOCK = threading.Lock()


def source_of(spec: Mapping[str, Any]) -> tuple[str, Any]:
    """The one ``(key, value)`` of ``spec`` that names the passages' source.

    Raises:
        ValueError: If no source key or several are set (null values count as unset).
    """
    given = [(k, spec[k]) for k in SOURCE_KEYS if spec.get(k) not in (None, "")]
    if len(given) != 1:
        names = ", ".join(SOURCE_KEYS)
        found = ", ".join(k for k, _ in given) or "none"
        raise ValueError(f"a retriever spec needs exactly one of {names}; got {found}")
    return given[0]


def _cache_key(spec: Mapping[str, Any]) -> str:
    key, value = source_of(spec)
    extra = {k: spec[k] for k in (*_CLIENT_KEYS, "env_kwargs") if spec.get(k) is not None}
    return json.dumps([key, value, extra], sort_keys=True, default=str)


def _build(spec: Mapping[str, Any]) -> Retriever:
    from search_env.registration import load_retriever

    key, value = source_of(spec)
    if key == "env_id":
        import gymnasium as gym

        import search_env  # noqa: F401  (registers the env ids)

        env = gym.make(str(value), **dict(spec.get("env_kwargs") or {}))
        retriever: Retriever = env.unwrapped.retriever  # type: ignore[attr-defined]
        env.close()
        return retriever
    if key == "corpus":
        return load_retriever(corpus=str(value))
    url = str(value)
    options = {k: spec[k] for k in _CLIENT_KEYS if spec.get(k) is not None}
    if url.startswith(("http://", "https://")):
        return load_retriever(url, options=options)
    if key == "retrieval_service_url":
        raise ValueError(f"retrieval_service_url must be an http(s) URL, got {url!r}")
    return load_retriever(url)


def shared_retriever(spec: Mapping[str, Any]) -> Retriever:
    """The retriever ``spec`` names, built on first use and shared by the process.

    Raises:
        ValueError: If ``spec`` names no source or several (see `source_of`).
        FileNotFoundError, CorruptIndexError: For a missing or damaged index / corpus.
    """
    _, value = source_of(spec)
    if callable(getattr(value, "search", None)):  # a retriever object (Python callers)
        return value  # type: ignore[no-any-return]
    key = _cache_key(spec)
    with _LOCK:  # one build per spec, even when many loops start at once
        if key not in _CACHE:
            _CACHE[key] = _build(spec)
        return _CACHE[key]


def information_block(passages: Sequence[Passage], protocol: ProtocolConfig) -> str:
    """One query's results as the env shows them, without the padding newlines.

    ``<information>Doc 1(Title: ...) text\\n...</information>``: Search-R1's document
    format inside the protocol's information tags.
    """
    docs = format_documents(passages, protocol)
    return protocol.information_format.format(docs=docs).strip("\n")


def error_block(error: BaseException, protocol: ProtocolConfig) -> str:
    """A failed search shown the way the env shows one (``on_retrieval_error="observe"``)."""
    text = f"Retrieval failed: {type(error).__name__}: {error}\n"
    return protocol.information_format.format(docs=text).strip("\n")
