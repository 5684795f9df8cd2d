"""Where a loaded index is searched: on the GPU(s) or the CPU, through faiss or torch.

A flat index goes to the GPU(s) in fp16, copied chunk by chunk and sharded by rows (never
the whole fp32 array at once: see Search-R1 issues #54/#57), through faiss GPU when it is
installed (`FaissGpuFlat`), else as fp16 torch tensors searched by matmul + top-k
(`TorchFlat`). IVF-PQ goes through faiss' own cloner; HNSW stays on the CPU. On the CPU a
flat inner-product index is searched by `TorchFlat` over a zero-copy view of faiss' own
vectors unless ``cpu_search="faiss"``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from search_env.retrievers.dense.faiss_io import import_faiss, index_type_of

if TYPE_CHECKING:
    import torch

__all__ = [
    "CPU_FLAT_SEARCH",
    "GPU_ADD_ROWS",
    "GPU_BACKENDS",
    "FaissGpuFlat",
    "RowSource",
    "TorchFlat",
    "faiss_gpu_count",
    "place",
    "torch_gpu_count",
    "wants_gpu",
]

logger = logging.getLogger(__name__)

GPU_BACKENDS = ("auto", "faiss", "torch")
CPU_FLAT_SEARCH = ("auto", "faiss", "torch")
"""How a flat inner-product index is searched on the CPU: ``"torch"`` is a matmul + top-k
over a zero-copy view of faiss' own vectors (same scores; 2.2-11x the throughput of
faiss 1.15's flat search at 1-512 queries a batch on 2 cores, benchmarks/bench_dense.py),
``"faiss"`` is faiss' search, ``"auto"`` is torch when it is installed."""
GPU_ADD_ROWS = 1 << 20
"""Rows copied to a GPU at a time (3 GB of fp32 at d=768)."""


def faiss_gpu_count() -> int:
    """GPUs usable by faiss (0 for faiss-cpu)."""
    faiss = import_faiss()
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except Exception:  # pragma: no cover - broken CUDA install
        return 0


def torch_gpu_count() -> int:
    """CUDA GPUs visible to torch (0 without torch)."""
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


class FaissGpuFlat:
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
        faiss = import_faiss()
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


class TorchFlat:
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
        self.owner: object = None  # what the shards view (a faiss index), kept alive with them

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
    ) -> TorchFlat:
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


def place(index: Any, use_gpu: bool, gpu_backend: str, cpu_search: str) -> tuple[Any, str]:
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
    faiss = import_faiss()
    flat_ip = index_type_of(index) == "flat" and index.metric_type == faiss.METRIC_INNER_PRODUCT
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
    wrapped = TorchFlat([torch.from_numpy(rows)])
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
    faiss = import_faiss()
    kind = index_type_of(cpu_index)
    n_faiss = faiss_gpu_count()
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
            index = FaissGpuFlat(n, d, rows, gpus=range(n_faiss))
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

    n_torch = torch_gpu_count()
    if n_torch == 0:
        logger.info("torch sees no CUDA GPU; the index stays on the CPU")
        return cpu_index, "cpu"
    devices = [f"cuda:{i}" for i in range(n_torch)]
    torch_index = TorchFlat.from_rows(n, d, rows, devices=devices, dtype=torch.float16)
    return torch_index, f"torch-cuda x{n_torch}"


def wants_gpu(device: str, backend: str) -> bool:
    """Validates ``device`` and ``backend``; whether the index should go to the GPU(s)."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if backend not in GPU_BACKENDS:
        raise ValueError(f"gpu_backend must be one of {GPU_BACKENDS}, got {backend!r}")
    if device == "cpu":
        return False
    have = faiss_gpu_count() > 0 or (backend != "faiss" and torch_gpu_count() > 0)
    if device == "cuda" and not have:
        raise RuntimeError(
            "device='cuda' but no GPU is usable by faiss or torch (use device='cpu' or 'auto')"
        )
    return have
