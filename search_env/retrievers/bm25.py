"""BM25 retrieval over a passage corpus, on top of bm25s.

Defaults follow Pyserini's BM25 as Search-R1 uses it: Lucene scoring, ``k1=0.9``,
``b=0.4``, English Snowball stemming (PyStemmer) and English stopwords.

One bm25s `Tokenizer` does both sides: it builds the vocabulary while the corpus is
indexed, and queries go through the same lower-casing, splitter, stopword list, stemmer
and vocabulary (a query-side copy of bm25s' own logic that never grows the vocabulary,
tested against ``Tokenizer.tokenize(update_vocab=False)``). This avoids the FlashRAG
pitfall of indexing stemmed text and querying unstemmed text.

An index directory holds::

    data.csc.index.npy, indices.csc.index.npy, indptr.csc.index.npy,
    vocab.index.json, params.index.json     bm25s' own files
    vocab.tokenizer.json, stopwords.tokenizer.json
    passages.jsonl, passages.offsets.npy    the passages, found by byte offset
    manifest.json                           format version, parameters, sizes, hashes

Files up to 64 MiB are hashed whole (sha256). Larger ones record the sha256 of their
size plus their first and last 1 MiB: loading a 20 GB index stays fast, but a change in
the middle of a large file is only caught by the size check or when it is read.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import shutil
import tempfile
import weakref
from array import array
from collections.abc import Iterable, Iterator, Sequence, Sized
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from search_env.data.corpus import corpus_fingerprint, iter_corpus
from search_env.files import make_staging_dir
from search_env.retrievers import _index_files
from search_env.retrievers._index_files import (
    MANIFEST_NAME,
    OFFSETS_NAME,
    PASSAGES_NAME,
    available_cpus,
)
from search_env.retrievers._index_files import PassageStore as _PassageStore
from search_env.retrievers._index_files import PassageWriter as _PassageWriter
from search_env.retrievers._index_files import package_version as _package_version
from search_env.retrievers.base import CorruptIndexError, RetrievalError
from search_env.types import Passage

if TYPE_CHECKING:
    import bm25s
    from bm25s.tokenization import Tokenizer

__all__ = ["BM25Params", "BM25Retriever", "FORMAT_VERSION"]

logger = logging.getLogger(__name__)

FORMAT_NAME = "search_env.bm25"
FORMAT_VERSION = 1
TOKENIZER_VOCAB_NAME = "vocab.tokenizer.json"
TOKENIZER_STOPWORDS_NAME = "stopwords.tokenizer.json"
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
TOKEN_PATTERN = r"(?u)\b\w\w+\b"  # bm25s' default: words of two or more characters
METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")
BACKENDS = ("auto", "numba", "numpy")
SPOOL_PREFIX = "search_env_bm25_"
"""Name prefix of the passage spool directories made by `BM25Retriever.build`."""
WORD_CACHE_SIZE = 1 << 20
_UNSEEN: Any = object()


@dataclass(frozen=True)
class BM25Params:
    """BM25 scoring and text-analysis parameters (Pyserini's defaults)."""

    k1: float = 0.9
    """Term-frequency saturation."""
    b: float = 0.4
    """Document-length normalization."""
    method: str = "lucene"
    """bm25s scoring variant: lucene, robertson, atire, bm25l or bm25+."""
    stemmer: str | None = "english"
    """PyStemmer (Snowball) language, or None for no stemming."""
    stopwords: str | None = "en"
    """bm25s stopword list name ("en", "de", ...), or None to keep every word."""

    def __post_init__(self) -> None:
        if self.k1 < 0:
            raise ValueError(f"k1 must be >= 0, got {self.k1}")
        if not 0 <= self.b <= 1:
            raise ValueError(f"b must be in [0, 1], got {self.b}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")


def _import_bm25s() -> Any:
    try:
        import bm25s
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("BM25Retriever needs bm25s: pip install bm25s PyStemmer") from e
    return bm25s


def _make_tokenizer(params: BM25Params) -> Tokenizer:
    """The one tokenizer used for the corpus and for queries."""
    bm25s = _import_bm25s()
    stemmer = None
    if params.stemmer is not None:
        try:
            import Stemmer
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("stemming needs PyStemmer: pip install PyStemmer") from e
        stemmer = Stemmer.Stemmer(params.stemmer)
    return bm25s.tokenization.Tokenizer(
        lower=True, splitter=TOKEN_PATTERN, stopwords=params.stopwords, stemmer=stemmer
    )


AUTO_NUMBA_MIN_PASSAGES = 50_000
"""``backend="auto"`` uses numba from this corpus size on: below it numpy answers in well
under a millisecond a query, and numba's ~10 s first-call compile would not pay off."""


NUMPY_THREADS_MIN_PASSAGES = 20_000
"""The numpy backend searches a smaller corpus without a thread pool: a query costs about
0.1 ms there, less than handing it to a thread (on 2 cores, 48 queries over 5,000
passages took 5.4 ms in one thread and 9.3 ms in two)."""


def _resolve_backend(backend: str, num_passages: int | None = None) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if num_passages is not None and num_passages < AUTO_NUMBA_MIN_PASSAGES:
            return "numpy"
        try:
            import numba  # noqa: F401
        except ImportError:
            return "numpy"
        return "numba"
    return backend


def _resolve_threads(n_threads: int, backend: str) -> int:
    """Turns ``-1`` into all usable cores, capped by numba's thread pool size."""
    if n_threads == -1:
        n_threads = available_cpus()
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1 or -1 (all cores), got {n_threads}")
    if backend == "numba":
        import numba

        n_threads = min(n_threads, numba.config.NUMBA_NUM_THREADS)
    return n_threads


class _TokenIdColumns:
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

    def __iter__(self) -> Iterator[memoryview]:
        view = memoryview(self._flat)
        start = 0
        for end in self._ends:
            yield view[start:end]
            start = end


def _sha256_file(path: Path, size: int) -> tuple[str, str]:
    """`_index_files.sha256_file` with this module's (patchable) thresholds."""
    return _index_files.sha256_file(
        path, size, full_hash_max_bytes=FULL_HASH_MAX_BYTES, sample_bytes=SAMPLE_BYTES
    )


def _file_record(path: Path) -> dict[str, Any]:
    return _index_files.file_record(path, _sha256_file)


class BM25Retriever:
    """A batched BM25 retriever over an in-memory or memory-mapped bm25s index.

    Build one with `build` (from a corpus file or passages), `save` it, and `load` it
    later; `search` answers a batch of queries in one bm25s call.

    Search semantics: a passage is returned only if it scores above 0, i.e. shares at
    least one indexed term with the query, as Lucene/Pyserini do. So a query that is
    empty, whitespace, only stopwords or only unknown words gets ``[]``, and a query
    with fewer than ``k`` matching passages gets fewer than ``k``. (With ``bm25l`` and
    ``bm25+`` every passage has a positive baseline score, so up to ``k`` come back for
    any query with a known term.) Results are sorted by score, best first, ties by
    corpus order.
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
    ) -> None:
        """Wraps already-built parts; use `build` or `load` instead."""
        self._model = model
        self._tokenizer = tokenizer
        self._store = store
        self._vocab: dict[str, int] = tokenizer.get_vocab_dict()
        self._stopwords = frozenset(tokenizer.stopwords or ())
        self._word_ids: dict[
            str, int | None
        ] = {}  # query word -> id cache (stemming is the slow part)
        self.params = params
        self.backend = backend
        self.n_threads = _resolve_threads(n_threads, backend)
        self.corpus_info = corpus_info
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
    ) -> BM25Retriever:
        """Indexes a corpus.

        The corpus is streamed once: passages are spooled to a temporary JSONL file
        and only the token ids (4 bytes a token) stay in memory until bm25s has built
        its score matrix.

        Args:
            corpus: A JSONL(.gz) corpus file (its path and sha256 go in the manifest)
                or an iterable of passages.
            k1: BM25 term-frequency saturation.
            b: BM25 length normalization.
            method: bm25s scoring variant.
            stemmer: PyStemmer language, or None.
            stopwords: bm25s stopword list name, or None.
            show_progress: Show tqdm progress bars.
            backend: "numba", "numpy" or "auto" (numba when importable). Numba compiles
                for several seconds on first use; "numpy" suits tiny corpora and tests.
            n_threads: Threads for `search`; -1 means all usable cores.
            tmp_dir: Where to spool the passages (default: the system temp dir). Pass the
                index's parent directory to keep the copy on the same file system; spools
                left there by killed builds are removed.

        Returns:
            The retriever, ready to search.

        Raises:
            ValueError: If the corpus has no passages or a parameter is invalid.
        """
        bm25s = _import_bm25s()
        params = BM25Params(k1=k1, b=b, method=method, stemmer=stemmer, stopwords=stopwords)
        requested = backend
        backend = _resolve_backend(backend, 0 if requested == "auto" else None)  # decided below
        corpus_info = None
        if isinstance(corpus, (str, Path)):
            path = Path(corpus)
            corpus_info = {"path": str(path.resolve()), "sha256": corpus_fingerprint(path)}
            passages: Iterable[Passage] = iter_corpus(path)
            total = None
        else:
            passages = corpus
            total = len(corpus) if isinstance(corpus, Sized) else None

        tokenizer = _make_tokenizer(params)
        # Named after this process: a later build removes the spool of a killed one.
        spool_parent = Path(tmp_dir) if tmp_dir is not None else Path(tempfile.gettempdir())
        spool_dir = make_staging_dir(spool_parent, SPOOL_PREFIX)
        writer = _PassageWriter(spool_dir / PASSAGES_NAME)
        try:
            columns = _TokenIdColumns()

            def contents() -> Iterator[str]:
                bar = tqdm(
                    passages,
                    desc="BM25 tokenize",
                    unit="doc",
                    total=total,
                    disable=not show_progress,
                )
                for passage in bar:
                    writer.add(passage)
                    yield passage.contents

            for ids in tokenizer.streaming_tokenize(
                contents(), update_vocab=True, allow_empty=True
            ):
                columns.append(ids)
            offsets = writer.close()
            if len(columns) == 0:
                raise ValueError("cannot build a BM25 index from an empty corpus")

            vocab = tokenizer.get_vocab_dict()
            model = bm25s.BM25(k1=k1, b=b, method=method, backend=backend)
            model.index(
                bm25s.tokenization.Tokenized(ids=columns, vocab=vocab),
                show_progress=show_progress,
            )
            del columns
            backend = _resolve_backend(requested, model.scores["num_docs"])
            if backend != model.backend:
                model.backend = backend
                model.compile(activate_numba=True, warmup=False)
            if params.stemmer is not None:
                # Word -> stem caches; queries need only stem_to_sid (the vocabulary).
                tokenizer.word_to_stem = {}
                tokenizer.word_to_id = {}
            store = _PassageStore(spool_dir / PASSAGES_NAME, offsets, use_mmap=True)
            retriever = cls(
                model,
                tokenizer,
                store,
                params=params,
                backend=backend,
                n_threads=n_threads,
                corpus_info=corpus_info,
            )
        except BaseException:
            writer.close()
            shutil.rmtree(spool_dir, ignore_errors=True)
            raise
        retriever._spool_finalizer = weakref.finalize(retriever, shutil.rmtree, spool_dir, True)
        logger.info("indexed %d passages, vocabulary of %d terms", len(store), len(vocab))
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
        bm25s = _import_bm25s()
        final = Path(index_dir)
        if final.exists() and not overwrite:
            raise FileExistsError(f"{final} already exists (pass overwrite=True to replace it)")
        tmp = _index_files.stage_dir(final)  # also removes stale ones of killed saves
        try:
            self._model.save(tmp, show_progress=False)
            self._tokenizer.save_vocab(str(tmp), TOKENIZER_VOCAB_NAME)
            self._tokenizer.save_stopwords(str(tmp), TOKENIZER_STOPWORDS_NAME)
            shutil.copyfile(self._store.path, tmp / PASSAGES_NAME)
            np.save(tmp / OFFSETS_NAME, np.asarray(self._store.offsets, dtype=np.int64))
            files = {p.name: _file_record(p) for p in sorted(tmp.iterdir())}
            manifest = {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "package": "search_env",
                "package_version": _package_version(),
                "bm25s_version": bm25s.__version__,
                "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "params": asdict(self.params),
                "tokenizer": {"lower": True, "token_pattern": TOKEN_PATTERN},
                "num_passages": len(self),
                "vocab_size": len(self._vocab),
                "corpus": self.corpus_info,
                "files": files,
                "hash_note": (
                    f"files up to {FULL_HASH_MAX_BYTES >> 20} MiB: sha256 of the whole file; larger "
                    "files: sha256 of the size (8 bytes little-endian) + first 1 MiB + last 1 MiB"
                ),
            }
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
            backend: "numba", "numpy" or "auto".
            n_threads: Threads for `search`; -1 means all usable cores.

        Raises:
            FileNotFoundError: If ``index_dir`` is not a directory.
            CorruptIndexError: If the manifest is missing, unreadable or of another
                format version; a file is missing or its size or hash differs; the
                corpus fingerprint differs from ``expected_corpus``; or bm25s/numpy
                fail to read a file. The message names the directory and the problem.
        """
        bm25s = _import_bm25s()
        index_dir = Path(index_dir)
        _resolve_backend(backend)  # validates the name
        if not index_dir.is_dir():
            raise FileNotFoundError(f"BM25 index directory not found: {index_dir}")
        manifest = _verify_manifest(index_dir)
        count = manifest.get("num_passages")
        backend = _resolve_backend(backend, count if isinstance(count, int) else None)
        if expected_corpus is not None:
            _verify_corpus(index_dir, manifest, Path(expected_corpus))
        try:
            p = manifest["params"]
            params = BM25Params(
                k1=p["k1"],
                b=p["b"],
                method=p["method"],
                stemmer=p["stemmer"],
                stopwords=p["stopwords"],
            )
            model = bm25s.BM25.load(
                str(index_dir), mmap=mmap, load_corpus=False, show_progress=False, backend=backend
            )
            tokenizer = _make_tokenizer(params)
            tokenizer.load_stopwords(str(index_dir), TOKENIZER_STOPWORDS_NAME)
            tokenizer.load_vocab(str(index_dir), TOKENIZER_VOCAB_NAME)
            offsets = np.load(
                index_dir / OFFSETS_NAME, mmap_mode="r" if mmap else None, allow_pickle=False
            )
            store = _PassageStore(index_dir / PASSAGES_NAME, offsets, use_mmap=mmap)
            _check_consistency(index_dir, manifest, model, tokenizer, store)
            if tokenizer.get_vocab_dict() == model.vocab_dict:
                model.vocab_dict = tokenizer.get_vocab_dict()  # keep one copy in memory
                model.unique_token_ids_set = set(model.vocab_dict.values())
        except CorruptIndexError:
            raise
        except Exception as e:
            raise CorruptIndexError(
                f"{index_dir}: cannot load index files: {type(e).__name__}: {e}"
            ) from e
        _log_loaded(index_dir, len(store), mmap)
        return cls(
            model,
            tokenizer,
            store,
            params=params,
            backend=backend,
            n_threads=n_threads,
            corpus_info=manifest.get("corpus"),
        )

    # ------------------------------------------------------------------ searching
    def search(
        self, queries: Sequence[str], k: int, *, n_threads: int | None = None
    ) -> list[list[Passage]]:
        """Retrieves up to ``k`` passages for each query, in one bm25s call.

        Args:
            queries: The query strings.
            k: Passages per query (at most; see the class docstring).
            n_threads: Override the retriever's thread count for this call.

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
        encoded = [self._encode_query(q) for q in queries]
        live = [i for i, ids in enumerate(encoded) if ids]
        if not live:
            return results
        threads = self.n_threads if n_threads is None else _resolve_threads(n_threads, self.backend)
        if self.backend == "numpy" and (threads == 1 or len(self) < NUMPY_THREADS_MIN_PASSAGES):
            threads = 0  # bm25s: 0 = no thread pool
        try:
            docs, scores = self._model.retrieve(
                [encoded[i] for i in live],
                k=min(int(k), len(self)),
                show_progress=False,
                n_threads=threads,
                return_as="tuple",
            )
        except Exception as e:
            raise RetrievalError(f"bm25s retrieve failed: {type(e).__name__}: {e}") from e
        for row, i in enumerate(live):
            hits = sorted(
                ((s, d) for s, d in zip(scores[row].tolist(), docs[row].tolist()) if s > 0),
                key=lambda t: (-t[0], t[1]),
            )
            results[i] = [self._store.passage(d, s) for s, d in hits]
        return results

    def _encode_query(self, query: str) -> list[int]:
        """Token ids of ``query``: bm25s' ``streaming_tokenize`` without vocabulary growth."""
        if not isinstance(query, str):
            raise TypeError(f"each query must be a str, got {type(query).__name__}")
        text = query.lower() if self._tokenizer.lower else query
        cache = self._word_ids
        ids = []
        for word in self._tokenizer.splitter(text):
            wid = cache.get(word, _UNSEEN)
            if wid is _UNSEEN:
                wid = self._word_id(word)
                if len(cache) >= WORD_CACHE_SIZE:
                    cache.clear()  # bounded, unlike bm25s' word_to_id, which grows with every query
                cache[word] = wid
            if wid is not None:
                ids.append(wid)
        return ids

    def _word_id(self, word: str) -> int | None:
        """The vocabulary id of one split word; None for stopwords and unknown words."""
        if word in self._stopwords:
            return None
        stemmer = self._tokenizer.stemmer
        return self._vocab.get(stemmer(word) if stemmer is not None else word)

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
            f"BM25Retriever(passages={len(self)}, vocab={len(self._vocab)}, "
            f"params={self.params}, backend={self.backend!r}, n_threads={self.n_threads})"
        )


