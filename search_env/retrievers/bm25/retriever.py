"""`BM25Retriever`: build, save, load and search a BM25 index (see the package docstring)."""

from __future__ import annotations

import json
import logging
import shutil
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from search_env.retrievers import _index_files
from search_env.retrievers._index_files import MANIFEST_NAME, OFFSETS_NAME, PASSAGES_NAME
from search_env.retrievers._index_files import PassageStore as _PassageStore
from search_env.retrievers.base import CorruptIndexError, RetrievalError
from search_env.retrievers.bm25 import files
from search_env.retrievers.bm25.analyzer import QueryEncoder, import_bm25s, make_tokenizer
from search_env.retrievers.bm25.building import build_index
from search_env.retrievers.bm25.params import (
    TOKEN_PATTERN,
    BM25Params,
    resolve_backend,
    resolve_threads,
)
from search_env.retrievers.bm25.scorers import ExhaustiveScorer, PrunedScorer
from search_env.types import Passage

if TYPE_CHECKING:
    import bm25s
    from bm25s.tokenization import Tokenizer

__all__ = ["BM25Retriever"]

logger = logging.getLogger(__name__)


def _bm25s_backend(backend: str) -> str:
    """bm25s' own scorer for a backend: the pruned one only borrows its arrays."""
    return "numba" if backend == "exhaustive" else "numpy"


