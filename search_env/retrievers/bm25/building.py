"""Streaming index build: one pass over the corpus, passages spooled to disk.

Passages are written to a spool JSONL file as they stream by, and only their token ids
(4 bytes a token, one flat array) stay in memory until the score matrix is built: by
`csc.build_scores` (numba, 8 bytes a posting, bm25s' arrays bit for bit) for
``method="lucene"``, by bm25s' ``BM25.index`` for the other methods.
"""

from __future__ import annotations

import shutil
import tempfile
from array import array
from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from search_env.data.corpus import corpus_fingerprint, iter_corpus
from search_env.files import make_staging_dir
from search_env.retrievers._index_files import PASSAGES_NAME, PassageStore, PassageWriter
from search_env.retrievers.bm25.analyzer import import_bm25s, make_tokenizer
from search_env.retrievers.bm25.csc import FAST_METHODS, build_scores
from search_env.retrievers.bm25.params import BM25Params, resolve_workers
from search_env.retrievers.bm25.tokenizing import CHUNK_PASSAGES, VocabMerger, tokenize_chunks
from search_env.types import Passage

__all__ = ["SPOOL_PREFIX", "BuiltIndex", "TokenIdColumns", "build_index"]

SPOOL_PREFIX = "search_env_bm25_"
"""Name prefix of the passage spool directories made by `build_index`."""


class TokenIdColumns:
    """All documents' token ids in one flat int32 array (4 bytes a token).

    bm25s only needs ``len()`` and iteration over per-document sequences of ints; a list
    of Python lists would cost about 10x more memory.
    """

    def __init__(self) -> None:
        self._flat = array("i")
        self._ends = array("q")

    def extend(self, ids: np.ndarray, lengths: np.ndarray) -> None:
        """Appends documents given as flat int32 ``ids`` and their int64 ``lengths``."""
        base = len(self._flat)
        self._flat.frombytes(np.ascontiguousarray(ids, dtype=np.int32).tobytes())
        self._ends.frombytes((np.cumsum(lengths, dtype=np.int64) + base).tobytes())

    def __len__(self) -> int:
        return len(self._ends)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(flat int32 ids, int64 end of each document)``, sharing this object's memory."""
        return (
            np.frombuffer(self._flat, dtype=np.int32),
            np.frombuffer(self._ends, dtype=np.int64),
        )

    def __iter__(self) -> Iterator[memoryview]:
        view = memoryview(self._flat)
        start = 0
        for end in self._ends:
            yield view[start:end]
            start = end


@dataclass
class BuiltIndex:
    """What `build_index` returns: the bm25s model, its tokenizer and the spooled passages."""

    model: Any
    tokenizer: Any
    store: PassageStore
    spool_dir: Path
    corpus_info: dict[str, str] | None


def build_index(
    corpus: str | Path | Iterable[Passage],
    params: BM25Params,
    *,
    bm25s_backend: str,
    show_progress: bool,
    tmp_dir: str | Path | None,
    n_workers: int = 1,
) -> BuiltIndex:
    """Tokenizes and indexes ``corpus`` in one streaming pass.

    Args:
        corpus: A JSONL(.gz) corpus file or an iterable of passages.
        params: Scoring and analysis parameters.
        bm25s_backend: ``"numba"`` or ``"numpy"``, bm25s' own scorer.
        show_progress: Show tqdm progress bars.
        tmp_dir: Parent of the spool directory (default: the system temp dir).
        n_workers: Tokenizer processes (see `tokenizing.tokenize_chunks`); -1 means all
            usable cores. The index does not depend on it.

    Raises:
        ValueError: If the corpus has no passages, or ``n_workers`` is not >= 1 or -1.
        RuntimeError: If a tokenizer worker process dies.
    """
    n_workers = resolve_workers(n_workers)
    bm25s = import_bm25s()
    corpus_info = None
    if isinstance(corpus, (str, Path)):
        path = Path(corpus)
        corpus_info = {"path": str(path.resolve()), "sha256": corpus_fingerprint(path)}
        passages: Iterable[Passage] = iter_corpus(path)
        total = None
    else:
        passages = corpus
        total = len(corpus) if isinstance(corpus, Sized) else None

    tokenizer = make_tokenizer(params)
    merger = VocabMerger(tokenizer.stopwords or (), tokenizer.stemmer)
    # Named after this process: a later build removes the spool of a killed one.
    spool_parent = Path(tmp_dir) if tmp_dir is not None else Path(tempfile.gettempdir())
    spool_dir = make_staging_dir(spool_parent, SPOOL_PREFIX)
    writer = PassageWriter(spool_dir / PASSAGES_NAME)
    try:
        columns = TokenIdColumns()

        def chunks() -> Iterator[list[str]]:
            bar = tqdm(
                passages, desc="BM25 tokenize", unit="doc", total=total, disable=not show_progress
            )
            texts: list[str] = []
            for passage in bar:
                writer.add(passage)
                texts.append(passage.contents)
                if len(texts) == CHUNK_PASSAGES:
                    yield texts
                    texts = []
            if texts:
                yield texts

        for ids, lengths in tokenize_chunks(chunks(), merger, n_workers):
            columns.extend(ids, lengths)
        # The tokenizer's state as after bm25s' streaming_tokenize (its word caches
        # emptied below, as before).
        if tokenizer.stemmer is not None:
            tokenizer.stem_to_sid = merger.vocab
        else:
            tokenizer.word_to_id = merger.vocab
        offsets = writer.close()
        if len(columns) == 0:
            raise ValueError("cannot build a BM25 index from an empty corpus")
        model = bm25s.BM25(k1=params.k1, b=params.b, method=params.method, backend=bm25s_backend)
        vocab = tokenizer.get_vocab_dict()
        if params.method in FAST_METHODS:
            _index_fast(model, columns, vocab, params, show_progress)
        else:
            model.index(
                bm25s.tokenization.Tokenized(ids=columns, vocab=vocab), show_progress=show_progress
            )
        del columns
        if params.stemmer is not None:
            # Word -> stem caches; queries need only stem_to_sid (the vocabulary).
            tokenizer.word_to_stem = {}
            tokenizer.word_to_id = {}
        store = PassageStore(spool_dir / PASSAGES_NAME, offsets, use_mmap=True)
    except BaseException:
        writer.close()
        shutil.rmtree(spool_dir, ignore_errors=True)
        raise
    return BuiltIndex(model, tokenizer, store, spool_dir, corpus_info)


def _index_fast(
    model: Any,
    columns: TokenIdColumns,
    vocab: dict[str, int],
    params: BM25Params,
    show_progress: bool,
) -> None:
    """What ``model.index`` does, with the score matrix from `csc.build_scores`."""
    flat, ends = columns.arrays()
    n_terms = len(vocab)  # as bm25s: one column per vocabulary entry
    with tqdm(total=1, desc="BM25 score matrix", disable=not show_progress) as bar:
        model.scores = build_scores(flat, ends, n_terms, params.k1, params.b)
        bar.update()
    if "" not in vocab:  # bm25s' create_empty_token
        vocab[""] = max(vocab.values()) + 1
    model.vocab_dict = vocab
    model.unique_token_ids_set = set(vocab.values())
    model.nonoccurrence_array = None
