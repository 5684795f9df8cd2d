"""Upper bounds for dynamic pruning: each term's largest score and each block's.

A block is `BLOCK` consecutive postings of one term's list (the last one may be
shorter); ``block_offsets`` says where each term's blocks start in the flat array of
block maxima, which is derived from ``indptr`` alone, so only the maxima need storing.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["BLOCK", "block_max", "block_offsets", "term_max"]

BLOCK = 128
"""Postings per block: each block's largest score bounds the rows it covers."""


@njit(cache=True, nogil=True)
def term_max(data: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """The largest score of each term's posting list (0 for an empty list)."""
    n_terms = len(indptr) - 1
    out = np.zeros(n_terms, dtype=np.float32)
    for t in range(n_terms):
        best = np.float32(0.0)
        for j in range(indptr[t], indptr[t + 1]):
            if data[j] > best:
                best = data[j]
        out[t] = best
    return out


def block_offsets(indptr: np.ndarray) -> np.ndarray:
    """Where each term's blocks start in the flat block-max array (``n_terms + 1``)."""
    lengths = np.diff(np.asarray(indptr, dtype=np.int64))
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum((lengths + BLOCK - 1) // BLOCK, out=out[1:])
    return out


@njit(cache=True, nogil=True)
def block_max(data: np.ndarray, indptr: np.ndarray, boff: np.ndarray) -> np.ndarray:
    """The largest score in each block of `BLOCK` postings, term by term (`block_offsets`)."""
    out = np.zeros(boff[-1], dtype=np.float32)
    for t in range(len(indptr) - 1):
        start = indptr[t]
        end = indptr[t + 1]
        for b in range(boff[t + 1] - boff[t]):
            best = np.float32(0.0)
            for j in range(start + b * BLOCK, min(start + (b + 1) * BLOCK, end)):
                if data[j] > best:
                    best = data[j]
            out[boff[t] + b] = best
    return out
