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
from collections.abc import Iterable, Iterator, Sequence, Sized
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
from search_env.retrievers.bm25.params import BM25Params
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

    def append(self, ids: Sequence[int]) -> None:
        self._flat.extend(ids)
        self._ends.append(len(self._flat))

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
) -> BuiltIndex:
    """Tokenizes and indexes ``corpus`` in one streaming pass.

    Args:
        corpus: A JSONL(.gz) corpus file or an iterable of passages.
        params: Scoring and analysis parameters.
        bm25s_backend: ``"numba"`` or ``"numpy"``, bm25s' own scorer.
        show_progress: Show tqdm progress bars.
        tmp_dir: Parent of the spool directory (default: the system temp dir).

    Raises:
        ValueError: If the corpus has no passages.
    """
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
    # Named after this process: a later build removes the spool of a killed one.
    spool_parent = Path(tmp_dir) if tmp_dir is not None else Path(tempfile.gettempdir())
    spool_dir = make_staging_dir(spool_parent, SPOOL_PREFIX)
    writer = PassageWriter(spool_dir / PASSAGES_NAME)
    try:
        columns = TokenIdColumns()

        def contents() -> Iterator[str]:
            bar = tqdm(
                passages, desc="BM25 tokenize", unit="doc", total=total, disable=not show_progress
            )
            for passage in bar:
                writer.add(passage)
                yield passage.contents

        for ids in tokenizer.streaming_tokenize(contents(), update_vocab=True, allow_empty=True):
            columns.append(ids)
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
