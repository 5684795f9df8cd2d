"""Fast corpus tokenization with bm25s' exact output, by chunks, optionally in processes.

bm25s' ``Tokenizer.streaming_tokenize`` spends most of a build in Python: a regex per
passage and several dict lookups per token. This module gives the same token ids
(same vocabulary, same first-occurrence id order) without a Python object per token:

* Splitting. ``(?u)\\b\\w\\w+\\b`` finds the maximal runs of word characters that are at
  least two long. An ASCII passage (``str.isascii`` is O(1)) goes as bytes to
  `wordhash.split_chunk`, which finds the same runs (lower-cased) with a byte table
  derived from the regex; any other passage is lower-cased and split by the regex
  itself in Python, and its words go on joined by spaces.
* Lookup. `wordhash.split_chunk` gives every word an id in a local byte-keyed hash
  table. Each distinct surface word is resolved once to its global id (stopword? stem?
  new stem id?); stopwords are removed and empty passages get bm25s' empty-token id by
  array operations.

Splitting and the first lookup run in a `ChunkSplitter`, which gives each chunk's tokens
ids in its own local vocabulary and lists the words it saw first in that chunk. With
``n_workers > 1`` the splitters run in worker processes, chunks dealt round robin and
merged in corpus order by `VocabMerger`, which resolves new words to global ids in the
order they first occur, so the ids do not depend on the number of workers.
"""

from __future__ import annotations

import multiprocessing as mp
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from search_env.retrievers.bm25.params import TOKEN_PATTERN
from search_env.retrievers.bm25.wordhash import WordTable, split_chunk

__all__ = [
    "CHUNK_PASSAGES",
    "WORD_CACHE_LIMIT",
    "ChunkSplitter",
    "SplitChunk",
    "VocabMerger",
    "split_words",
    "tokenize_chunks",
]

CHUNK_PASSAGES = 2048
LOCAL_CHUNKS = 16
"""Chunks split in this process before any worker starts (32k passages): a corpus that
small, e.g. an env's own synthetic world built inside a training process, never forks."""
"""Passages tokenized together (the unit sent to a worker)."""
WORD_CACHE_LIMIT = 1 << 21
"""Distinct surface words a splitter or the merger caches before starting afresh
(bounds memory on corpora with tens of millions of distinct words)."""
EMPTY_ID = 0
"""bm25s' id of the empty token, the one token of a passage with no indexed word."""

_TOKEN_RE = re.compile(TOKEN_PATTERN)
_WORD_CHAR_RE = re.compile(r"(?u)\w")
# ASCII: lower-case word characters, every other character becomes a space. Derived
# from the regex itself, so the two splitters agree by construction on ASCII text.
_ASCII_TABLE = str.maketrans(
    {c: (chr(c).lower() if _WORD_CHAR_RE.fullmatch(chr(c)) else " ") for c in range(128)}
)


def split_words(text: str) -> list[str]:
    """The words of ``text`` as bm25s splits it, plus one-character runs for ASCII text.

    Callers drop words shorter than two characters (the regex never yields them).
    """
    if text.isascii():
        return text.translate(_ASCII_TABLE).split()
    return _TOKEN_RE.findall(text.lower())


@dataclass
class SplitChunk:
    """One chunk's tokens in a splitter's local vocabulary."""

    local_ids: np.ndarray
    """int32 local id of every split word, passages one after another."""
    lengths: np.ndarray
    """int64 number of split words of each passage."""
    new_words: list[str]
    """Words the splitter had not seen before this chunk, in first-occurrence order."""
    reset: bool
    """Whether the splitter started a fresh local vocabulary with this chunk."""


class ChunkSplitter:
    """Splits chunks of passages into local word ids (the part that runs in workers)."""

    def __init__(self, cache_limit: int | None = None) -> None:
        self._cache_limit = WORD_CACHE_LIMIT if cache_limit is None else cache_limit
        self._table = WordTable()

    def split(self, texts: list[str]) -> SplitChunk:
        """Splits ``texts`` (one chunk, in corpus order)."""
        reset = len(self._table) > self._cache_limit
        if reset:
            self._table = WordTable()
        table = self._table
        # ASCII passages go to the byte splitter as they are; others are split by the
        # regex here (Unicode \w and lower()), their words joined by spaces.
        pieces = [
            t.encode() if t.isascii() else " ".join(_TOKEN_RE.findall(t.lower())).encode()
            for t in texts
        ]
        starts = np.zeros(len(pieces) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, pieces), np.int64, count=len(pieces)), out=starts[1:])
        before = len(table)
        local_ids, lengths = split_chunk(table, np.frombuffer(b"".join(pieces), np.uint8), starts)
        new_words = [table.word(w) for w in range(before, len(table))]
        return SplitChunk(local_ids, lengths, new_words, reset)


