"""`DenseRetriever`: open a dense index (ours or Search-R1's published one) and search it."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from search_env.retrievers._index_files import (
    OFFSETS_NAME,
    PASSAGES_NAME,
    PassageStore,
    read_manifest,
    verify_corpus,
)
from search_env.retrievers.base import CorruptIndexError, RetrievalError
from search_env.retrievers.dense.build import build_index
from search_env.retrievers.dense.faiss_io import (
    import_faiss,
    index_type_of,
    read_faiss_index,
    set_faiss_threads,
)
from search_env.retrievers.dense.placement import place, wants_gpu
from search_env.retrievers.dense.published import open_published
from search_env.retrievers.dense.spec import (
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_NAME,
    INDEX_TYPES,
    REQUIRED_FILES,
    EncoderSpec,
    IndexSpec,
)
from search_env.retrievers.encoders import (
    Encoder,
    describe_encoder,
    encoder_from_description,
    load_encoder,
)
from search_env.types import Passage

__all__ = ["DenseRetriever"]

logger = logging.getLogger(__name__)


class DenseRetriever:
    """A batched dense retriever: one encoder call and one faiss search per batch.

    Build with `build`, open with `load` (or `from_published` for Search-R1's files),
    then `search`. ``search_vectors`` searches pre-encoded query vectors.

    Search semantics: every query gets ``min(k, len(self))`` passages, best first
    (fewer only if an approximate index finds fewer), each with its inner-product
    score.
    """

    def __init__(
        self,
        index: Any,
        store: PassageStore,
        encoder: Encoder,
        *,
        spec: IndexSpec | None = None,
        encoder_info: dict[str, Any] | None = None,
        corpus_info: dict[str, Any] | None = None,
        placement: str = "cpu",
        n_threads: int = -1,
    ) -> None:
        """Wraps already-loaded parts; use `build`, `load` or `from_published` instead."""
        if int(index.d) != int(encoder.dim):
            raise ValueError(f"encoder dimension {encoder.dim} != index dimension {index.d}")
        if int(index.ntotal) != len(store):
            raise ValueError(f"index has {index.ntotal} rows but the store {len(store)} passages")
        self._index = index
        self._store = store
        self.encoder = encoder
        self.spec = spec
        self.encoder_info = encoder_info or describe_encoder(encoder)
        self.corpus_info = corpus_info
        self.placement = placement
        self.n_threads = set_faiss_threads(n_threads)
        self._configured_k = 0
        self._configure_search(1)

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        corpus: str | Path | Iterable[Passage],
        index_dir: str | Path,
        *,
        encoder: EncoderSpec = "offline",
        index_type: str | IndexSpec = "flat",
        chunk_size: int = 65_536,
        batch_size: int = 128,
        show_progress: bool = True,
        device: str = "auto",
        overwrite: bool = False,
        keep_partial: bool = False,
        n_threads: int = -1,
        seed: int = 0,
    ) -> DenseRetriever:
        """Encodes a corpus, builds a faiss index and writes it to ``index_dir``.

        Resumable: encoded chunks are kept in ``{index_dir}.partial/`` until the index
        is written; rerunning the same build after a crash encodes only the chunks that
        are missing (a chunk is reused when its passages and the encoder are the same).

        Args:
            corpus: A JSONL(.gz) corpus file (its sha256 goes in the manifest) or an
                iterable of passages.
            index_dir: Where to write the index (atomically).
            encoder: ``"offline"``, ``"e5"``, a model name/path, an `EncoderConfig`
                or an `Encoder`.
            index_type: ``"flat"``, ``"hnsw"``, ``"ivfpq"`` or an `IndexSpec`.
            chunk_size: Passages encoded and saved at a time.
            batch_size: Encoder batch size (for encoders made here).
            show_progress: Show tqdm progress bars.
            device: Encoder device: ``"auto"``, ``"cpu"`` or ``"cuda"``; also where the
                returned retriever searches.
            overwrite: Replace an existing ``index_dir``.
            keep_partial: Keep the encoded chunks after the index is written.
            n_threads: faiss CPU threads; -1 means all usable cores.
            seed: Seed of the IVF-PQ training sample.

        Returns:
            The retriever, loaded from ``index_dir``.

        Raises:
            FileExistsError: If ``index_dir`` exists and ``overwrite`` is False.
            ValueError: If the corpus is empty or a parameter is invalid.
        """
        enc = build_index(
            corpus,
            index_dir,
            encoder=encoder,
            index_type=index_type,
            chunk_size=chunk_size,
            batch_size=batch_size,
            show_progress=show_progress,
            device=device,
            overwrite=overwrite,
            keep_partial=keep_partial,
            n_threads=n_threads,
            seed=seed,
        )
        return cls.load(index_dir, encoder=enc, device=device, n_threads=n_threads)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        index_dir: str | Path,
        *,
        mmap: bool = True,
        device: str = "auto",
        expected_corpus: str | Path | None = None,
        encoder: EncoderSpec | None = None,
        n_threads: int = -1,
        gpu_backend: str = "auto",
        cpu_search: str = "auto",
    ) -> DenseRetriever:
        """Loads and verifies an index written by `build`.

        Args:
            index_dir: The index directory.
            mmap: Memory-map the faiss index (flat and HNSW vectors) and the passages.
            device: ``"cpu"``; ``"cuda"`` (fail without a GPU); or ``"auto"`` (GPU when
                faiss or torch sees one). On GPU a flat index is held in fp16 and copied
                chunk by chunk, sharded across the visible GPUs; HNSW stays on the CPU.
                The encoder made from the manifest runs on the same device.
            expected_corpus: If given, the index must have been built from a file with
                exactly these bytes (sha256).
            encoder: The query encoder; default: the one in the manifest.
            n_threads: faiss CPU threads; -1 means all usable cores.
            gpu_backend: ``"auto"`` (faiss GPU if installed, else torch), ``"faiss"``
                or ``"torch"``.
            cpu_search: how a flat index left on the CPU is searched: ``"auto"``,
                ``"torch"`` (matmul + top-k) or ``"faiss"`` (see `CPU_FLAT_SEARCH`).

        Raises:
            FileNotFoundError: If ``index_dir`` is not a directory.
            CorruptIndexError: If the manifest is missing, unreadable or of another
                format version; a file is missing or its size or hash differs; the
                corpus fingerprint differs from ``expected_corpus``; or faiss/numpy
                fail to read a file. The message names the directory and the problem.
        """
        index_dir = Path(index_dir)
        use_gpu = wants_gpu(device, gpu_backend)
        if not index_dir.is_dir():
            raise FileNotFoundError(f"dense index directory not found: {index_dir}")
        manifest = read_manifest(
            index_dir,
            format_name=FORMAT_NAME,
            format_version=FORMAT_VERSION,
            required_files=REQUIRED_FILES,
            corrupt=lambda problem: _corrupt(index_dir, problem),
        )
        if expected_corpus is not None:
            verify_corpus(
                manifest, Path(expected_corpus), lambda problem: _corrupt(index_dir, problem)
            )
        try:
            fields = {f.name for f in dataclasses.fields(IndexSpec)}
            spec = IndexSpec(**{k: v for k, v in manifest["index"].items() if k in fields})
            enc_info = manifest["encoder"]
            index = read_faiss_index(index_dir / INDEX_NAME, mmap)
            offsets = np.load(
                index_dir / OFFSETS_NAME, mmap_mode="r" if mmap else None, allow_pickle=False
            )
            store = PassageStore(index_dir / PASSAGES_NAME, offsets, use_mmap=mmap)
            n = manifest["num_passages"]
            if index.ntotal != n or len(store) != n or index.d != enc_info["dim"]:
                raise _corrupt(
                    index_dir,
                    f"size mismatch: manifest {n} passages of dim {enc_info['dim']}, faiss index "
                    f"{index.ntotal} x {index.d}, passages file {len(store)}",
                )
        except CorruptIndexError:
            raise
        except Exception as e:
            raise _corrupt(index_dir, f"cannot load index files: {type(e).__name__}: {e}") from e
        enc = _query_encoder(encoder, enc_info, device)
        index, placement = place(index, use_gpu, gpu_backend, cpu_search)
        logger.info(
            "loaded dense index of %d passages from %s (mmap=%s, %s)",
            len(store),
            index_dir,
            mmap,
            placement,
        )
        return cls(
            index,
            store,
            enc,
            spec=spec,
            encoder_info=enc_info,
            corpus_info=manifest.get("corpus"),
            placement=placement,
            n_threads=n_threads,
        )

    @classmethod
    def from_published(
        cls,
        index_path: str | Path,
        corpus_path: str | Path,
        encoder: EncoderSpec = "e5",
        *,
        mmap: bool = True,
        device: str = "auto",
        offsets_dir: str | Path | None = None,
        n_threads: int = -1,
        gpu_backend: str = "auto",
        cpu_search: str = "auto",
        show_progress: bool = True,
    ) -> DenseRetriever:
        """Opens Search-R1's published index and corpus files as they are.

        ``index_path`` is a faiss index (``e5_Flat.index``: IndexFlatIP, 768-d fp32)
        whose rows follow the corpus JSONL (``wiki-18.jsonl``, uncompressed) line by
        line. Corpus rows are read lazily by byte offset; the offsets are computed on
        first use and cached (see `published_corpus_offsets`).

        Args:
            index_path: The faiss index file.
            corpus_path: The JSONL corpus, one ``{"id", "contents"}`` a line.
            encoder: The query encoder the index was made with (default ``"e5"``).
            mmap: Memory-map the index and the corpus.
            device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (see `load`).
            offsets_dir: Where to keep the offsets file (default: next to the corpus,
                else ``$SEARCH_ENV_CACHE/offsets``).
            n_threads: faiss CPU threads; -1 means all usable cores.
            gpu_backend: ``"auto"``, ``"faiss"`` or ``"torch"``.
            cpu_search: ``"auto"``, ``"torch"`` or ``"faiss"``, as in `load`.
            show_progress: Show a progress bar while the corpus' row offsets are found.

        Raises:
            FileNotFoundError: If a file does not exist.
            CorruptIndexError: If faiss cannot read the index, or its row count differs
                from the corpus'.
        """
        index_path, corpus_path = Path(index_path), Path(corpus_path)
        use_gpu = wants_gpu(device, gpu_backend)
        index, store = open_published(
            index_path,
            corpus_path,
            mmap=mmap,
            offsets_dir=offsets_dir,
            show_progress=show_progress,
        )
        enc = load_encoder(encoder, device=device)
        kind = index_type_of(index)
        spec = IndexSpec(kind) if kind in INDEX_TYPES else None
        index, placement = place(index, use_gpu, gpu_backend, cpu_search)
        logger.info(
            "opened published index %s (%d rows, %s) with %s",
            index_path,
            len(store),
            placement,
            corpus_path,
        )
        return cls(
            index,
            store,
            enc,
            spec=spec,
            corpus_info={
                "path": str(corpus_path.resolve()),
                "published_index": str(index_path.resolve()),
            },
            placement=placement,
            n_threads=n_threads,
        )

    # ------------------------------------------------------------------ searching
    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        """Retrieves ``k`` passages for each query: one encoder batch, one index search.

        Returns:
            One list per query, best first, each passage with its score set.

        Raises:
            ValueError: If ``k < 1``.
            TypeError: If ``queries`` is a single string or holds a non-string.
            RetrievalError: If the index search fails.
        """
        if isinstance(queries, (str, bytes)):
            raise TypeError("queries must be a sequence of strings, not a single string")
        queries = list(queries)
        for q in queries:
            if not isinstance(q, str):
                raise TypeError(f"each query must be a str, got {type(q).__name__}")
        _check_k(k)
        if not queries:
            return []
        scores, rows = self.search_vectors(self.encoder.encode_queries(queries), k)
        return [
            [self._store.passage(r, s) for s, r in zip(srow, rrow) if r >= 0]
            for srow, rrow in zip(scores.tolist(), rows.tolist())
        ]

    def search_vectors(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Searches pre-encoded query vectors ``(n, dim)``.

        Returns:
            ``(scores, rows)``, both ``(n, min(k, len(self)))``; row -1 marks no result.
        """
        _check_k(k)
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"query vectors must have shape (n, {self.dim}), got {x.shape}")
        k = min(int(k), len(self))
        self._configure_search(k)
        try:
            scores, rows = self._index.search(x, k)
        except Exception as e:
            raise RetrievalError(f"dense search failed: {type(e).__name__}: {e}") from e
        return scores, rows

    def _configure_search(self, k: int) -> None:
        """Sets HNSW's efSearch (at least k) or IVF's nprobe, once per larger k."""
        if self.spec is None or k <= self._configured_k or self.spec.type == "flat":
            return
        faiss = import_faiss()
        on_faiss_gpu = self.placement.startswith("faiss-gpu")
        space = faiss.GpuParameterSpace() if on_faiss_gpu else faiss.ParameterSpace()
        if self.spec.type == "hnsw":
            space.set_index_parameter(self._index, "efSearch", max(self.spec.ef_search, k))
        else:
            nprobe = min(self.spec.nprobe, self.spec.nlist or self.spec.nprobe)
            space.set_index_parameter(self._index, "nprobe", nprobe)
        self._configured_k = k

    def set_search_params(self, *, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """Changes HNSW ``ef_search`` or IVF ``nprobe`` for later searches."""
        if self.spec is None:
            raise ValueError("search parameters are unknown for this index")
        spec = self.spec
        self.spec = dataclasses.replace(
            spec,
            ef_search=spec.ef_search if ef_search is None else ef_search,
            nprobe=spec.nprobe if nprobe is None else nprobe,
        )
        self._configured_k = 0
        self._configure_search(1)

    # ------------------------------------------------------------------ lookup
    def get(self, passage_id: str) -> Passage:
        """Returns the passage with this id (``score=None``).

        Raises:
            KeyError: If no passage has this id.
        """
        return self._store.get(passage_id)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    def __len__(self) -> int:
        return len(self._store)

    def __repr__(self) -> str:
        kind = self.spec.type if self.spec else "?"
        return (
            f"DenseRetriever(passages={len(self)}, dim={self.dim}, index={kind!r}, "
            f"placement={self.placement!r})"
        )


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def _query_encoder(encoder: EncoderSpec | None, info: dict[str, Any], device: str) -> Encoder:
    if encoder is None:
        return encoder_from_description(info, device=device)
    enc = load_encoder(encoder, device=device)
    given = describe_encoder(enc)
    keys = ("model", "pooling", "query_prefix", "passage_prefix", "max_length", "normalize")
    differs = [key for key in keys if key in info and key in given and info[key] != given[key]]
    if differs:
        logger.warning(
            "query encoder differs from the index's in %s: results may be poor", ", ".join(differs)
        )
    return enc


def _corrupt(index_dir: Path, problem: str) -> CorruptIndexError:
    return CorruptIndexError(f"corrupt dense index {index_dir}: {problem}")
