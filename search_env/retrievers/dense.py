"""Dense retrieval: a faiss index over passage embeddings.

`DenseRetriever.build` encodes a corpus chunk by chunk and writes an index directory::

    index.faiss                             the faiss index (flat, HNSW or IVF-PQ; inner product)
    passages.jsonl, passages.offsets.npy    the passages, found by byte offset
    manifest.json                           format version, encoder, index parameters, sizes, hashes

The build is resumable: each encoded chunk is saved under ``{index_dir}.partial/`` as
soon as it is done, named by its position and the sha256 of its passages, so a crash
loses at most the chunk being encoded and a rerun encodes only what is missing. The
flat index file is written by streaming the chunks to disk, so building it needs the
memory of one chunk, not of the whole index.

`DenseRetriever.load` verifies the manifest and memory-maps the index. With a GPU, a
flat index is copied to the GPU(s) in fp16, chunk by chunk (never the whole fp32 array
at once: see Search-R1 issues #54/#57), through faiss GPU when installed, else as
fp16 torch tensors searched by matmul + top-k. `DenseRetriever.from_published` reads
Search-R1's published ``e5_Flat.index`` and wiki-18 JSONL as they are.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import mmap as _mmap
import os
import shutil
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence, Sized

import numpy as np
from tqdm.auto import tqdm

from search_env.data.corpus import corpus_fingerprint, iter_corpus
from search_env.retrievers._index_files import (
    available_cpus,
    HASH_NOTE,
    MANIFEST_NAME,
    OFFSETS_NAME,
    PASSAGES_NAME,
    PassageStore,
    PassageWriter,
    default_cache_dir,
    file_record,
    fsync,
    package_version,
    publish_dir,
    read_manifest,
    sha256_file,
    stage_dir,
    verify_corpus,
)
from search_env.retrievers.base import CorruptIndexError, RetrievalError
from search_env.retrievers.encoders import (
    DENSE_INSTALL_HINT,
    Encoder,
    EncoderConfig,
    describe_encoder,
    encoder_from_description,
    load_encoder,
)
from search_env.types import Passage

if TYPE_CHECKING:
    import torch

__all__ = ["DenseRetriever", "IndexSpec", "FORMAT_VERSION", "published_corpus_offsets"]

logger = logging.getLogger(__name__)

FORMAT_NAME = "search_env.dense"
FORMAT_VERSION = 1
INDEX_NAME = "index.faiss"
REQUIRED_FILES = (INDEX_NAME, PASSAGES_NAME, OFFSETS_NAME)
PARTIAL_FORMAT = "search_env.dense.partial"
PARTIAL_STATE_NAME = "build.json"
INDEX_TYPES = ("flat", "hnsw", "ivfpq")
GPU_BACKENDS = ("auto", "faiss", "torch")
CPU_FLAT_SEARCH = ("auto", "faiss", "torch")
"""How a flat inner-product index is searched on the CPU: ``"torch"`` is a matmul + top-k
over a zero-copy view of faiss' own vectors (same scores; 2.2-11x the throughput of
faiss 1.15's flat search at 1-512 queries a batch on 2 cores, benchmarks/bench_dense.py),
``"faiss"`` is faiss' search, ``"auto"`` is torch when it is installed."""
GPU_ADD_ROWS = 1 << 20
"""Rows copied to a GPU at a time (3 GB of fp32 at d=768)."""

EncoderSpec = str | os.PathLike | EncoderConfig | Encoder


