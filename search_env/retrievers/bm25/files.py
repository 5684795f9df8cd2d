"""The BM25 index directory: file names, manifest writing and integrity checks.

An index directory holds::

    data.csc.index.npy, indices.csc.index.npy, indptr.csc.index.npy,
    vocab.index.json, params.index.json     bm25s' own files (the CSC score matrix)
    vocab.tokenizer.json, stopwords.tokenizer.json
    term_max.maxscore.npy                   each term's largest score (pruned backend)
    block_max.maxscore.npy                  each block's largest score (pruned backend)
    passages.jsonl, passages.offsets.npy    the passages, found by byte offset
    manifest.json                           format version, parameters, backend, hashes

``term_max.maxscore.npy`` and ``block_max.maxscore.npy`` are optional on load (older
indexes lack them; they are then computed, one pass over the scores). The block maxima
are used only when the manifest's ``maxscore_block`` equals `bounds.BLOCK` (the
postings per block they were computed for). The manifest's ``backend`` is the one chosen at
build time; ``backend="auto"`` at load uses it when it is usable.

Files up to 64 MiB are hashed whole (sha256). Larger ones record the sha256 of their
size plus their first and last 1 MiB: loading a 20 GB index stays fast, but a change in
the middle of a large file is only caught by the size check or when it is read.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from search_env.retrievers import _index_files
from search_env.retrievers._index_files import OFFSETS_NAME, PASSAGES_NAME
from search_env.retrievers.base import CorruptIndexError

__all__ = [
    "BLOCK_MAX_NAME",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "REQUIRED_FILES",
    "TERM_MAX_NAME",
    "check_consistency",
    "file_record",
    "manifest_record",
    "verify_corpus",
    "verify_manifest",
]

FORMAT_NAME = "search_env.bm25"
FORMAT_VERSION = 1
TOKENIZER_VOCAB_NAME = "vocab.tokenizer.json"
TOKENIZER_STOPWORDS_NAME = "stopwords.tokenizer.json"
TERM_MAX_NAME = "term_max.maxscore.npy"
BLOCK_MAX_NAME = "block_max.maxscore.npy"
BM25S_FILES = (
    "data.csc.index.npy",
    "indices.csc.index.npy",
    "indptr.csc.index.npy",
    "vocab.index.json",
    "params.index.json",
)
REQUIRED_FILES = (
    *BM25S_FILES,
    TOKENIZER_VOCAB_NAME,
    TOKENIZER_STOPWORDS_NAME,
    PASSAGES_NAME,
    OFFSETS_NAME,
)
FULL_HASH_MAX_BYTES = _index_files.FULL_HASH_MAX_BYTES
SAMPLE_BYTES = _index_files.SAMPLE_BYTES


def sha256_file(path: Path, size: int) -> tuple[str, str]:
    """`_index_files.sha256_file` with this module's (patchable) thresholds."""
    return _index_files.sha256_file(
        path, size, full_hash_max_bytes=FULL_HASH_MAX_BYTES, sample_bytes=SAMPLE_BYTES
    )


def file_record(path: Path) -> dict[str, Any]:
    """The manifest entry of one file."""
    return _index_files.file_record(path, sha256_file)


def manifest_record(index_dir: Path, **fields: Any) -> dict[str, Any]:
    """The manifest of the files in ``index_dir``, with ``fields`` added."""
    files = {p.name: file_record(p) for p in sorted(index_dir.iterdir())}
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "package": "search_env",
        "package_version": _index_files.package_version(),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **fields,
        "files": files,
        "hash_note": (
            f"files up to {FULL_HASH_MAX_BYTES >> 20} MiB: sha256 of the whole file; larger "
            "files: sha256 of the size (8 bytes little-endian) + first 1 MiB + last 1 MiB"
        ),
    }


def corrupt(index_dir: Path, problem: str) -> CorruptIndexError:
    """The error for a damaged index, naming the directory and the problem."""
    return CorruptIndexError(f"corrupt BM25 index {index_dir}: {problem}")


def verify_manifest(index_dir: Path) -> dict[str, Any]:
    """Checks the manifest, then every file's presence, size and hash."""
    return _index_files.read_manifest(
        index_dir,
        format_name=FORMAT_NAME,
        format_version=FORMAT_VERSION,
        required_files=REQUIRED_FILES,
        corrupt=lambda problem: corrupt(index_dir, problem),
        hasher=sha256_file,
    )


def verify_corpus(index_dir: Path, manifest: dict[str, Any], expected: Path) -> None:
    """Checks that the index was built from the file ``expected``."""
    _index_files.verify_corpus(manifest, expected, lambda problem: corrupt(index_dir, problem))


def check_consistency(
    index_dir: Path,
    manifest: dict[str, Any],
    model: Any,
    tokenizer: Any,
    n_passages: int,
    term_max_len: int | None,
) -> None:
    """Passage counts and vocabulary sizes agree across the index's files."""
    n = manifest.get("num_passages")
    if model.scores["num_docs"] != n or n_passages != n:
        raise corrupt(
            index_dir,
            f"passage count mismatch: manifest {n}, bm25s {model.scores['num_docs']}, "
            f"passages {n_passages}",
        )
    n_vocab = len(model.scores["indptr"]) - 1
    if len(tokenizer.get_vocab_dict()) != n_vocab or len(model.vocab_dict) != n_vocab:
        raise corrupt(
            index_dir,
            f"vocabulary mismatch: score matrix has {n_vocab} terms, bm25s vocab "
            f"{len(model.vocab_dict)}, tokenizer vocab {len(tokenizer.get_vocab_dict())}",
        )
    if term_max_len is not None and term_max_len != n_vocab:
        raise corrupt(
            index_dir, f"{TERM_MAX_NAME} has {term_max_len} terms, the score matrix {n_vocab}"
        )