class BM25Retriever:
    """A batched BM25 retriever over an in-memory or memory-mapped bm25s index.

    Build one with `build` (from a corpus file or passages), `save` it, and `load` it
    later; `search` answers a batch of queries in one call.

    Search semantics: a passage is returned only if it scores above 0, i.e. shares at
    least one indexed term with the query, as Lucene/Pyserini do. So a query that is
    empty, whitespace, only stopwords or only unknown words gets ``[]``, and a query
    with fewer than ``k`` matching passages gets fewer than ``k``. (With ``bm25l`` and
    ``bm25+`` every passage has a positive baseline score, so up to ``k`` come back for
    any query with a known term.) Results are sorted by score, best first, ties by
    corpus order (lowest row first; the ``exhaustive``/``numpy`` backends may pick any
    of the passages tied at the k-th score).
    """

    def __init__(
        self,
        model: bm25s.BM25,
        tokenizer: Tokenizer,
        store: _PassageStore,
        *,
        params: BM25Params,
        backend: str,
        n_threads: int = -1,
        corpus_info: dict[str, str] | None = None,
        term_max: np.ndarray | None = None,
        block_max: np.ndarray | None = None,
    ) -> None:
        """Wraps already-built parts; use `build` or `load` instead."""
        self._model = model
        self._tokenizer = tokenizer
        self._store = store
        self._encoder = QueryEncoder(tokenizer)
        self.params = params
        self.backend = resolve_backend(backend, params.method)
        self.n_threads = resolve_threads(n_threads)
        self.corpus_info = corpus_info
        self._scorer: PrunedScorer | ExhaustiveScorer
        if self.backend == "pruned":
            self._scorer = PrunedScorer(model.scores, term_max, params.method, block_max)
        else:
            if model.backend != _bm25s_backend(self.backend):
                model.backend = _bm25s_backend(self.backend)
                model.compile(activate_numba=True, warmup=False)
            self._scorer = ExhaustiveScorer(model, self.backend)
        self._spool_finalizer: weakref.finalize | None = None

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        corpus: str | Path | Iterable[Passage],
        *,
        k1: float = 0.9,
        b: float = 0.4,
        method: str = "lucene",
        stemmer: str | None = "english",
        stopwords: str | None = "en",
        show_progress: bool = True,
        backend: str = "auto",
        n_threads: int = -1,
        tmp_dir: str | Path | None = None,
        n_workers: int = -1,
    ) -> BM25Retriever:
        """Indexes a corpus in one streaming pass (see `building.build_index`).

        Args:
            corpus: A JSONL(.gz) corpus file (its path and sha256 go in the manifest)
                or an iterable of passages.
            k1: BM25 term-frequency saturation.
            b: BM25 length normalization.
            method: bm25s scoring variant.
            stemmer: PyStemmer language, or None.
            stopwords: bm25s stopword list name, or None.
            show_progress: Show tqdm progress bars.
            backend: One of `params.BACKENDS`; ``auto`` picks the best installed one
                (``pruned``), which `save` records in the manifest.
            n_threads: Threads for `search`; -1 means all usable cores.
            tmp_dir: Where to spool the passages (default: the system temp dir). Pass the
                index's parent directory to keep the copy on the same file system; spools
                left there by killed builds are removed.
            n_workers: Tokenizer processes for the build; -1 means all usable cores (a
                corpus of one chunk, 2048 passages, is tokenized in this process). The
                index does not depend on it.

        Returns:
            The retriever, ready to search.

        Raises:
            ValueError: If the corpus has no passages or a parameter is invalid.
        """
        params = BM25Params(k1=k1, b=b, method=method, stemmer=stemmer, stopwords=stopwords)
        backend = resolve_backend(backend, method)
        resolve_threads(n_threads)
        built = build_index(
            corpus,
            params,
            bm25s_backend=_bm25s_backend(backend),
            show_progress=show_progress,
            tmp_dir=tmp_dir,
            n_workers=n_workers,
        )
        try:
            retriever = cls(
                built.model,
                built.tokenizer,
                built.store,
                params=params,
                backend=backend,
                n_threads=n_threads,
                corpus_info=built.corpus_info,
            )
        except BaseException:
            shutil.rmtree(built.spool_dir, ignore_errors=True)
            raise
        retriever._spool_finalizer = weakref.finalize(
            retriever, shutil.rmtree, built.spool_dir, True
        )
        logger.info(
            "indexed %d passages, vocabulary of %d terms",
            len(built.store),
            len(retriever._encoder.vocab),
        )
        return retriever

    @classmethod
    def from_passages(cls, passages: Iterable[Passage], **kwargs: Any) -> BM25Retriever:
        """Indexes passages held in memory; ``kwargs`` are those of `build`."""
        if isinstance(passages, (str, Path)):
            raise TypeError("from_passages takes passages; pass a corpus path to build()")
        return cls.build(passages, **kwargs)

    # ------------------------------------------------------------------ saving
    def save(self, index_dir: str | Path, *, overwrite: bool = False) -> Path:
        """Writes the index to ``index_dir`` atomically.

        Everything is written to a temporary sibling directory, fsynced, then renamed,
        so ``index_dir`` never holds a half-written index. With ``overwrite``, an
        existing ``index_dir`` is replaced (it is moved aside first, so a crash at that
        moment leaves no index under the name rather than a broken one).

        Returns:
            The index directory.

        Raises:
            FileExistsError: If ``index_dir`` exists and ``overwrite`` is False.
        """
        bm25s = import_bm25s()
        final = Path(index_dir)
        if final.exists() and not overwrite:
            raise FileExistsError(f"{final} already exists (pass overwrite=True to replace it)")
        tmp = _index_files.stage_dir(final)  # also removes stale ones of killed saves
        try:
            self._model.save(tmp, show_progress=False)
            self._tokenizer.save_vocab(str(tmp), files.TOKENIZER_VOCAB_NAME)
            self._tokenizer.save_stopwords(str(tmp), files.TOKENIZER_STOPWORDS_NAME)
            maxscore_fields: dict[str, Any] = {}
            if isinstance(self._scorer, PrunedScorer):
                np.save(tmp / files.TERM_MAX_NAME, self._scorer.term_max)
                np.save(tmp / files.BLOCK_MAX_NAME, self._scorer.block_max)
                maxscore_fields["maxscore_block"] = self._scorer.block
            shutil.copyfile(self._store.path, tmp / PASSAGES_NAME)
            np.save(tmp / OFFSETS_NAME, np.asarray(self._store.offsets, dtype=np.int64))
            manifest = files.manifest_record(
                tmp,
                bm25s_version=bm25s.__version__,
                params=asdict(self.params),
                backend=self.backend,
                tokenizer={"lower": True, "token_pattern": TOKEN_PATTERN},
                num_passages=len(self),
                vocab_size=len(self._encoder.vocab),
                corpus=self.corpus_info,
                **maxscore_fields,
            )
            (tmp / MANIFEST_NAME).write_text(
                json.dumps(manifest, indent=2) + "\n", encoding="utf-8"
            )
            _index_files.publish_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logger.info("saved BM25 index of %d passages to %s", len(self), final)
        return final

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        index_dir: str | Path,
        *,
        mmap: bool = True,
        expected_corpus: str | Path | None = None,
        backend: str = "auto",
        n_threads: int = -1,
    ) -> BM25Retriever:
        """Loads and verifies an index written by `save`.

        Args:
            index_dir: The index directory.
            mmap: Memory-map the score matrix and the passages instead of reading them.
            expected_corpus: If given, the index must have been built from a file with
                exactly these bytes (sha256).
            backend: One of `params.BACKENDS`; ``auto`` uses the manifest's backend when
                it is usable here, else the best installed one.
            n_threads: Threads for `search`; -1 means all usable cores.

        Raises:
            FileNotFoundError: If ``index_dir`` is not a directory.
            CorruptIndexError: If the manifest is missing, unreadable or of another
                format version; a file is missing or its size or hash differs; the
                corpus fingerprint differs from ``expected_corpus``; or bm25s/numpy
                fail to read a file. The message names the directory and the problem.
        """
        bm25s = import_bm25s()
        index_dir = Path(index_dir)
        resolve_backend(backend, "lucene")  # validates the name before any reading
        resolve_threads(n_threads)
        if not index_dir.is_dir():
            raise FileNotFoundError(f"BM25 index directory not found: {index_dir}")
        manifest = files.verify_manifest(index_dir)
        if expected_corpus is not None:
            files.verify_corpus(index_dir, manifest, Path(expected_corpus))
        try:
            p = manifest["params"]
            params = BM25Params(
                k1=p["k1"],
                b=p["b"],
                method=p["method"],
                stemmer=p["stemmer"],
                stopwords=p["stopwords"],
            )
            backend = _load_backend(backend, manifest.get("backend"), params.method)
            model = bm25s.BM25.load(
                str(index_dir),
                mmap=mmap,
                load_corpus=False,
                show_progress=False,
                backend=_bm25s_backend(backend),
            )
            tokenizer = make_tokenizer(params)
            tokenizer.load_stopwords(str(index_dir), files.TOKENIZER_STOPWORDS_NAME)
            tokenizer.load_vocab(str(index_dir), files.TOKENIZER_VOCAB_NAME)
            offsets = np.load(
                index_dir / OFFSETS_NAME, mmap_mode="r" if mmap else None, allow_pickle=False
            )
            store = _PassageStore(index_dir / PASSAGES_NAME, offsets, use_mmap=mmap)
            term_max = None
            if backend == "pruned" and files.TERM_MAX_NAME in manifest["files"]:
                term_max = np.load(index_dir / files.TERM_MAX_NAME, allow_pickle=False)
                if term_max.dtype != np.float32 or term_max.ndim != 1:
                    raise files.corrupt(index_dir, f"{files.TERM_MAX_NAME} is not a float32 vector")
            block_max = None
            if backend == "pruned" and files.BLOCK_MAX_NAME in manifest["files"]:
                block_max = _load_block_max(index_dir, manifest, model.scores["indptr"], mmap)
            files.check_consistency(
                index_dir,
                manifest,
                model,
                tokenizer,
                len(store),
                None if term_max is None else len(term_max),
            )
            if tokenizer.get_vocab_dict() == model.vocab_dict:
                model.vocab_dict = tokenizer.get_vocab_dict()  # keep one copy in memory
                model.unique_token_ids_set = set(model.vocab_dict.values())
        except CorruptIndexError:
            raise
        except Exception as e:
            raise CorruptIndexError(
                f"{index_dir}: cannot load index files: {type(e).__name__}: {e}"
            ) from e
        _log_loaded(index_dir, len(store), mmap, backend)
        return cls(
            model,
            tokenizer,
            store,
            params=params,
            backend=backend,
            n_threads=n_threads,
            corpus_info=manifest.get("corpus"),
            term_max=term_max,
            block_max=block_max,
        )

    # ------------------------------------------------------------------ searching
    def search(
        self, queries: Sequence[str], k: int, *, n_threads: int | None = None
    ) -> list[list[Passage]]:
        """Retrieves up to ``k`` passages for each query, in one call for the batch.

        Args:
            queries: The query strings.
            k: Passages per query (at most; see the class docstring).
            n_threads: Override the retriever's thread count for this call (a small
                batch uses fewer: see `scorers.threads_for`).

        Returns:
            One list per query, best first, each passage with ``score`` set.

        Raises:
            ValueError: If ``k < 1``.
            TypeError: If ``queries`` is a single string or holds a non-string.
        """
        if isinstance(queries, (str, bytes)):
            raise TypeError("queries must be a sequence of strings, not a single string")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an int, got {type(k).__name__}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        results: list[list[Passage]] = [[] for _ in queries]
        encoded = [self._encoder.encode(q) for q in queries]
        live = [i for i, ids in enumerate(encoded) if ids]
        if not live:
            return results
        threads = self.n_threads if n_threads is None else resolve_threads(n_threads)
        try:
            rows, scores, counts = self._scorer.search([encoded[i] for i in live], int(k), threads)
        except Exception as e:
            raise RetrievalError(
                f"BM25 {self.backend} search failed: {type(e).__name__}: {e}"
            ) from e
        for j, i in enumerate(live):
            n = int(counts[j])
            results[i] = [
                self._store.passage(d, s)
                for d, s in zip(rows[j, :n].tolist(), scores[j, :n].tolist())
            ]
        return results

    # ------------------------------------------------------------------ lookup
    def get(self, passage_id: str) -> Passage:
        """Returns the passage with this id (``score=None``).

        The first call for an id that is not its own row number builds an id -> row map
        (one dict entry per passage). With duplicate ids, the first passage wins.

        Raises:
            KeyError: If no passage has this id.
        """
        return self._store.get(passage_id)

    def __len__(self) -> int:
        return len(self._store)

    def __repr__(self) -> str:
        return (
            f"BM25Retriever(passages={len(self)}, vocab={len(self._encoder.vocab)}, "
            f"params={self.params}, backend={self.backend!r}, n_threads={self.n_threads})"
        )


