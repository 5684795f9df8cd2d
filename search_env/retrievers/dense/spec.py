"""What a dense index is: its `IndexSpec`, the on-disk format constants, `EncoderSpec`."""

from __future__ import annotations

import os
from dataclasses import dataclass

from search_env.retrievers._index_files import OFFSETS_NAME, PASSAGES_NAME
from search_env.retrievers.encoders import Encoder, EncoderConfig

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "INDEX_NAME",
    "INDEX_TYPES",
    "REQUIRED_FILES",
    "EncoderSpec",
    "IndexSpec",
]

FORMAT_NAME = "search_env.dense"
FORMAT_VERSION = 1
INDEX_NAME = "index.faiss"
REQUIRED_FILES = (INDEX_NAME, PASSAGES_NAME, OFFSETS_NAME)
INDEX_TYPES = ("flat", "hnsw", "ivfpq")

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
