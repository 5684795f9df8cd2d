"""The pruned (MaxScore) BM25 backend against the exhaustive scorer, and backend choice."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("numba")

from search_env.retrievers.base import CorruptIndexError  # noqa: E402
from search_env.retrievers.bm25 import BM25Retriever, files, scorers  # noqa: E402
from search_env.retrievers.bm25.params import resolve_backend  # noqa: E402
from search_env.types import Passage  # noqa: E402

WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "zeta", "theta", "iota"]
STOP = ["the", "of", "and"]


def _random_corpus(rng: np.random.Generator, vocab: int, n_docs: int) -> list[Passage]:
    """Short passages over a few words: many passages tie (same length, same counts)."""
    words = WORDS[:vocab]
    out = []
    for i in range(n_docs):
        n = int(rng.integers(0, 7))
        text = [words[j] for j in rng.integers(0, vocab, n)] + list(rng.choice(STOP, 2))
        out.append(Passage(str(i), " ".join(text)))
    return out


def _random_queries(rng: np.random.Generator, vocab: int, n: int) -> list[str]:
    """Queries with repeated, unknown and stop words; some empty after stopwords."""
    pool = [*WORDS[:vocab], "unknownword", *STOP]
    return [" ".join(rng.choice(pool, int(rng.integers(0, 7)))) for _ in range(n)]


def _reference(r: BM25Retriever, query: str, k: int) -> list[tuple[float, int]]:
    """Exhaustive scoring from bm25s' matrix: float32 sums in query order, then
    (score desc, row asc), positive scores only."""
    s = r._model.scores
    data, indices, indptr = s["data"], s["indices"], s["indptr"]
    scores = np.zeros(s["num_docs"], dtype=np.float32)
    for t in r._encoder.encode(query):
        scores[indices[indptr[t] : indptr[t + 1]]] += data[indptr[t] : indptr[t + 1]]
    hits = sorted(
        ((float(v), d) for d, v in enumerate(scores) if v > 0), key=lambda h: (-h[0], h[1])
    )
    return hits[:k]


def _hits(results: list[list[Passage]]) -> list[list[tuple[float | None, int]]]:
    return [[(p.score, int(p.id)) for p in hits] for hits in results]


@pytest.mark.parametrize("seed", range(12))
def test_pruned_equals_exhaustive_reference_on_random_corpora(seed):
    rng = np.random.default_rng(seed)
    vocab = int(rng.integers(2, len(WORDS) + 1))
    passages = _random_corpus(rng, vocab, int(rng.integers(1, 80)))
    r = BM25Retriever.build(passages, backend="pruned", stemmer=None, show_progress=False)
    bm25s_r = BM25Retriever.build(passages, backend="numpy", stemmer=None, show_progress=False)
    queries = _random_queries(rng, vocab, 25)
    for k in (1, 3, 10):
        got = _hits(r.search(queries, k=k))
        assert got == [_reference(r, q, k) for q in queries], (seed, k)
        # bm25s itself: the same scores; the same rows apart from ties at the k-th score
        ref = _hits(bm25s_r.search(queries, k=k))
        assert [[s for s, _ in h] for h in got] == [[s for s, _ in h] for h in ref]


def test_ties_go_to_the_lowest_row():
    passages = [Passage(str(i), "alpha beta") for i in range(20)] + [Passage("20", "gamma")]
    r = BM25Retriever.build(passages, backend="pruned", show_progress=False)
    for k in (1, 3, 10):
        assert [p.id for p in r.search(["alpha"], k=k)[0]] == [str(i) for i in range(k)]


def test_repeated_query_word_counts_once_per_occurrence():
    passages = [Passage("0", "alpha alpha alpha gamma"), Passage("1", "beta gamma")]
    r = BM25Retriever.build(passages, backend="pruned", stemmer=None, show_progress=False)
    once = {p.id: p.score for p in r.search(["alpha beta"], k=2)[0]}
    twice = {p.id: p.score for p in r.search(["beta beta alpha"], k=2)[0]}
    assert twice["1"] == pytest.approx(2 * once["1"]) and twice["0"] == once["0"]
    assert r.search(["the of", "", "unknownword"], k=3) == [[], [], []]


def test_batch_on_two_threads_equals_one_thread():
    rng = np.random.default_rng(7)
    passages = _random_corpus(rng, 10, 300)
    r = BM25Retriever.build(passages, backend="pruned", stemmer=None, show_progress=False)
    queries = _random_queries(rng, 10, 4 * scorers.MIN_QUERIES_PER_THREAD)
    assert scorers.threads_for(len(queries), 2) == 2
    assert r.search(queries, k=3, n_threads=2) == r.search(queries, k=3, n_threads=1)


@pytest.mark.parametrize(
    ("n_queries", "n_threads", "expected"),
    [(1, 2, 1), (63, 2, 1), (64, 2, 2), (10_000, 2, 2), (500, 1, 1)],
)
def test_threads_per_call_follow_the_batch_size(n_queries, n_threads, expected):
    assert scorers.MIN_QUERIES_PER_THREAD == 32
    assert scorers.threads_for(n_queries, n_threads) == expected


def test_backend_choice():
    assert resolve_backend("auto", "lucene") == "pruned"
    assert resolve_backend("auto", "robertson") == "exhaustive"
    with pytest.raises(ValueError, match="pruned.*robertson"):
        resolve_backend("pruned", "robertson")
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("numba", "lucene")
    r = BM25Retriever.build([Passage("0", "alpha")], method="bm25+", show_progress=False)
    assert r.backend == "exhaustive"


def test_manifest_records_the_backend_and_auto_load_uses_it(tmp_path):
    passages = [Passage(str(i), f"alpha beta {'gamma ' * i}") for i in range(5)]
    pruned = BM25Retriever.build(passages, show_progress=False).save(tmp_path / "p")
    exhaustive = BM25Retriever.build(passages, backend="numpy", show_progress=False)
    manifest = json.loads((pruned / "manifest.json").read_text())
    assert manifest["backend"] == "pruned" and files.TERM_MAX_NAME in manifest["files"]
    assert BM25Retriever.load(pruned).backend == "pruned"
    e_dir = exhaustive.save(tmp_path / "e")
    assert json.loads((e_dir / "manifest.json").read_text())["backend"] == "numpy"
    assert BM25Retriever.load(e_dir).backend == "numpy"
    loaded = BM25Retriever.load(e_dir, backend="pruned")  # no term_max file: computed
    assert loaded.search(["gamma beta"], k=3) == exhaustive.search(["gamma beta"], k=3)


def test_term_max_of_the_wrong_length_is_corrupt(tmp_path):
    index = BM25Retriever.build([Passage("0", "alpha beta")], show_progress=False).save(
        tmp_path / "i"
    )
    np.save(index / files.TERM_MAX_NAME, np.ones(99, dtype=np.float32))
    manifest = json.loads((index / "manifest.json").read_text())
    manifest["files"][files.TERM_MAX_NAME] = files.file_record(index / files.TERM_MAX_NAME)
    (index / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptIndexError, match="term_max.maxscore.npy has 99 terms"):
        BM25Retriever.load(index)


def test_parallel_calls_use_the_workqueue_layer_unless_told_otherwise(tmp_path):
    script = """
