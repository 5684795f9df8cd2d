"""Retrieval server throughput: dynamic micro-batching vs one retriever call per request.

N concurrent clients on loopback each send one query per request (as GEM's search
tool does), the next as soon as the last is answered, for a fixed duration. For each
client count, the server runs with micro-batching on and off; we report queries per
second, p50/p99 latency and how many queries each retriever call answered. A last
row sends 512 queries per request from one client (Search-R1's rollout path).

Two retrievers are served, each in its own server process:

* ``bm25``: `BM25Retriever` (numba) over a synthetic corpus; numba compiles before the
  clock starts.
* ``fixed-cost``: a simulated retriever whose call costs ``--call-ms`` (sleeping) plus
  ``--per-query-us`` a query, the shape of a GPU flat dense search, whose cost per call
  hardly depends on the batch size (RETRIEVAL_NOTES: ~11-21 ms floor over wiki-18 on
  one H100). Skip it with ``--call-ms 0``.

The load generator (`search_env.server.loadtest`: raw keep-alive HTTP/1.1 on asyncio,
a few tens of microseconds per request) runs in this process; the server in another.
Both share the machine's cores, so client CPU time is reported next to server CPU time.

    python benchmarks/bench_server.py [--docs 200000 --clients 1,8,64 --duration 5]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import save_results, synthetic_corpus, synthetic_queries  # noqa: E402
from search_env.server.loadtest import run_load  # noqa: E402
from search_env.types import Passage  # noqa: E402

HOST = "127.0.0.1"  # loopback only


class FixedCostRetriever:
    """Simulates a retriever whose call cost barely depends on the batch size."""

    def __init__(self, call_ms: float, per_query_us: float, k_max: int = 100) -> None:
        self.call_s = call_ms / 1e3
        self.per_query_s = per_query_us / 1e6
        self.passages = [
            Passage(str(i), f'"Doc {i}"\nsimulated passage {i}', float(k_max - i))
            for i in range(k_max)
        ]

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        time.sleep(
            self.call_s + self.per_query_s * len(queries)
        )  # releases the GIL, like a GPU wait
        return [self.passages[:k] for _ in queries]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _direct_rates(
    retriever: Any, queries: list[str], k: int, seconds: float = 1.5
) -> dict[str, float]:
    """In-process search rates: one query per call, and 512 per call."""
    out = {}
    for label, size in (
        ("direct_1_query_per_call_qps", 1),
        ("direct_512_queries_per_call_qps", 512),
    ):
        n, start, i = 0, time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            batch = [queries[(i + j) % len(queries)] for j in range(size)]
            retriever.search(batch, k)
            n += size
            i += size
        out[label] = round(n / (time.perf_counter() - start), 1)
    return out


def _dense_files(tmp: Path, n: int, dim: int = 384) -> tuple[str, str]:
    """A corpus file and a faiss flat index of random unit vectors in the published layout."""
    import faiss
    import numpy as np

    from search_env.data.corpus import write_corpus

    corpus = tmp / "dense-corpus.jsonl"
    write_corpus(synthetic_corpus(n, seed=7), corpus)
    index = faiss.IndexFlatIP(dim)
    rng = np.random.default_rng(0)
    for lo in range(0, n, 100_000):
        x = rng.standard_normal((min(100_000, n - lo), dim)).astype(np.float32)
        index.add(x / np.linalg.norm(x, axis=1, keepdims=True))
    path = tmp / "dense.index"
    faiss.write_index(index, str(path))
    return str(path), str(corpus)


def _server_main(conn: Any, spec: dict[str, Any]) -> None:
    """Server process: load the retriever, warm it up, serve until told to stop."""
    from search_env.server import ServerThread, create_app

    queries = spec["queries"]
    if spec["retriever"] == "bm25":
        from search_env.retrievers.bm25 import BM25Retriever

        retriever: Any = BM25Retriever.load(
            spec["index_dir"], backend=spec["backend"], n_threads=spec["threads"]
        )
        info = {"kind": "bm25", "backend": retriever.backend, "threads": retriever.n_threads}
    elif spec["retriever"] == "dense":
        from search_env.retrievers.dense import DenseRetriever

        retriever = DenseRetriever.from_published(
            spec["dense_index"],
            spec["dense_corpus"],
            encoder="offline",
            device="cpu",
            show_progress=False,
        )
        info = {
            "kind": "dense (offline MiniLM queries, flat index, random passage vectors)",
            "placement": retriever.placement,
        }
    else:
        retriever = FixedCostRetriever(spec["call_ms"], spec["per_query_us"])
        info = {"kind": "fixed-cost (simulated)", "call_ms": spec["call_ms"]}
    retriever.search(queries[:64], spec["k"])  # numba compiles here, not on the clock
    retriever.search(queries[:1], spec["k"])
    direct = _direct_rates(retriever, queries, spec["k"]) if spec["measure_direct"] else {}
    app = create_app(
        retriever,
        batching=spec["batching"],
        max_batch=spec["max_batch"],
        max_wait_ms=spec["max_wait_ms"],
        info=info,
    )
    with ServerThread(app, HOST, 0) as server:
        conn.send({"port": server.port, "direct": direct})
        conn.recv()  # "stop"


def _health(port: int) -> dict[str, Any]:
    import httpx

    return httpx.get(f"http://{HOST}:{port}/health", timeout=10).json()


def _load_point(
    port: int, server_pid: int, clients: int, bodies: list[bytes], args: argparse.Namespace
) -> dict[str, Any]:
    """One measurement: ``clients`` connections sending ``bodies`` in turn for ``args.duration``."""
    per_request = len(json.loads(bodies[0])["queries"])
    cursor = itertools.count()

    def next_body(i: int) -> bytes:
        return bodies[next(cursor) % len(bodies)]

    def check(i: int, body: bytes, status: int, answer: bytes) -> None:
        if status == 200 and len(json.loads(answer)["result"]) != per_request:
            raise AssertionError("wrong number of result lists")

    asyncio.run(run_load(HOST, port, clients, next_body, duration=args.warmup))
    before = _health(port)["counters"]
    cpu_client, cpu_server = time.process_time(), _cpu_seconds(server_pid)
    result = asyncio.run(
        run_load(HOST, port, clients, next_body, duration=args.duration, on_response=check)
    )
    cpu_client = time.process_time() - cpu_client
    cpu_server = _cpu_seconds(server_pid) - cpu_server
    after = _health(port)["counters"]
    calls = after["batches"] - before["batches"]
    per_call = (after["queries"] - before["queries"]) / calls if calls else None
    return {
        "clients": clients,
        "queries_per_request": per_request,
        "requests": result.requests,
        "errors": result.errors,
        "queries_per_s": round(result.requests * per_request / result.seconds, 1),
        "p50_ms": round(result.latency_ms(0.5), 2),
        "p99_ms": round(result.latency_ms(0.99), 2),
        "queries_per_call": None if per_call is None else round(per_call, 1),
        "client_cpu_s": round(cpu_client, 2),
        "server_cpu_s": round(cpu_server, 2),
        "wall_s": round(result.seconds, 2),
    }


def _serve_and_measure(
    spec: dict[str, Any], args: argparse.Namespace, single: list[bytes], bulk: list[bytes]
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Starts a server process for ``spec`` and measures every client count against it."""
    ctx = mp.get_context("spawn")  # a fresh interpreter: no forked numba/thread state
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_server_main, args=(child, spec), daemon=True)
    proc.start()
    try:
        if not parent.poll(600):
            raise RuntimeError("server process did not start in 600 s")
        ready = parent.recv()
        port = ready["port"]
        name = spec["retriever"]
        mode = "micro-batching" if spec["batching"] else "one call per request"
        points = [(mode, clients, single) for clients in args.clients]
        if spec["batching"]:
            points.append((f"{args.bulk} queries per request", 1, bulk))
        rows = []
        for label, clients, bodies in points:
            row = {
                "retriever": name,
                "mode": label,
                **_load_point(port, proc.pid, clients, bodies, args),
            }
            rows.append(row)
            print(
                f"  {name:10s} {label:24s} clients={clients:3d} {row['queries_per_s']:9,.0f} q/s"
                f"  p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms"
                f"  {row['queries_per_call']} q/call",
                flush=True,
            )
        parent.send("stop")
        proc.join(30)
        return rows, ready["direct"]
    finally:
        if proc.is_alive():
            proc.terminate()
            proc.join(10)


