"""A numba word splitter and hash table over bytes: surface words -> local ids.

`split_chunk` scans a chunk's bytes once: a word is a maximal run of word bytes (the
`BYTE_TABLE` maps each ASCII word character to its lower case, every other ASCII byte to
0, and bytes >= 0x80 to themselves), and every run of two bytes or more is looked up in
an open-addressing table (FNV-1a hashes, words stored in a byte arena) and gets its id,
new words the next one. Only non-ASCII passages need Python's regex first (see
`tokenizing.ChunkSplitter`), so no per-token Python object is made.
"""

from __future__ import annotations

import re

import numpy as np
from numba import njit

__all__ = ["BYTE_TABLE", "WordTable", "split_chunk"]

_WORD_CHAR_RE = re.compile(r"(?u)\w")
BYTE_TABLE = np.array(
    [
        (ord(chr(c).lower()) if c < 128 and _WORD_CHAR_RE.fullmatch(chr(c)) else 0)
        if c < 128
        else c
        for c in range(256)
    ],
    dtype=np.uint8,
)
"""Byte -> lower-cased word byte, or 0 for a separator (from the token regex itself)."""

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


@njit(cache=True, nogil=True)
def _rehash(slots: np.ndarray, hashes: np.ndarray, n_words: int) -> None:
    slots[:] = -1
    mask = np.uint64(len(slots) - 1)
    for w in range(n_words):
        j = hashes[w] & mask
        while slots[j] >= 0:
            j = (j + np.uint64(1)) & mask
        slots[j] = w


@njit(cache=True, nogil=True)
def _split(
    buf: np.ndarray,
    starts: np.ndarray,
    table: np.ndarray,
    arena: np.ndarray,
    offsets: np.ndarray,
    hashes: np.ndarray,
    slots: np.ndarray,
    n_words: int,
    ids: np.ndarray,
    lengths: np.ndarray,
) -> tuple[int, int]:
    """Fills ``ids`` and ``lengths``; returns (tokens written, words in the table)."""
    mask = np.uint64(len(slots) - 1)
    n_ids = 0
    for p in range(len(starts) - 1):
        i = starts[p]
        end = starts[p + 1]
        first = n_ids
        while i < end:
            if table[buf[i]] == 0:
                i += 1
                continue
            # A run of word bytes, lower-cased into the arena's free tail.
            top = offsets[n_words]
            j = top
            h = _FNV_OFFSET  # FNV-1a, computed as the bytes are copied
            while i < end:
                c = table[buf[i]]
                if c == 0:
                    break
                arena[j] = c
                h = (h ^ np.uint64(c)) * _FNV_PRIME
                j += 1
                i += 1
            n = j - top
            if n < 2:
                continue
            k = h & mask
            while True:
                w = slots[k]
                if w < 0:
                    # A new word: keep its bytes where they were written.
                    slots[k] = n_words
                    hashes[n_words] = h
                    offsets[n_words + 1] = j
                    w = n_words
                    n_words += 1
                    break
                if hashes[w] == h and offsets[w + 1] - offsets[w] == n:
                    s = offsets[w]
                    same = True
                    for q in range(n):
                        if arena[s + q] != arena[top + q]:
                            same = False
                            break
                    if same:
                        break
                k = (k + np.uint64(1)) & mask
            ids[n_ids] = w
            n_ids += 1
        lengths[p] = n_ids - first
    return n_ids, n_words


class WordTable:
    """Growing word -> id table (a splitter's local vocabulary) and its byte arena."""

    def __init__(self) -> None:
        self.arena = np.zeros(1 << 16, dtype=np.uint8)
        self.offsets = np.zeros(1 << 12, dtype=np.int64)
        self.hashes = np.zeros(1 << 12, dtype=np.uint64)
        self.slots = np.full(1 << 13, -1, dtype=np.int32)
        self.n_words = 0

    def __len__(self) -> int:
        return self.n_words

    def word(self, wid: int) -> str:
        """The word with id ``wid``."""
        return self.arena[self.offsets[wid] : self.offsets[wid + 1]].tobytes().decode("utf-8")

    def reserve(self, n_bytes: int) -> None:
        """Room for a chunk of ``n_bytes`` bytes (at most one new word per two bytes)."""
        max_words = self.n_words + n_bytes // 2 + 1
        need = int(self.offsets[self.n_words]) + n_bytes
        if need > len(self.arena):
            self.arena = np.concatenate([self.arena, np.zeros(need, dtype=np.uint8)])
        if max_words + 1 > len(self.offsets):
            grow = max(max_words + 1, 2 * len(self.offsets)) - len(self.offsets)
            self.offsets = np.concatenate([self.offsets, np.zeros(grow, dtype=np.int64)])
            self.hashes = np.concatenate([self.hashes, np.zeros(grow, dtype=np.uint64)])
        if 2 * max_words > len(self.slots):  # load factor <= 1/2
            size = len(self.slots)
            while size < 2 * max_words:
                size *= 2
            self.slots = np.empty(size, dtype=np.int32)
            _rehash(self.slots, self.hashes, self.n_words)


def split_chunk(
    table: WordTable, buf: np.ndarray, starts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Local ids of the words of each passage ``buf[starts[p]:starts[p + 1]]``.

    Returns:
        ``(int32 ids, int64 words per passage)``; new words are appended to ``table``.
    """
    table.reserve(len(buf))
    ids = np.empty(len(buf) // 2 + 1, dtype=np.int32)
    lengths = np.empty(len(starts) - 1, dtype=np.int64)
    n_ids, table.n_words = _split(
        buf,
        starts,
        BYTE_TABLE,
        table.arena,
        table.offsets,
        table.hashes,
        table.slots,
        table.n_words,
        ids,
        lengths,
    )
    return ids[:n_ids].copy(), lengths
