"""Opening an index directory by the ``kind`` its manifest names.

``load_index(dir)`` reads ``dir/manifest.json`` and calls the loader registered for its
``kind`` (a BM25 manifest has none: a missing kind means ``bm25``; `DenseRetriever.save`
writes ``dense``). Another backend plugs in with ``register_index_kind("mykind", loader)``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from search_env.retrievers._index_files import MANIFEST_NAME
from search_env.retrievers.base import CorruptIndexError, Retriever

IndexLoader = Callable[..., Retriever]


def _load_bm25(path: Path, **kwargs: Any) -> Retriever:
    from search_env.retrievers.bm25 import BM25Retriever

    return BM25Retriever.load(path, **kwargs)


def _load_dense(path: Path, **kwargs: Any) -> Retriever:
    from search_env.retrievers.dense import DenseRetriever

    return DenseRetriever.load(path, **kwargs)


_INDEX_LOADERS: dict[str, IndexLoader] = {"bm25": _load_bm25, "dense": _load_dense}


def register_index_kind(kind: str, loader: IndexLoader) -> None:
    """Makes `load_index` open ``"kind": kind`` manifests with ``loader(path, **kwargs)``."""
    _INDEX_LOADERS[kind] = loader


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise FileNotFoundError(f"index directory not found: {path}")
    manifest_path = path / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise CorruptIndexError(f"{path}: no {MANIFEST_NAME}; is this an index directory?") from e
    except (OSError, ValueError) as e:
        raise CorruptIndexError(f"{manifest_path}: unreadable: {e}") from e
    if not isinstance(manifest, dict):
        raise CorruptIndexError(f"{manifest_path}: not a JSON object")
    return manifest


def index_info(path: str | Path) -> dict[str, Any]:
    """What ``/health`` shows about an index: its manifest without the file hashes."""
    path = Path(path)
    manifest = _read_manifest(path)
    info = {k: v for k, v in manifest.items() if k not in ("files", "hash_note")}
    info["kind"] = manifest.get("kind") or "bm25"
    info["path"] = str(path.resolve())
    return info


def load_index(path: str | Path, **kwargs: Any) -> Retriever:
    """Opens the index in ``path`` with the loader for its manifest's ``kind``.

    Args:
        path: An index directory with a ``manifest.json``.
        **kwargs: Passed to the loader (for BM25: ``backend``, ``n_threads``, ``mmap``...).

    Raises:
        FileNotFoundError: If ``path`` is not a directory.
        CorruptIndexError: If the manifest is missing or unreadable (and whatever the
            loader raises for a damaged index).
        ValueError: If no loader is registered for the manifest's kind.
    """
    path = Path(path)
    kind = _read_manifest(path).get("kind") or "bm25"
    loader = _INDEX_LOADERS.get(kind)
    if loader is None:
        known = ", ".join(sorted(_INDEX_LOADERS))
        raise ValueError(f"{path}: index kind {kind!r} has no loader (known: {known})")
    return loader(path, **kwargs)
