"""The synthetic corpus and queries of ``bench_bm25_scale.py``, and a corpus reader.

A Zipf vocabulary of 100,000 pseudo-words whose head is English stopwords; passages of
75-125 words like wiki-18's 100, streamed to a JSONL file (``id``, ``contents``);
question-like queries: a question word, then 3-9 words of the corpus' distribution.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from benchmarks.common import _vocabulary

VOCAB = 100_000
QUESTION_WORDS = ("what", "who", "when", "where", "which", "how")


def write_corpus(path: Path, n_docs: int, seed: int = 0, chunk: int = 20_000) -> None:
    """Streams ``n_docs`` synthetic passages to a JSONL file, ``chunk`` at a time."""
    import orjson

    words, probs = _vocabulary(VOCAB)
    cdf = np.cumsum(probs)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        for start in range(0, n_docs, chunk):
            m = min(chunk, n_docs - start)
            lengths = rng.integers(75, 126, m)
            flat = words[
                np.minimum(np.searchsorted(cdf, rng.random(int(lengths.sum()))), VOCAB - 1)
            ]
            ends = np.cumsum(lengths)
            for i in range(m):
                text = " ".join(flat[ends[i] - lengths[i] : ends[i]])
                f.write(orjson.dumps({"id": str(start + i), "contents": text}) + b"\n")


def make_queries(n: int, seed: int = 1) -> list[str]:
    """Question-like queries: a question word, then 3-9 words of the corpus' distribution."""
    words, probs = _vocabulary(VOCAB)
    cdf = np.cumsum(probs)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        body = words[
            np.minimum(np.searchsorted(cdf, rng.random(int(rng.integers(3, 10)))), VOCAB - 1)
        ]
        out.append(" ".join([str(rng.choice(QUESTION_WORDS)), *body]))
    return out


def passage_texts(path: Path) -> Iterator[str]:
    """The ``contents`` of each passage of a JSONL corpus, in order."""
    import orjson

    with open(path, "rb") as f:
        for line in f:
            yield orjson.loads(line)["contents"]