@dataclass(frozen=True)
class IndexSpec:
    """Which faiss index to build, and its build- and search-time parameters.

    All indexes use inner product (encoders return normalised vectors: cosine).
    ``"flat"`` is exact and the Search-R1 reference (4 bytes x dim per passage);
    ``"hnsw"`` (IndexHNSWFlat) is a fast approximate graph over the same vectors;
    ``"ivfpq"`` (IndexIVFPQ) compresses each vector to ``pq_m`` bytes for machines
    without 65 GB to spare.
    """

    type: str = "flat"
    """``"flat"``, ``"hnsw"`` or ``"ivfpq"``."""
    hnsw_m: int = 32
    """HNSW: graph neighbours per node."""
    ef_construction: int = 200
    """HNSW: candidate list size while building."""
    ef_search: int = 128
    """HNSW: candidate list size while searching (raised to ``k`` if smaller)."""
    nlist: int | None = None
    """IVF: number of clusters (default about 4 sqrt(n), at most n_train / 39)."""
    pq_m: int | None = None
    """PQ: sub-quantizers = bytes per vector (default: dim / 8, a divisor of dim)."""
    pq_nbits: int | None = None
    """PQ: bits per sub-quantizer code (default 8, fewer for tiny training sets)."""
    nprobe: int = 32
    """IVF: clusters visited per query."""
    train_size: int = 262_144
    """IVF-PQ: passages sampled to train the quantizers."""

    def __post_init__(self) -> None:
        if self.type not in INDEX_TYPES:
            raise ValueError(f"index type must be one of {INDEX_TYPES}, got {self.type!r}")
        for name in ("hnsw_m", "ef_construction", "ef_search", "nprobe", "train_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("nlist", "pq_m", "pq_nbits"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError as e:
        raise ImportError(f"DenseRetriever needs faiss: {DENSE_INSTALL_HINT}") from e
    return faiss


def _set_faiss_threads(n_threads: int) -> int:
    """faiss' OpenMP pool is process-wide; -1 means every usable core."""
    faiss = _import_faiss()
    n = available_cpus() if n_threads == -1 else n_threads
    if n < 1:
        raise ValueError(f"n_threads must be >= 1 or -1 (all cores), got {n_threads}")
    faiss.omp_set_num_threads(n)
    return n


def _read_faiss_index(path: Path, mmap: bool) -> Any:
    faiss = _import_faiss()
    # IO_FLAG_MMAP_IFC maps flat codes (flat, HNSW storage) from the file; older faiss
    # only has IO_FLAG_MMAP, which maps IVF lists but reads flat indexes into memory.
    flag = getattr(faiss, "IO_FLAG_MMAP_IFC", None) if mmap else 0
    if flag is None:
        logger.warning("this faiss cannot memory-map flat codes; reading %s into memory", path)
        flag = 0
    return faiss.read_index(str(path), flag)


def _index_type_of(index: Any) -> str:
    faiss = _import_faiss()
    if isinstance(index, faiss.IndexFlat):
        return "flat"
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(index, faiss.IndexIVFPQ):
        return "ivfpq"
    return type(index).__name__


# ---------------------------------------------------------------------- GPU
def _faiss_gpu_count() -> int:
    faiss = _import_faiss()
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except Exception:  # pragma: no cover - broken CUDA install
        return 0


def _torch_gpu_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _shard_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n, parts + 1).astype(np.int64).tolist()
    return list(zip(edges[:-1], edges[1:]))


RowSource = Callable[[int, int], Any]
"""``rows(start, stop)`` -> a (stop - start, d) float32 array or tensor."""


class _FaissGpuFlat:
    """Flat inner-product search on faiss GPU indexes in fp16, sharded across GPUs.

    Each shard is a ``GpuIndexFlatIP`` with ``useFloat16`` filled by ``add()`` in chunks,
    so a GPU never holds the fp32 copy of the whole index.
    """

    def __init__(
        self,
        n: int,
        d: int,
        rows: RowSource,
        *,
        gpus: Sequence[int],
        chunk_rows: int = GPU_ADD_ROWS,
    ) -> None:
        faiss = _import_faiss()
        self.d, self.ntotal = d, n
        self._resources: list[Any] = []
        self._parts: list[Any] = []
        for gpu, (lo, hi) in zip(gpus, _shard_bounds(n, len(gpus))):
            res = faiss.StandardGpuResources()
            cfg = faiss.GpuIndexFlatConfig()
            cfg.device = int(gpu)
            cfg.useFloat16 = True
            part = faiss.GpuIndexFlatIP(res, d, cfg)
            for start in range(lo, hi, chunk_rows):
                block = rows(start, min(start + chunk_rows, hi))
                if not isinstance(block, np.ndarray):  # a torch tensor
                    block = block.float().cpu().numpy()
                part.add(np.ascontiguousarray(block, dtype=np.float32))
            self._resources.append(res)
            self._parts.append(part)
        if len(self._parts) == 1:
            self._index = self._parts[0]
        else:
            self._index = faiss.IndexShards(d, True, True)  # threaded, successive ids
            for part in self._parts:
                self._index.add_shard(part)

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._index.search(x, k)