class VocabMerger:
    """Maps splitters' local ids to global ids exactly as bm25s numbers its vocabulary.

    bm25s (``update_vocab=True, allow_empty=True``) drops stopwords, gives the empty token
    id 0, and numbers stems (words without a stemmer) in order of first occurrence.

    Args:
        stopwords: Words to drop.
        stemmer: Word -> stem, or None to index words as they are.
    """

    def __init__(self, stopwords: Iterable[str], stemmer: Callable[[str], str] | None) -> None:
        self._stopwords = frozenset(stopwords)
        self._stemmer = stemmer
        self.vocab: dict[str, int] = {"": EMPTY_ID}
        """Stem (or word) -> id, in id order: bm25s' ``stem_to_sid`` (``word_to_id``)."""
        self._word_ids: dict[str, int] = {}
        self._local_to_global: dict[int, np.ndarray] = {}

    def _global_id(self, word: str) -> int:
        """The id of one surface word, -1 if it is not indexed; new stems get new ids."""
        gid = self._word_ids.get(word)
        if gid is not None:
            return gid
        if len(word) < 2 or word in self._stopwords:
            gid = -1
        else:
            key = self._stemmer(word) if self._stemmer is not None else word
            gid = self.vocab.get(key, -1)
            if gid < 0:
                gid = len(self.vocab)
                self.vocab[key] = gid
        if len(self._word_ids) >= WORD_CACHE_LIMIT:
            self._word_ids.clear()
        self._word_ids[word] = gid
        return gid

    def merge(self, source: int, chunk: SplitChunk) -> tuple[np.ndarray, np.ndarray]:
        """Global ids of a chunk from splitter ``source``; chunks must come in corpus order.

        Returns:
            ``(int32 token ids, int64 tokens per passage)`` as bm25s would give them.
        """
        table = self._local_to_global.get(source)
        if table is None or chunk.reset:
            table = np.empty(0, dtype=np.int32)
        resolved = np.fromiter(
            map(self._global_id, chunk.new_words), np.int32, count=len(chunk.new_words)
        )
        table = np.concatenate([table, resolved])
        self._local_to_global[source] = table
        ids = table[chunk.local_ids]
        keep = ids >= 0
        kept_before = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(keep, out=kept_before[1:])
        ends = np.cumsum(chunk.lengths)
        counts = kept_before[ends] - kept_before[ends - chunk.lengths]
        ids = ids[keep]
        empty = counts == 0
        if empty.any():
            # A passage with no indexed word gets the empty token (bm25s' allow_empty).
            ids = np.insert(ids, kept_before[(ends - chunk.lengths)[empty]], EMPTY_ID)
            counts = np.maximum(counts, 1)
        return ids, counts


def _worker_loop(conn: Connection) -> None:
    """A worker process: split every chunk received until ``None`` or end of pipe."""
    splitter = ChunkSplitter()
    try:
        while True:
            texts = conn.recv()
            if texts is None:
                return
            conn.send(splitter.split(texts))
    except (EOFError, KeyboardInterrupt):  # the parent is gone or interrupted
        return


class _WorkerPool:
    """``n`` splitter processes, chunk ``i`` going to worker ``i % n``."""

    def __init__(self, n: int) -> None:
        # fork: the workers need no imports (spawn would re-import bm25s, seconds each).
        methods = mp.get_all_start_methods()
        ctx: Any = mp.get_context("fork" if "fork" in methods else "spawn")
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        try:
            for _ in range(n):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_worker_loop, args=(child,), daemon=True)
                proc.start()
                child.close()
                self._conns.append(parent)
                self._procs.append(proc)
        except BaseException:
            self.close()
            raise

    def send(self, i: int, texts: list[str]) -> None:
        self._conns[i % len(self._conns)].send(texts)

    def recv(self, i: int) -> SplitChunk:
        try:
            chunk: SplitChunk = self._conns[i % len(self._conns)].recv()
        except EOFError as e:
            raise RuntimeError("a BM25 tokenizer worker process died") from e
        return chunk

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(None)
            except OSError:
                pass
            conn.close()
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join()


def tokenize_chunks(
    chunks: Iterable[list[str]], merger: VocabMerger, n_workers: int = 1
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Token ids of each chunk of texts, in order (see `VocabMerger.merge`).

    With ``n_workers > 1`` the first :data:`LOCAL_CHUNKS` chunks are split here (a small
    corpus never starts a process) and the rest by ``n_workers`` processes, one chunk
    each in flight.

    Raises:
        ValueError: If ``n_workers < 1``.
        RuntimeError: If a worker process dies.
    """
    if n_workers < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers}")
    it = iter(chunks)
    local = ChunkSplitter()
    for _ in range(1 if n_workers == 1 else LOCAL_CHUNKS):
        first = next(it, None)
        if first is None:
            return
        yield merger.merge(-1, local.split(first))
    if n_workers == 1:
        for texts in it:
            yield merger.merge(-1, local.split(texts))
        return
    pool: _WorkerPool | None = None
    try:
        sent = done = 0
        for texts in it:
            if pool is None:
                pool = _WorkerPool(n_workers)
            if sent - done == n_workers:
                # One chunk in flight per worker: a worker is sent its next chunk only
                # once its result is read (both blocking on a full pipe would deadlock).
                yield merger.merge(done % n_workers, pool.recv(done))
                done += 1
            pool.send(sent, texts)
            sent += 1
        while done < sent:
            assert pool is not None
            yield merger.merge(done % n_workers, pool.recv(done))
            done += 1
    finally:
        if pool is not None:
            pool.close()
