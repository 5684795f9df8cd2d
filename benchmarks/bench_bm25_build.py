"""BM25 index build: wall time and peak RSS per corpus size and tokenizer worker count.

Each build runs in a fresh process (``BM25Retriever.build`` then ``save``) on the Zipf
corpus of ``bench_bm25_scale.py`` (written once per size under ``--work``). Peak RSS is
the build process' own ``ru_maxrss`` and, separately, the largest worker's; CPU seconds
(the process', its workers') tell a shared machine's load from the code's cost. Also times
query analysis (``QueryEncoder.encode``) per query on that benchmark's queries.

``--src DIR`` imports ``search_env`` from another checkout (e.g. the old code, for a
before/after comparison); its JSON records which.

    nice -n 10 python benchmarks/bench_bm25_build.py --docs 200000 --workers 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_bm25_scale import write_corpus  # noqa: E402

_CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, sys.argv[1])
import inspect
from search_env.retrievers.bm25 import BM25Retriever
corpus, out, workers = sys.argv[2], sys.argv[3], int(sys.argv[4])
kw = {}
if "n_workers" in inspect.signature(BM25Retriever.build).parameters:  # not in the old code
    kw["n_workers"] = workers
t0 = time.perf_counter()
r = BM25Retriever.build(corpus, show_progress=False, tmp_dir=os.path.dirname(out), **kw)
t1 = time.perf_counter()
r.save(out, overwrite=True)
t2 = time.perf_counter()
me = resource.getrusage(resource.RUSAGE_SELF)
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({
    "build_s": t1 - t0, "save_s": t2 - t1,
    "cpu_s_main": me.ru_utime + me.ru_stime,
    "cpu_s_workers": kids.ru_utime + kids.ru_stime,
    "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    "worker_peak_rss_gb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20,
    "vocab": len(r._model.vocab_dict), "workers_used": kw.get("n_workers", 1),
}))
"""


def build_once(src: Path, corpus: Path, out: Path, workers: int) -> dict[str, float]:
    """One build in a fresh process; its timings and peak RSS."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, str(src), str(corpus), str(out), str(workers)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def query_analysis_us(src: Path, corpus: Path, out: Path, n: int) -> dict[str, float]:
    """Microseconds per query of query analysis, cold (first sight) and warm (cached)."""
    code = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from search_env.retrievers.bm25 import BM25Retriever
from search_env.retrievers.bm25.analyzer import QueryEncoder
sys.path.insert(0, sys.argv[4])
from benchmarks.bench_bm25_scale import make_queries
r = BM25Retriever.load(sys.argv[2])
qs = make_queries(int(sys.argv[3]))
enc = QueryEncoder(r._tokenizer)
t = time.perf_counter(); [enc.encode(q) for q in qs]; cold = time.perf_counter() - t
t = time.perf_counter(); [enc.encode(q) for q in qs]; warm = time.perf_counter() - t
print(json.dumps({"cold_us": cold / len(qs) * 1e6, "warm_us": warm / len(qs) * 1e6}))
"""
    repo = Path(__file__).resolve().parents[1]
    res = subprocess.run(
        [sys.executable, "-c", code, str(src), str(out), str(n), str(repo)],
        env={**os.environ, "PYTHONPATH": str(src)},
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, nargs="+", default=[200_000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--label", default="new")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_bm25_build"))
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=None, help="append the rows to this JSON")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.docs:
        corpus = args.work / f"zipf_{n}.jsonl"
        if not corpus.exists():
            write_corpus(corpus, n)
        for w in args.workers:
            out = args.work / f"index_{args.label}_{n}_{w}"
            row = {"label": args.label, "docs": n, "workers": w}
            row.update(build_once(args.src, corpus, out, w))
            row["query_analysis"] = query_analysis_us(args.src, corpus, out, args.queries)
            row["load_avg_1m"] = os.getloadavg()[0]
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.out is not None:
        data = json.loads(args.out.read_text()) if args.out.exists() else {"runs": []}
        data["runs"].extend(rows)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