class _TorchFlat:
    """Exact inner-product search as matmul + top-k on torch tensors, sharded by rows.

    Used on GPUs when faiss has no GPU support (the ``[dense]`` extra installs
    faiss-cpu); on CPU it runs in fp32 and is what the tests check against faiss.
    """

    def __init__(self, shards: Sequence[torch.Tensor], *, max_block_bytes: int = 1 << 30) -> None:
        if not shards:
            raise ValueError("no shards")
        self._shards = list(shards)  # each (n_i, d)
        self.d = int(self._shards[0].shape[1])
        self.ntotal = sum(int(s.shape[0]) for s in self._shards)
        self._starts = np.cumsum([0] + [int(s.shape[0]) for s in self._shards])[:-1].tolist()
        self._max_block_bytes = max_block_bytes

    @classmethod
    def from_rows(
        cls,
        n: int,
        d: int,
        rows: RowSource,
        *,
        devices: Sequence[str],
        dtype: Any,
        chunk_rows: int = GPU_ADD_ROWS,
    ) -> _TorchFlat:
        """Fills one ``(n_i, d)`` tensor per device, ``chunk_rows`` rows at a time."""
        import torch

        shards = []
        for device, (lo, hi) in zip(devices, _shard_bounds(n, len(devices))):
            shard = torch.empty((hi - lo, d), dtype=dtype, device=device)
            for start in range(lo, hi, chunk_rows):
                stop = min(start + chunk_rows, hi)
                block = rows(start, stop)
                block = torch.as_tensor(block).to(device=device, dtype=dtype)
                shard[start - lo : stop - lo] = block
            shards.append(shard)
        return cls(shards)

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        shard_scores, shard_ids = [], []
        with torch.no_grad():
            for shard, offset in zip(self._shards, self._starts):
                q = torch.as_tensor(x).to(device=shard.device, dtype=shard.dtype)  # (B, d)
                # Score blocks of rows so that the (B, rows) score matrix stays small.
                block = max(k, self._max_block_bytes // max(1, q.shape[0] * shard.element_size()))
                scores, ids = [], []
                for lo in range(0, shard.shape[0], block):
                    scores_block = q @ shard[lo : lo + block].T  # (B, rows)
                    top = scores_block.topk(min(k, scores_block.shape[1]), dim=1)  # (B, <=k)
                    scores.append(top.values.float())
                    ids.append(top.indices + (offset + lo))
                # Merge the blocks on the device; one transfer per shard.
                s, i = _merge_top(torch.cat(scores, dim=1), torch.cat(ids, dim=1), k)
                shard_scores.append(s.cpu())
                shard_ids.append(i.cpu())
            s, i = _merge_top(torch.cat(shard_scores, dim=1), torch.cat(shard_ids, dim=1), k)
        return s.numpy(), i.numpy()


def _place(index: Any, use_gpu: bool, gpu_backend: str, cpu_search: str) -> tuple[Any, str]:
    """The GPU copy of ``index`` when wanted and possible, else its CPU search; (index, where)."""
    placement = "cpu"
    if use_gpu:
        index, placement = _to_gpu(index, gpu_backend)
    if placement == "cpu":
        index, placement = _cpu_flat_search(index, cpu_search)
    return index, placement


def _cpu_flat_search(index: Any, mode: str) -> tuple[Any, str]:
    """Wraps a CPU flat inner-product index for matmul search; returns (index, placement)."""
    if mode not in CPU_FLAT_SEARCH:
        raise ValueError(f"cpu_search must be one of {CPU_FLAT_SEARCH}, got {mode!r}")
    faiss = _import_faiss()
    flat_ip = _index_type_of(index) == "flat" and index.metric_type == faiss.METRIC_INNER_PRODUCT
    if mode == "faiss" or (mode == "auto" and not flat_ip):
        return index, "cpu"
    if not flat_ip:
        raise ValueError("cpu_search='torch' needs a flat inner-product index")
    try:
        import torch
    except ImportError as e:
        if mode == "torch":
            raise ImportError(
                "cpu_search='torch' needs torch: pip install 'search-env[dense]'"
            ) from e
        return index, "cpu"
    n, d = int(index.ntotal), int(index.d)
    # A view of the index's own (possibly memory-mapped) vectors: nothing is copied.
    rows = np.zeros((0, d), np.float32)
    if n:
        rows = faiss.rev_swig_ptr(index.get_xb(), n * d).reshape(n, d)
    wrapped = _TorchFlat([torch.from_numpy(rows)])
    wrapped.owner = index  # keeps the faiss index, and so the memory, alive
    return wrapped, "cpu-torch"


def _merge_top(
    scores: torch.Tensor, ids: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The best ``k`` of candidate (scores, ids), both (B, m)."""
    top = scores.topk(min(k, scores.shape[1]), dim=1)
    return top.values, ids.gather(1, top.indices)


def _to_gpu(cpu_index: Any, backend: str) -> tuple[Any, str]:
    """Moves a flat or IVF-PQ index to every visible GPU; returns (index, where)."""
    faiss = _import_faiss()
    kind = _index_type_of(cpu_index)
    n_faiss = _faiss_gpu_count()
    use_faiss = backend == "faiss" or (backend == "auto" and n_faiss > 0)
    if backend == "faiss" and n_faiss == 0:
        raise RuntimeError(
            "gpu_backend='faiss' but this faiss has no GPU support (pip install faiss-gpu)"
        )
    if kind not in ("flat", "ivfpq"):
        logger.info("%s index stays on the CPU (no GPU version)", kind)
        return cpu_index, "cpu"
    if kind == "flat" and cpu_index.metric_type != faiss.METRIC_INNER_PRODUCT:
        logger.info("GPU flat search is inner product only; this index stays on the CPU")
        return cpu_index, "cpu"

    def rows(start: int, stop: int) -> np.ndarray:
        return cpu_index.reconstruct_n(start, stop - start)

    n, d = int(cpu_index.ntotal), int(cpu_index.d)
    if use_faiss:
        if kind == "flat":
            index = _FaissGpuFlat(n, d, rows, gpus=range(n_faiss))
        else:  # IVF-PQ is small: faiss' own copy is fine
            co = faiss.GpuMultipleClonerOptions()
            co.useFloat16 = True
            co.shard = True
            index = faiss.index_cpu_to_all_gpus(cpu_index, co)
        return index, f"faiss-gpu x{n_faiss}"
    if kind != "flat":
        logger.info("faiss has no GPU support; the %s index stays on the CPU", kind)
        return cpu_index, "cpu"
    import torch

    n_torch = _torch_gpu_count()
    if n_torch == 0:
        logger.info("torch sees no CUDA GPU; the index stays on the CPU")
        return cpu_index, "cpu"
    devices = [f"cuda:{i}" for i in range(n_torch)]
    index = _TorchFlat.from_rows(n, d, rows, devices=devices, dtype=torch.float16)
    return index, f"torch-cuda x{n_torch}"


def _wants_gpu(device: str, backend: str) -> bool:
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if backend not in GPU_BACKENDS:
        raise ValueError(f"gpu_backend must be one of {GPU_BACKENDS}, got {backend!r}")
    if device == "cpu":
        return False
    have = _faiss_gpu_count() > 0 or (backend != "faiss" and _torch_gpu_count() > 0)
    if device == "cuda" and not have:
        raise RuntimeError(
            "device='cuda' but no GPU is usable by faiss or torch (use device='cpu' or 'auto')"
        )
    return have


# ---------------------------------------------------------------------- building
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
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)


class _ChunkRows:
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


def _flat_file_layout(d: int) -> tuple[bytes, int, int]:
    """How this faiss writes an IndexFlatIP: (header for 0 rows, ntotal offset, size unit).

    Derived by serializing tiny indexes and checked byte for byte, so the streaming
    writer produces exactly what ``faiss.write_index`` would.
    """
    faiss = _import_faiss()

    def serialized(n: int) -> bytes:
        index = faiss.IndexFlatIP(d)
        if n:
            index.add(np.arange(n * d, dtype=np.float32).reshape(n, d))
        return faiss.serialize_index(index).tobytes()

    empty, one, three = serialized(0), serialized(1), serialized(3)
    header, ntotal_at = empty[:-8], 8  # fourcc (4) + d (int32), then ntotal (int64)
    unit = int.from_bytes(one[len(header) : len(header) + 8], "little")

    def layout(n: int) -> bytes:
        h = bytearray(header)
        h[ntotal_at : ntotal_at + 8] = n.to_bytes(8, "little")
        return bytes(h) + (n * unit).to_bytes(8, "little")

    for n, blob in ((1, one), (3, three)):
        rows = np.arange(n * d, dtype=np.float32).tobytes()
        if blob != layout(n) + rows or int.from_bytes(empty[-8:], "little") != 0:
            raise RuntimeError("unrecognised faiss IndexFlat file layout")
    return header, ntotal_at, unit


def _write_flat_streaming(path: Path, chunks: _ChunkRows, show_progress: bool) -> None:
    """Writes an IndexFlatIP file from the chunk files without holding all rows in memory."""
    header, ntotal_at, unit = _flat_file_layout(chunks.d)
    h = bytearray(header)
    h[ntotal_at : ntotal_at + 8] = chunks.n.to_bytes(8, "little")
    with open(path, "wb") as f:
        f.write(bytes(h) + (chunks.n * unit).to_bytes(8, "little"))
        bar = tqdm(chunks.arrays, desc="dense write flat", unit="chunk", disable=not show_progress)
        for a in bar:
            f.write(np.ascontiguousarray(a, dtype="<f4").tobytes())
        f.flush()
        os.fsync(f.fileno())
    check = _read_faiss_index(path, mmap=True)
    last = check.reconstruct(chunks.n - 1)
    if check.ntotal != chunks.n or not np.array_equal(last, chunks.arrays[-1][-1]):
        raise RuntimeError(f"{path}: the streamed flat index does not read back")


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
    chunks: _ChunkRows, spec: IndexSpec, show_progress: bool, seed: int
) -> Any:
    faiss = _import_faiss()
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


# ---------------------------------------------------------------------- published corpora
def _line_starts(
    path: Path, show_progress: bool, block_bytes: int = 64 << 20
) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive, newline excluded) of every line, found with numpy."""
    newlines = []
    size = path.stat().st_size
    bar = tqdm(
        total=size, desc="corpus row offsets", unit="B", unit_scale=True, disable=not show_progress
    )
    with open(path, "rb") as f, bar:
        base = 0
        while block := f.read(block_bytes):
            newlines.append(np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10) + base)
            base += len(block)
            bar.update(len(block))
    size = base
    nl = np.concatenate(newlines) if newlines else np.zeros(0, dtype=np.int64)
    starts = np.concatenate([[0], nl + 1]).astype(np.int64)
    ends = np.concatenate([nl, [size]]).astype(np.int64)
    return starts, ends


def _scan_offsets(path: Path, show_progress: bool = False) -> np.ndarray:
    """Row offsets of a JSONL corpus (blank lines skipped, as `iter_corpus` does)."""
    starts, ends = _line_starts(path, show_progress)
    size = int(ends[-1])
    keep = ends > starts
    short = np.flatnonzero(keep & (ends - starts < 16))  # whitespace-only lines are short
    if len(short):
        with open(path, "rb") as f, _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_READ) as buf:
            for i in short.tolist():
                keep[i] = bool(buf[starts[i] : ends[i]].strip())
    if not keep.any():
        raise ValueError(f"{path}: no passages (the corpus file is empty)")
    offsets = np.append(starts[keep], size).astype(np.int64)
    offsets[0] = 0  # leading blank lines go with the first row
    return offsets