def _speedups(rows: list[dict[str, Any]], kinds: list[str], clients: list[int]) -> list[dict]:
    def qps(kind: str, n: int, mode: str) -> float:
        return next(
            r["queries_per_s"]
            for r in rows
            if r["retriever"] == kind and r["clients"] == n and r["mode"] == mode
        )

    out = []
    for kind in kinds:
        for n in clients:
            on, off = qps(kind, n, "micro-batching"), qps(kind, n, "one call per request")
            out.append({"retriever": kind, "clients": n, "batched_qps": on,
                        "unbatched_qps": off, "speedup": round(on / off, 2)})  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--docs", type=int, default=200_000)
    add("--clients", default="1,8,64", help="comma-separated client counts")
    add("--duration", type=float, default=5.0, help="seconds measured per point")
    add("--warmup", type=float, default=0.5, help="seconds of unmeasured load before each point")
    add("--k", type=int, default=3)
    add("--max-batch", type=int, default=512)
    add("--max-wait-ms", type=float, default=5.0)
    add("--bulk", type=int, default=512, help="queries per request in the one-request path")
    add("--backend", default="pruned", choices=["pruned", "exhaustive", "numpy"])
    add("--threads", type=int, default=1,
        help="bm25 search threads in the server (-1: all cores). 1 by default: the server's "
             "event loop and the clients need the other core, and on a busy 2-core machine a "
             "2-thread numba call can wait a whole scheduler slice (~16 ms) for its second thread")  # fmt: skip
    add("--dense-docs", type=int, default=0,
        help="also serve a dense retriever over this many passages (real MiniLM query encoder, "
             "faiss flat index of random unit vectors); 0 skips it")  # fmt: skip
    add("--call-ms", type=float, default=10.0, help="fixed-cost retriever: ms per call (0: skip)")
    add("--per-query-us", type=float, default=20.0, help="fixed-cost retriever: us per query")
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]

    from search_env.retrievers.bm25 import BM25Retriever

    def body(qs: list[str]) -> bytes:
        return json.dumps({"queries": qs, "topk": args.k, "return_scores": True}).encode()

    queries = synthetic_queries(4096)
    single = [body([q]) for q in queries]
    bulk = [
        body(queries[lo : lo + args.bulk])
        for lo in range(0, len(queries) - args.bulk + 1, args.bulk)
    ]
    rows: list[dict[str, Any]] = []
    direct: dict[str, float] = {}
    load_before = os.getloadavg()[0]
    kinds = (
        ["bm25"]
        + (["dense"] if args.dense_docs > 0 else [])
        + (["fixed-cost"] if args.call_ms > 0 else [])
    )
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        print(f"indexing {args.docs:,} synthetic passages...", flush=True)
        start = time.perf_counter()
        index = BM25Retriever.build(
            synthetic_corpus(args.docs), backend="numpy", show_progress=False
        )
        index.save(Path(tmp) / "index")
        build_s = time.perf_counter() - start
        del index
        dense_index, dense_corpus = (
            _dense_files(Path(tmp), args.dense_docs) if args.dense_docs else ("", "")
        )
        base = {
            "dense_index": dense_index, "dense_corpus": dense_corpus,
            "queries": queries, "k": args.k, "max_batch": args.max_batch,
            "max_wait_ms": args.max_wait_ms, "index_dir": str(Path(tmp) / "index"),
            "backend": args.backend, "threads": args.threads,
            "call_ms": args.call_ms, "per_query_us": args.per_query_us,
        }  # fmt: skip
        for kind in kinds:
            for batching in (True, False):
                spec = {**base, "retriever": kind, "batching": batching,
                        "measure_direct": kind == "bm25" and batching}  # fmt: skip
                got_rows, got_direct = _serve_and_measure(spec, args, single, bulk)
                rows += got_rows
                direct.update(got_direct)

    cpus = len(os.sched_getaffinity(0))
    fixed = f"{args.call_ms} ms/call + {args.per_query_us} us/query (simulated)"
    save_results(f"server_{args.docs}", {
        "docs": args.docs, "k": args.k, "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms, "bm25_backend": args.backend,
        "bm25_threads": args.threads, "index_build_seconds": round(build_s, 1),
        "fixed_cost_retriever": fixed if args.call_ms > 0 else "skipped",
        "load": rows,
        "speedup": _speedups(rows, kinds, args.clients),
        **{f"bm25_{k}": v for k, v in direct.items()},
        "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "note": (f"clients and server share this machine's {cpus} cores (CPU seconds of each "
                 "per point); one query per request unless stated; loopback HTTP/1.1 keep-alive"),
        "goal": "micro-batching >= 5x the throughput of one call per request at 64 clients",
    })  # fmt: skip


if __name__ == "__main__":
    main()
