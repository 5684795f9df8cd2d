"""Env overhead: microseconds per agent token (token mode) and turns/s (chunk mode).

Retrieval is excluded: a retriever that returns fixed passages stands in for BM25.
Goals (issue 2): at most 20 us per token on one core, and flat in context length
(cost at ~4k tokens at most 1.5x the cost at ~100 tokens).

The tokenizer is Qwen2.5's (``qwen2.5``, built offline: the one Search-R1 users run);
``--tokenizer synth`` measures with the small synthetic-world BPE instead.

    python benchmarks/bench_env.py [--repeats 5] [--tokenizer qwen2.5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gymnasium as gym  # noqa: E402

from benchmarks.common import save_results  # noqa: E402
from search_env.env import SearchQAEnv  # noqa: E402
from search_env.registration import load_tokenizer  # noqa: E402
from search_env.types import Passage, QAExample  # noqa: E402

QUESTIONS = [QAExample("q", "Who founded the Quastad Institute?", ("Velorin Quastad",))]


class FixedRetriever:
    def __init__(self) -> None:
        self.docs = [Passage(str(i), f'"Doc {i}"\n' + "filler text " * 30) for i in range(3)]

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        return [self.docs[:k] for _ in queries]


def per_token_us(env: gym.Env, filler: int, warm: int, window: int, repeats: int) -> float:
    """Median microseconds per step over ``window`` tokens after ``warm`` tokens of context."""
    times = []
    for _ in range(repeats):
        env.reset(options={"index": 0})
        for _ in range(warm):
            env.step(filler)
        start = time.perf_counter()
        for _ in range(window):
            env.step(filler)
        times.append((time.perf_counter() - start) / window * 1e6)
    return statistics.median(times)


def chunk_turns_per_second(tok, repeats: int) -> dict[str, float]:
    env = SearchQAEnv(QUESTIONS, FixedRetriever(), tok, action_mode="chunk", max_turns=4)
    search = tok.encode(
        "<think> I need to look this up. </think>\n<search> Quastad Institute founder </search>"
    )
    answer = tok.encode("<think> found it </think>\n<answer> Velorin Quastad </answer>")
    episodes = 300
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        turns = 0
        for _ in range(episodes):
            env.reset(options={"index": 0})
            for _ in range(3):
                env.step(search)
            env.step(answer)
            turns += 4
        best = min(best, time.perf_counter() - start)
    return {
        "turns_per_second": turns / best,
        "agent_tokens_per_turn": (3 * len(search) + len(answer)) / 4,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument(
        "--tokenizer",
        default="qwen2.5",
        help="a tokenizer= spec: qwen2.5 (default), synth, a path or hub id",
    )
    args = parser.parse_args()
    tok = load_tokenizer(args.tokenizer)  # loaded (or built, once) before pinning to one core
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as the goal says
    filler = tok.encode(" the")[0]
    kwargs = dict(max_prompt_length=4400, max_response_length=5000, max_start_length=300)
    rows = []
    for label, make in [
        ("bare env", lambda **k: SearchQAEnv(QUESTIONS, FixedRetriever(), tok, **kwargs, **k)),
        (
            "gym.make wrappers",
            lambda **k: gym.make(
                "SearchQA-v0",
                dataset=QUESTIONS,
                retriever=FixedRetriever(),
                tokenizer=tok,
                **kwargs,
                **k,
            ),
        ),
    ]:
        for copy_obs in (True, False):
            env = make(copy_obs=copy_obs)
            env.reset(options={"index": 0})
            prompt = int(env.unwrapped._len)
            short = per_token_us(env, filler, 0, args.window, args.repeats)
            long_warm = 4000 - prompt - args.window
            long = per_token_us(env, filler, long_warm, args.window, args.repeats)
            rows.append(
                {
                    "setup": label,
                    "copy_obs": copy_obs,
                    "us_per_token_at_~100": round(short, 2),
                    "us_per_token_at_~4k": round(long, 2),
                    "ratio_4k_over_100": round(long / short, 3),
                }
            )
    chunk = chunk_turns_per_second(tok, args.repeats)
    save_results(
        "env_overhead",
        {
            "token_mode": rows,
            "chunk_mode": chunk,
            "goal": "<= 20 us/token, ratio <= 1.5",
            "cores": 1,
            "tokenizer": args.tokenizer,
            "vocab": len(tok),
        },
    )


if __name__ == "__main__":
    main()