def published_corpus_offsets(
    corpus_path: str | Path, *, cache_dir: str | Path | None = None, show_progress: bool = True
) -> np.ndarray:
    """Byte offsets of the rows of a JSONL corpus, computed once and cached.

    The offsets file ``{name}.{key}.offsets.npy`` is kept in ``cache_dir`` if given,
    else next to the corpus when that directory is writable, else in
    ``$SEARCH_ENV_CACHE/offsets``. The key is the corpus' sha256 (whole file up to 64
    MiB; else of its size, first and last MiB, so that opening wiki-18 stays fast).

    Raises:
        FileNotFoundError: If the corpus does not exist.
        ValueError: If it is gzip-compressed (rows cannot be found by offset: gunzip it).
    """
    path = Path(corpus_path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")
    with open(path, "rb") as f:
        if f.read(2) == b"\x1f\x8b":
            raise ValueError(
                f"{path} is gzip-compressed; gunzip it first (rows are read by byte offset)"
            )
    size = path.stat().st_size
    key = sha256_file(path, size)[1][:16]
    name = f"{path.name}.{key}.offsets.npy"
    if cache_dir is not None:
        dirs = [Path(cache_dir)]
    else:
        dirs = [path.parent, default_cache_dir() / "offsets"]
    for d in dirs:
        if (d / name).is_file():
            offsets = np.load(d / name, mmap_mode="r", allow_pickle=False)
            if len(offsets) and int(offsets[0]) == 0 and int(offsets[-1]) == size:
                return offsets
            logger.warning("ignoring stale offsets file %s", d / name)
    start = time.perf_counter()
    logger.info("finding the rows of %s (once)", path)
    offsets = _scan_offsets(path, show_progress)
    seconds = time.perf_counter() - start
    logger.info("found %d rows in %s in %.1f s", len(offsets) - 1, path, seconds)
    for d in dirs:
        try:
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / f".{name}.{os.getpid()}.tmp.npy"
            np.save(tmp, offsets)
            os.replace(tmp, d / name)
            logger.info("saved row offsets to %s", d / name)
            break
        except OSError as e:
            logger.info("cannot write offsets to %s (%s)", d, e)
    return offsets


# ---------------------------------------------------------------------- the retriever
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
        self.n_threads = _set_faiss_threads(n_threads)
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
        faiss = _import_faiss()
        final = Path(index_dir)
        if final.exists() and not overwrite:
            raise FileExistsError(f"{final} already exists (pass overwrite=True to replace it)")
        _wants_gpu(device, "auto")  # validates the device before hours of encoding
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        spec = index_type if isinstance(index_type, IndexSpec) else IndexSpec(index_type)
        _set_faiss_threads(n_threads)
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
            logger.info(
                "encoded %d chunks, reused %d saved chunks", partial.encoded, partial.reused
            )
            chunks = _ChunkRows(paths)
            if spec.type == "ivfpq":
                spec = _resolve_ivfpq(spec, chunks.n, dim)
            if spec.type == "flat":
                try:
                    _write_flat_streaming(tmp / INDEX_NAME, chunks, show_progress)
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
        return cls.load(final, encoder=enc, device=device, n_threads=n_threads)

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
        use_gpu = _wants_gpu(device, gpu_backend)
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
            index = _read_faiss_index(index_dir / INDEX_NAME, mmap)
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
        index, placement = _place(index, use_gpu, gpu_backend, cpu_search)
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
        use_gpu = _wants_gpu(device, gpu_backend)
        if not index_path.is_file():
            raise FileNotFoundError(f"faiss index file not found: {index_path}")
        try:
            index = _read_faiss_index(index_path, mmap)
        except Exception as e:
            raise CorruptIndexError(
                f"cannot read faiss index {index_path}: {type(e).__name__}: {e}"
            ) from e
        offsets = published_corpus_offsets(
            corpus_path, cache_dir=offsets_dir, show_progress=show_progress
        )
        store = PassageStore(corpus_path, offsets, use_mmap=mmap)
        if index.ntotal != len(store):
            raise CorruptIndexError(
                f"{index_path} has {index.ntotal} rows but {corpus_path} has {len(store)} "
                "passages: "
                "the index and corpus do not belong together"
            )
        enc = load_encoder(encoder, device=device)
        kind = _index_type_of(index)
        spec = IndexSpec(kind) if kind in INDEX_TYPES else None
        index, placement = _place(index, use_gpu, gpu_backend, cpu_search)
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
        faiss = _import_faiss()
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
        changes = {k: v for k, v in (("ef_search", ef_search), ("nprobe", nprobe)) if v is not None}
        self.spec = dataclasses.replace(self.spec, **changes)
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