_LOADED: set[tuple[str, int, bool]] = set()
"""(directory, passages, mmap) of the indexes this process has loaded (for the log)."""


def _log_loaded(index_dir: Path, passages: int, mmap: bool) -> None:
    """Log a load at INFO the first time, at DEBUG after: every env built on an index
    loads it again, and the same INFO line per env drowns the log."""
    key = (str(index_dir.resolve()), passages, mmap)
    level = logging.DEBUG if key in _LOADED else logging.INFO
    _LOADED.add(key)
    logger.log(
        level, "loaded BM25 index of %d passages from %s (mmap=%s)", passages, index_dir, mmap
    )


def _corrupt(index_dir: Path, problem: str) -> CorruptIndexError:
    return CorruptIndexError(f"corrupt BM25 index {index_dir}: {problem}")


def _verify_manifest(index_dir: Path) -> dict[str, Any]:
    """Checks the manifest, then every file's presence, size and hash."""
    return _index_files.read_manifest(
        index_dir,
        format_name=FORMAT_NAME,
        format_version=FORMAT_VERSION,
        required_files=REQUIRED_FILES,
        corrupt=lambda problem: _corrupt(index_dir, problem),
        hasher=_sha256_file,
    )


def _verify_corpus(index_dir: Path, manifest: dict[str, Any], expected: Path) -> None:
    _index_files.verify_corpus(manifest, expected, lambda problem: _corrupt(index_dir, problem))


def _check_consistency(
    index_dir: Path, manifest: dict[str, Any], model: Any, tokenizer: Any, store: _PassageStore
) -> None:
    n = manifest.get("num_passages")
    if model.scores["num_docs"] != n or len(store) != n:
        raise _corrupt(
            index_dir,
            f"passage count mismatch: manifest {n}, bm25s {model.scores['num_docs']}, passages {len(store)}",
        )
    n_vocab = len(model.scores["indptr"]) - 1
    if len(tokenizer.get_vocab_dict()) != n_vocab or len(model.vocab_dict) != n_vocab:
        raise _corrupt(
            index_dir,
            f"vocabulary mismatch: score matrix has {n_vocab} terms, bm25s vocab "
            f"{len(model.vocab_dict)}, tokenizer vocab {len(tokenizer.get_vocab_dict())}",
        )
