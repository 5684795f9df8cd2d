"""Raw bm25s vs `BM25Retriever`: build time, peak memory and search throughput.

Usage::

    python benchmarks/bench_bm25_raw.py [--docs 200000 --queries 2048 --k 3 --batch 512]

Builds are run in fresh processes so that their peak RSS is their own:

* ``BM25Retriever.build`` streams a JSONL corpus file and saves the index;
* raw bm25s does the usual: read the corpus into a list, ``bm25s.tokenize`` with the
  same stemmer and stopwords, ``BM25.index``.

Search is timed on the index saved by `BM25Retriever`, for the same queries:

* ``raw retrieve``: ``bm25s.BM25.retrieve`` on pre-tokenized query ids (the floor);
* ``raw tokenize+retrieve``: bm25s ``Tokenizer.tokenize`` + ``retrieve``;
* ``BM25Retriever.search``: end to end, returning `Passage` objects.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import save_results, synthetic_corpus, synthetic_queries, timed  # noqa: E402


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _build_ours(corpus_path: str, index_dir: str, backend: str) -> dict[str, Any]:
    import bm25s  # noqa: F401  (imported before the baseline, as in _build_raw)
    import Stemmer  # noqa: F401

    from search_env.retrievers.bm25 import BM25Retriever

    base = _rss_mb()
    start = time.perf_counter()
    retriever = BM25Retriever.build(corpus_path, backend=backend, show_progress=False)
    built = time.perf_counter()
    retriever.save(index_dir, overwrite=True)
    return {
        "build_s": built - start,
        "save_s": time.perf_counter() - built,
        "rss_before_mb": base,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _build_raw(corpus_path: str, backend: str) -> dict[str, Any]:
    import bm25s
    import orjson
    import Stemmer

    base = _rss_mb()
    start = time.perf_counter()
    with open(corpus_path, "rb") as f:
        texts = [orjson.loads(line)["contents"] for line in f]
    tokens = bm25s.tokenize(
        texts, stopwords="en", stemmer=Stemmer.Stemmer("english"), show_progress=False
    )
    model = bm25s.BM25(k1=0.9, b=0.4, method="lucene", backend=backend)
    model.index(tokens, show_progress=False)
    return {
        "build_s": time.perf_counter() - start,
        "rss_before_mb": base,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _in_fresh_process(fn: Any, *args: Any) -> dict[str, Any]:
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def _batches(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=2048)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--batch", type=int, default=512, help="queries per search call")
    parser.add_argument("--repeat", type=int, default=3, help="timing repeats (best is kept)")
    parser.add_argument(
        "--backend", default="auto", choices=["auto", "pruned", "exhaustive", "numpy"]
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir", default=None, help="where to put the corpus and index (default: temp)"
    )
    parser.add_argument("--name", default="bm25_raw", help="results file name")
    args = parser.parse_args()

    import bm25s
    import numpy as np
    import Stemmer

    from search_env.data.corpus import write_corpus
    from search_env.retrievers.bm25 import BM25Retriever

    with tempfile.TemporaryDirectory(prefix="bench_bm25_", dir=args.workdir) as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        corpus = synthetic_corpus(args.docs, seed=args.seed)
        queries = synthetic_queries(args.queries, seed=args.seed + 1)
        corpus_path = work / "corpus.jsonl"
        write_corpus(corpus, corpus_path)
        gen_s = time.perf_counter() - t0
        del corpus
        print(f"generated {args.docs} docs + {args.queries} queries in {gen_s:.1f}s", flush=True)

        index_dir = work / "index"
        ours_build = _in_fresh_process(_build_ours, str(corpus_path), str(index_dir), args.backend)
        print(f"BM25Retriever.build: {ours_build}", flush=True)
        raw_build = _in_fresh_process(
            _build_raw, str(corpus_path), "numpy" if args.backend == "numpy" else "auto"
        )
        print(f"raw bm25s build: {raw_build}", flush=True)
        index_mb = sum(p.stat().st_size for p in index_dir.iterdir()) / 2**20

        start = time.perf_counter()
        retriever = BM25Retriever.load(index_dir, mmap=False, backend=args.backend)
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        retriever_mmap = BM25Retriever.load(index_dir, mmap=True, backend=args.backend)
        load_mmap_s = time.perf_counter() - start
        backend = "numpy" if retriever.backend == "numpy" else "numba"  # raw bm25s' scorer
        thread_counts = sorted({1, retriever.n_threads})

        raw = bm25s.BM25.load(str(index_dir), mmap=False, backend=backend, show_progress=False)
        tokenizer = bm25s.tokenization.Tokenizer(stopwords="en", stemmer=Stemmer.Stemmer("english"))
        tokenizer.load_vocab(str(index_dir), "vocab.tokenizer.json")
        tokenizer.load_stopwords(str(index_dir), "stopwords.tokenizer.json")
        # raw bm25s rejects a batch whose first query has no known token: keep the
        # queries with at least one, for every method alike.
        ids_all = tokenizer.tokenize(
            queries, update_vocab=False, allow_empty=False, show_progress=False
        )
        queries = [q for q, ids in zip(queries, ids_all) if ids]
        query_ids = [ids for ids in ids_all if ids]
        q_batches, id_batches = _batches(queries, args.batch), _batches(query_ids, args.batch)
        print(f"{len(queries)} queries with known terms; warming up", flush=True)

        start = time.perf_counter()
        raw.retrieve(query_ids[:8], k=args.k, show_progress=False)
        retriever.search(queries[:8], k=args.k)
        retriever_mmap.search(queries[:8], k=args.k)
        warmup_s = time.perf_counter() - start

        def raw_retrieve(threads: int) -> None:
            for ids in id_batches:
                raw.retrieve(ids, k=args.k, show_progress=False, n_threads=threads)

        def raw_tokenize_retrieve(threads: int) -> None:
            for batch in q_batches:
                ids = tokenizer.tokenize(
                    batch, update_vocab=False, allow_empty=True, show_progress=False
                )
                raw.retrieve(ids, k=args.k, show_progress=False, n_threads=threads)

        def ours(threads: int, r: BM25Retriever = retriever) -> None:
            for batch in q_batches:
                r.search(batch, k=args.k, n_threads=threads)

        rows = []
        for threads in thread_counts:
            raw_threads = threads if backend == "numba" or threads > 1 else 0
            cases = [
                ("raw bm25s retrieve (pre-tokenized)", partial(raw_retrieve, raw_threads)),
                ("raw bm25s tokenize+retrieve", partial(raw_tokenize_retrieve, raw_threads)),
                ("BM25Retriever.search", partial(ours, threads)),
                ("BM25Retriever.search (mmap)", partial(ours, threads, retriever_mmap)),
            ]
            for label, fn in cases:
                seconds = timed(fn, repeat=args.repeat)
                qps = len(queries) / seconds
                ms_per_batch = 1000 * seconds / len(q_batches)
                rows.append(
                    {"method": label, "threads": threads, "qps": qps, "ms_per_batch": ms_per_batch}
                )
                print(f"  {label:38s} threads={threads}: {qps:,.0f} q/s", flush=True)

        # Sanity check: both paths must find the same top scores (ids may differ on ties).
        ours_top = [
            (hits[0].score or 0.0) if hits else 0.0 for hits in retriever.search(queries, k=args.k)
        ]
        raw_top = raw.retrieve(query_ids, k=args.k, show_progress=False).scores[:, 0]
        agree = float(np.mean(np.isclose(ours_top, raw_top, rtol=1e-6)))

    results = {
        "config": {
            "docs": args.docs,
            "queries": args.queries,
            "queries_with_known_terms": len(queries),
            "k": args.k,
            "batch": args.batch,
            "backend": backend,
            "repeat": args.repeat,
        },
        "build": [
            {"method": "BM25Retriever.build (stream file)", **ours_build},
            {"method": "raw bm25s (list in memory)", **raw_build},
        ],
        "index_mb": index_mb,
        "load_s": load_s,
        "load_mmap_s": load_mmap_s,
        "warmup_s": warmup_s,
        "search": rows,
        "top1_score_agreement_raw_vs_ours": agree,
    }
    save_results(args.name, results)


if __name__ == "__main__":
    main()