def _load_backend(requested: str, recorded: object, method: str) -> str:
    """``auto`` means the manifest's backend when it is usable here."""
    if requested == "auto" and isinstance(recorded, str):
        try:
            return resolve_backend(recorded, method)
        except (ValueError, ImportError):
            logger.warning("index backend %r is not usable here; choosing another", recorded)
    return resolve_backend(requested, method)


def _load_block_max(
    index_dir: Path, manifest: dict[str, Any], indptr: np.ndarray, mmap: bool
) -> np.ndarray | None:
    """The stored block maxima, checked against the score matrix's block count; None
    when they were computed for another block size (they are then computed again)."""
    from search_env.retrievers.bm25.bounds import BLOCK, block_offsets

    if manifest.get("maxscore_block") != BLOCK:
        logger.info("%s: block maxima of another block size; computing them", index_dir)
        return None
    block_max = np.load(
        index_dir / files.BLOCK_MAX_NAME, mmap_mode="r" if mmap else None, allow_pickle=False
    )
    if block_max.dtype != np.float32 or block_max.ndim != 1:
        raise files.corrupt(index_dir, f"{files.BLOCK_MAX_NAME} is not a float32 vector")
    n_blocks = int(block_offsets(indptr)[-1])
    if len(block_max) != n_blocks:
        raise files.corrupt(
            index_dir,
            f"{files.BLOCK_MAX_NAME} has {len(block_max)} blocks, the score matrix {n_blocks}",
        )
    return block_max


_LOADED: set[tuple[str, int, bool, str]] = set()
"""(directory, passages, mmap, backend) of the indexes this process has loaded (for the log)."""


def _log_loaded(index_dir: Path, passages: int, mmap: bool, backend: str) -> None:
    """Log a load at INFO the first time, at DEBUG after: every env built on an index
    loads it again, and the same INFO line per env drowns the log."""
    key = (str(index_dir.resolve()), passages, mmap, backend)
    level = logging.DEBUG if key in _LOADED else logging.INFO
    _LOADED.add(key)
    logger.log(
        level,
        "loaded BM25 index of %d passages from %s (mmap=%s, backend=%s)",
        passages,
        index_dir,
        mmap,
        backend,
    )