import numba
from search_env.retrievers.bm25 import BM25Retriever
from search_env.types import Passage
r = BM25Retriever.build([Passage(str(i), "alpha beta") for i in range(9)], show_progress=False)
r.search(["alpha"] * 200, k=1, n_threads=2)
print(numba.threading_layer())
"""
    env = {k: v for k, v in __import__("os").environ.items() if k != "NUMBA_THREADING_LAYER"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "workqueue"


def test_index_build_command_records_the_pruned_backend(tmp_path, capsys):
    from search_env.cli import main

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"id": str(i), "contents": f"alpha {'beta ' * i}"}) + "\n" for i in range(6)
        )
    )
    out = tmp_path / "idx"
    assert main(["index", "build", "--corpus", str(corpus), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backend"] == "pruned"
    assert BM25Retriever.load(out).backend == "pruned"
    out2 = tmp_path / "idx2"
    args = [
        "index",
        "build",
        "--corpus",
        str(corpus),
        "--out",
        str(out2),
        "--backend",
        "exhaustive",
    ]
    assert main(args) == 0
    assert json.loads((out2 / "manifest.json").read_text())["backend"] == "exhaustive"


def test_long_lists_beyond_the_priming_rows():
    """Every query list is longer than the rows scored to start the threshold."""
    from search_env.retrievers.bm25 import maxscore

    rng = np.random.default_rng(3)
    passages = _random_corpus(rng, 3, 3 * maxscore.PRIME_DOCS)
    r = BM25Retriever.build(passages, backend="pruned", stemmer=None, show_progress=False)
    queries = ["alpha beta gamma", "gamma gamma beta", "beta", "alpha the gamma"]
    for k in (1, 3, 10):
        assert _hits(r.search(queries, k=k)) == [_reference(r, q, k) for q in queries]
