"""Batched BM25 through the vector env vs raw bm25s, and vs one retriever call per query.

Every sub-env of a chunk-mode ``SearchQAVectorEnv`` issues one search per step, so a
step is ``num_envs`` queries answered by one ``BM25Retriever.search`` call, plus the
env's own work (parsing turns, formatting and tokenizing the information blocks).
Throughput is queries per second over the same queries for:

* ``raw``: the retriever's backend (``--backend``: pruned by default, or exhaustive =
  bm25s' scorer) on pre-encoded query ids, batch = num_envs;
* ``vector env, batched``: ``vec.step`` end to end (goal: >= 0.9x raw), once with an
  empty document-token cache (``cold``: every returned passage is tokenized) and once
  with the passages already seen (``warm``: repeats, as in GRPO groups and epochs);
* ``vector env, one call per query``: the same env with a retriever wrapper that sends
  each query in its own ``search`` call (what a loop over sub-envs would do).

The env tokenizes with Qwen2.5's tokenizer (``qwen2.5``, built offline), as Search-R1
runs do; ``--tokenizer synth`` uses the small synthetic-world BPE.

``--busy N`` runs N busy-looping processes during the timings (a competing CPU load,
as a trainer or vLLM on the same cores would be).

    python benchmarks/bench_vector_bm25.py [--docs 200000 --queries 2048 --num-envs 256]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.common import save_results, synthetic_corpus, synthetic_queries  # noqa: E402
from search_env.env import SearchQAEnv  # noqa: E402
from search_env.registration import load_tokenizer  # noqa: E402
from search_env.retrievers.bm25 import BM25Retriever  # noqa: E402
from search_env.types import Passage, QAExample  # noqa: E402
from search_env.vector import SearchQAVectorEnv  # noqa: E402


def _spin() -> None:
    """A competing CPU load."""
    while True:
        pass


class OneByOne:
    """Sends each query of a batch in its own call."""

    def __init__(self, inner: BM25Retriever) -> None:
        self.inner = inner

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        return [self.inner.search([q], k)[0] for q in queries]


def run_env(
    retriever, tok, turns: list[np.ndarray], num_envs: int, k: int, cold: bool = False
) -> float:
    """Seconds for the vector env to answer every turn (one search per sub-env per step)."""
    questions = [QAExample("q", "Which word comes next?", ("x",))]
    envs = [
        SearchQAEnv(questions, retriever, tok, action_mode="chunk", topk=k, max_turns=10**6)
        for _ in range(num_envs)
    ]
    vec = SearchQAVectorEnv(num_envs, envs=envs, autoreset_mode="disabled")
    if cold:
        envs[0].codec._piece_cache.clear()
    vec.reset(seed=0)
    elapsed = 0.0
    for lo in range(0, len(turns), num_envs):
        batch = turns[lo : lo + num_envs]
        if lo % (num_envs * 4) == 0:
            vec.reset(seed=0)  # keep contexts short; reset is outside the timing
        actions = batch + [None] * (num_envs - len(batch))
        start = time.perf_counter()
        _, _, term, trunc, info = vec.step(actions)
        elapsed += time.perf_counter() - start
        assert vec.last_batch.queries == len(batch) and not (term.any() or trunc.any())
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=2048)
    parser.add_argument("--num-envs", type=int, default=256)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--tokenizer",
        default="qwen2.5",
        help="a tokenizer= spec: qwen2.5 (default), synth, a path or hub id",
    )
    parser.add_argument("--backend", default="auto", help="BM25 backend (auto = pruned)")
    parser.add_argument("--busy", type=int, default=0, help="busy-looping processes while timing")
    args = parser.parse_args()

    corpus = synthetic_corpus(args.docs)
    t0 = time.perf_counter()
    retriever = BM25Retriever.build(corpus, show_progress=False, backend=args.backend)
    build_s = time.perf_counter() - t0
    queries = synthetic_queries(args.queries)
    tok = load_tokenizer(args.tokenizer)
    turns = [np.asarray(tok.encode(f"<search> {q} </search>"), dtype=np.int64) for q in queries]
    retriever.search(queries[:8], args.k)  # compile numba outside the timings

    scorer = retriever._scorer
    ids = [retriever._encoder.encode(q) for q in queries]
    live = [x for x in ids if x]

    def raw() -> float:
        start = time.perf_counter()
        for lo in range(0, len(live), args.num_envs):
            scorer.search(live[lo : lo + args.num_envs], args.k, retriever.n_threads)
        return time.perf_counter() - start

    busy = [mp.get_context("spawn").Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for p in busy:
        p.start()

    best = {"raw": float("inf"), "cold": float("inf"), "batched": float("inf")}
    for _ in range(args.repeats):
        best["raw"] = min(best["raw"], raw())
        best["cold"] = min(
            best["cold"], run_env(retriever, tok, turns, args.num_envs, args.k, cold=True)
        )
        best["batched"] = min(
            best["batched"], run_env(retriever, tok, turns, args.num_envs, args.k)
        )
    best["one_by_one"] = run_env(OneByOne(retriever), tok, turns, args.num_envs, args.k)
    for p in busy:
        p.terminate()
    raw_qps = len(live) / best["raw"]
    rows = [
        {
            "path": f"raw {retriever.backend} scorer (pre-encoded ids)",
            "queries_per_s": round(raw_qps, 1),
            "vs_raw": 1.0,
        },
        {
            "path": "vector env, batched, warm doc cache",
            "queries_per_s": round(len(turns) / best["batched"], 1),
            "vs_raw": round(len(turns) / best["batched"] / raw_qps, 3),
        },
        {
            "path": "vector env, batched, cold doc cache",
            "queries_per_s": round(len(turns) / best["cold"], 1),
            "vs_raw": round(len(turns) / best["cold"] / raw_qps, 3),
        },
        {
            "path": "vector env, one call per query (warm)",
            "queries_per_s": round(len(turns) / best["one_by_one"], 1),
            "vs_raw": round(len(turns) / best["one_by_one"] / raw_qps, 3),
        },
    ]
    save_results(
        f"vector_bm25_{args.docs}" + (f"_busy{args.busy}" if args.busy else ""),
        {
            "docs": args.docs,
            "queries": len(turns),
            "num_envs": args.num_envs,
            "k": args.k,
            "backend": retriever.backend,
            "threads": retriever.n_threads,
            "build_seconds": round(build_s, 1),
            "throughput": rows,
            "goal": "vector env batched >= 0.9x raw",
            "tokenizer": args.tokenizer,
            "busy_processes": args.busy,
            "loadavg_1min_at_end": os.getloadavg()[0],
        },
    )


if __name__ == "__main__":
    main()
