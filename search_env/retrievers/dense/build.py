"""The build of a dense index: chunked, resumable encoding, then the faiss index and manifest.

Each encoded chunk is saved under ``{index_dir}.partial/`` as soon as it is done, named
by its position and the sha256 of its passages, so a crash loses at most the chunk being
encoded and a rerun encodes only what is missing. A flat index is then streamed to disk
from the chunk files (`search_env.retrievers.dense.flat_file`), so it needs the memory of
one chunk, not of the whole index; HNSW and IVF-PQ are built in memory by faiss.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence, Sized
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from search_env.data.corpus import corpus_fingerprint, iter_corpus
from search_env.files import atomic_write_text
from search_env.retrievers._index_files import (
    HASH_NOTE,
    MANIFEST_NAME,
    OFFSETS_NAME,
    PASSAGES_NAME,
    PassageWriter,
    file_record,
    fsync,
    package_version,
    publish_dir,
    stage_dir,
)
from search_env.retrievers.dense.faiss_io import import_faiss, set_faiss_threads
from search_env.retrievers.dense.flat_file import write_flat_streaming
from search_env.retrievers.dense.placement import wants_gpu
from search_env.retrievers.dense.spec import (
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_NAME,
    EncoderSpec,
    IndexSpec,
)
from search_env.retrievers.encoders import Encoder, describe_encoder, load_encoder
from search_env.types import Passage

__all__ = ["ChunkRows", "build_index"]

logger = logging.getLogger(__name__)

PARTIAL_FORMAT = "search_env.dense.partial"
PARTIAL_STATE_NAME = "build.json"


def _chunked(items: Iterable[Passage], size: int) -> Iterator[list[Passage]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def _chunk_digest(chunk: Sequence[Passage]) -> str:
    h = hashlib.sha256()
    for p in chunk:
        h.update(p.id.encode("utf-8", "surrogatepass") + b"\0")
        h.update(p.contents.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()


class _PartialBuild:
    """Encoded chunks saved as ``emb_{i:05d}.{sha256[:16]}.npy`` in ``{index_dir}.partial``."""

    def __init__(self, path: Path, state: dict[str, Any]) -> None:
        self.path = path
        self.encoded = 0
        self.reused = 0
        saved = len(list(path.glob("emb_*.npy")))
        if saved and self._read_state() != state:
            logger.warning(
                "%s was made with other settings (encoder or chunk size): starting over", path
            )
            self.clear()
        elif saved:
            logger.info("resuming the dense build: %d encoded chunks found in %s", saved, path)
        path.mkdir(parents=True, exist_ok=True)
        self._write_json(path / PARTIAL_STATE_NAME, state)

    def _read_state(self) -> dict[str, Any] | None:
        try:
            state = json.loads((self.path / PARTIAL_STATE_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return state if isinstance(state, dict) else None

    def clear(self) -> None:
        """Deletes our files only (never an unrelated directory's content)."""
        if not self.path.is_dir():
            return
        ours = [*self.path.glob("emb_*.npy"), *self.path.glob(".emb_*.tmp.npy")]
        for p in [*ours, self.path / PARTIAL_STATE_NAME]:
            p.unlink(missing_ok=True)

    def remove(self) -> None:
        self.clear()
        try:
            self.path.rmdir()
        except OSError:
            logger.warning("left %s in place (it holds files not written by the build)", self.path)

    def embeddings(self, i: int, chunk: Sequence[Passage], encoder: Encoder, dim: int) -> Path:
        """The saved embeddings of chunk ``i``, encoding them first if not saved yet."""
        digest = _chunk_digest(chunk)[:16]
        path = self.path / f"emb_{i:05d}.{digest}.npy"
        if path.is_file():
            try:
                saved = np.load(path, mmap_mode="r", allow_pickle=False)
                if saved.shape == (len(chunk), dim) and saved.dtype == np.float32:
                    self.reused += 1
                    return path
            except (ValueError, OSError):
                pass
            logger.warning("%s is damaged: encoding the chunk again", path)
        for stale in self.path.glob(f"emb_{i:05d}.*.npy"):
            stale.unlink()
        vectors = encoder.encode_passages([p.contents for p in chunk])
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(chunk), dim):
            raise ValueError(
                f"encoder returned shape {vectors.shape} for {len(chunk)} passages of dim {dim}"
            )
        tmp = self.path / f".emb_{i:05d}.tmp.npy"
        np.save(tmp, vectors)
        fsync(tmp)
        os.replace(tmp, path)
        self.encoded += 1
        return path

    def drop_from(self, first: int) -> None:
        """Deletes saved chunks ``first, first + 1, ...`` (left by a longer corpus)."""
        for p in self.path.glob("emb_*.npy"):
            if int(p.name.split(".")[0][4:]) >= first:
                p.unlink()

    @staticmethod
    def _write_json(path: Path, data: dict[str, Any]) -> None:
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")


class ChunkRows:
    """Rows of the saved chunk files, read through memory maps."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.arrays = [np.load(p, mmap_mode="r", allow_pickle=False) for p in paths]
        self.starts = np.cumsum([0] + [len(a) for a in self.arrays])
        self.n = int(self.starts[-1])
        self.d = int(self.arrays[0].shape[1])

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The given (sorted) rows, as one float32 array."""
        which = np.searchsorted(self.starts, rows, side="right") - 1
        out = np.empty((len(rows), self.d), dtype=np.float32)
        for c in np.unique(which):
            sel = which == c
            out[sel] = self.arrays[c][rows[sel] - self.starts[c]]
        return out


def _resolve_ivfpq(spec: IndexSpec, n: int, d: int) -> IndexSpec:
    n_train = min(n, spec.train_size)
    nlist = spec.nlist or max(1, min(int(4 * np.sqrt(n)), n_train // 39))
    pq_m = spec.pq_m or max(m for m in range(1, max(1, d // 8) + 1) if d % m == 0)
    # k-means needs at least as many training points as centroids (39x to be happy).
    nbits = spec.pq_nbits or int(np.clip(np.floor(np.log2(max(n_train / 39, 2))), 1, 8))
    if d % pq_m:
        raise ValueError(f"pq_m={pq_m} must divide the dimension {d}")
    return dataclasses.replace(spec, nlist=nlist, pq_m=pq_m, pq_nbits=nbits)


def _build_faiss_in_memory(
    chunks: ChunkRows, spec: IndexSpec, show_progress: bool, seed: int
) -> Any:
    faiss = import_faiss()
    d = chunks.d
    if spec.type == "hnsw":
        index = faiss.IndexHNSWFlat(d, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec.ef_construction
    else:
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFPQ(
            quantizer, d, spec.nlist, spec.pq_m, spec.pq_nbits, faiss.METRIC_INNER_PRODUCT
        )
        index.referenced_objects = [quantizer]  # keep the quantizer alive with the index
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(chunks.n, size=min(chunks.n, spec.train_size), replace=False))
        assert spec.nlist is not None and spec.pq_nbits is not None  # set by _resolve_ivfpq
        if len(sample) < 39 * max(spec.nlist, 2**spec.pq_nbits):
            # faiss prints one warning per sub-quantizer otherwise; say it once.
            logger.warning("only %d training vectors: IVF-PQ recall will be poor", len(sample))
            index.cp.min_points_per_centroid = 1
            index.pq.cp.min_points_per_centroid = 1
        logger.info(
            "training IVF-PQ (nlist=%d, m=%d, nbits=%d) on %d vectors",
            spec.nlist,
            spec.pq_m,
            spec.pq_nbits,
            len(sample),
        )
        index.train(chunks.take(sample))
    desc = f"dense add ({spec.type})"
    for a in tqdm(chunks.arrays, desc=desc, unit="chunk", disable=not show_progress):
        index.add(np.ascontiguousarray(a, dtype=np.float32))
    return index


def _open_corpus(
    corpus: str | Path | Iterable[Passage],
) -> tuple[Iterable[Passage], dict[str, str] | None, int | None]:
    """(passages, corpus info for the manifest, passage count if known)."""
    if isinstance(corpus, (str, Path)):
        path = Path(corpus)
        info = {"path": str(path.resolve()), "sha256": corpus_fingerprint(path)}
        return iter_corpus(path), info, None
    return corpus, None, len(corpus) if isinstance(corpus, Sized) else None


def build_index(
    corpus: str | Path | Iterable[Passage],
    index_dir: str | Path,
    *,
    encoder: EncoderSpec,
    index_type: str | IndexSpec,
    chunk_size: int,
    batch_size: int,
    show_progress: bool,
    device: str,
    overwrite: bool,
    keep_partial: bool,
    n_threads: int,
    seed: int,
) -> Encoder:
    """Writes the index of `DenseRetriever.build` (see there); returns the encoder used."""
    faiss = import_faiss()
    final = Path(index_dir)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists (pass overwrite=True to replace it)")
    wants_gpu(device, "auto")  # validates the device before hours of encoding
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    spec = index_type if isinstance(index_type, IndexSpec) else IndexSpec(index_type)
    set_faiss_threads(n_threads)
    enc = load_encoder(encoder, device=device, batch_size=batch_size)
    enc_info = describe_encoder(enc)
    dim = int(enc.dim)
    passages, corpus_info, total = _open_corpus(corpus)
    state = {
        "format": PARTIAL_FORMAT,
        "format_version": FORMAT_VERSION,
        "encoder": enc_info,
        "chunk_size": chunk_size,
    }
    partial = _PartialBuild(final.with_name(final.name + ".partial"), state)
    started = time.perf_counter()
    tmp = stage_dir(final)
    writer = PassageWriter(tmp / PASSAGES_NAME)
    try:
        paths = []
        bar = tqdm(total=total, desc="dense encode", unit="passage", disable=not show_progress)
        with bar:
            for i, chunk in enumerate(_chunked(passages, chunk_size)):
                for p in chunk:
                    writer.add(p)
                paths.append(partial.embeddings(i, chunk, enc, dim))
                bar.update(len(chunk))
                bar.set_postfix(encoded=partial.encoded, reused=partial.reused)
        offsets = writer.close()
        if not paths:
            raise ValueError("cannot build a dense index from an empty corpus")
        partial.drop_from(len(paths))
        logger.info("encoded %d chunks, reused %d saved chunks", partial.encoded, partial.reused)
        chunks = ChunkRows(paths)
        if spec.type == "ivfpq":
            spec = _resolve_ivfpq(spec, chunks.n, dim)
        if spec.type == "flat":
            try:
                write_flat_streaming(tmp / INDEX_NAME, chunks, show_progress)
            except RuntimeError as e:  # an unknown faiss file layout: build it in memory
                logger.warning("streaming flat write failed (%s); building it in memory", e)
                index = faiss.IndexFlatIP(dim)
                for a in chunks.arrays:
                    index.add(np.ascontiguousarray(a, dtype=np.float32))
                faiss.write_index(index, str(tmp / INDEX_NAME))
        else:
            index = _build_faiss_in_memory(chunks, spec, show_progress, seed)
            faiss.write_index(index, str(tmp / INDEX_NAME))
            del index
        del chunks
        np.save(tmp / OFFSETS_NAME, offsets)
        files = {p.name: file_record(p) for p in sorted(tmp.iterdir())}
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "kind": "dense",
            "package": "search_env",
            "package_version": package_version(),
            "faiss_version": getattr(faiss, "__version__", None),
            "numpy_version": np.__version__,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "encoder": enc_info,
            "index": {**dataclasses.asdict(spec), "metric": "inner_product", "dim": dim},
            "num_passages": len(offsets) - 1,
            "corpus": corpus_info,
            "build": {
                "chunk_size": chunk_size,
                "seconds": round(time.perf_counter() - started, 3),
            },
            "files": files,
            "hash_note": HASH_NOTE,
        }
        text = json.dumps(manifest, indent=2) + "\n"
        (tmp / MANIFEST_NAME).write_text(text, encoding="utf-8")
        publish_dir(tmp, final)
    except BaseException:
        writer.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not keep_partial:
        partial.remove()
    logger.info("saved dense index of %d passages to %s", len(offsets) - 1, final)
    return enc
