"""Rollout and training speed of the generation back ends (HF vs vLLM) on the tiny-cpu preset.

For each back end, in a fresh process (so that peak memory is its own):

* rollout throughput: agent tokens/s and episodes/s of :func:`agents.rollout.collect`
  on the preset's train env (48 episodes, groups of 8), after one warm-up round;
* the share of rollout wall time spent in the env (``reset()`` + ``step()`` of the vector
  env, BM25 included), in ``step()`` alone, in the retriever alone, and in the policy's
  ``generate``; goal (issue 4): env at most 2%;
* the cost of pushing the weights to the sampler (``update_weights``);
* GRPO step time (rollout + update, the median over ``--steps`` steps of
  :func:`agents.grpo.train_grpo`);
* peak RSS of the process (rollouts and training).

The model is the preset's tiny Qwen2 after a short SFT warm start (so that it searches
and answers like a trained policy), or ``--model DIR``.

    python benchmarks/bench_rollout.py [--model DIR] [--sft-steps 300] [--rounds 3]

Needs vllm for the vLLM row (see ``agents/policy/vllm.py``); without it, only HF runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import save_results  # noqa: E402

BACKENDS = ("hf", "vllm")


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def bench_config(model_dir: str, backend: str, out_dir: str, steps: int, threads: int) -> Any:
    """The tiny-cpu preset on ``model_dir`` (no SFT), with the given back end."""
    from agents.config import apply_overrides, tiny_cpu

    return apply_overrides(
        tiny_cpu(),
        {
            "model.path": model_dir,
            "sft.steps": 0,
            "steps": steps,
            "eval_every": 0,
            "checkpoint_every": 0,
            "out_dir": out_dir,
            "threads": threads,
            "rollout.backend": backend,
            "rollout.vllm_kv_cache_gb": 0.25,
            "rollout.eval_questions": 32,
        },
    )


class Stopwatch:
    """Wraps methods of objects to add up the wall time spent in them, by name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, obj: Any, method: str, name: str) -> None:
        inner = getattr(obj, method)
        self.seconds[name] = 0.0

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start

        setattr(obj, method, timed)

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.seconds, 0.0)


def rollout_speed(cfg: Any, rounds: int) -> dict[str, float]:
    """Agent tokens/s, episodes/s and the env's share of the wall time of ``collect``."""
    import torch

    from agents.model import load_model
    from agents.rollout import collect, make_env
    from agents.seeding import question_indices
    from search_env.registration import load_tokenizer

    torch.set_num_threads(cfg.threads)
    r = cfg.rollout
    env = make_env(r, "train", r.num_envs, load_tokenizer(cfg.model.path))
    model, tok = load_model(cfg.model, env.envs[0].tokenizer)
    start = time.perf_counter()
    if r.backend == "vllm":
        from agents.policy import VLLMPolicy

        policy = VLLMPolicy.from_model(
            model,
            tok,
            seed=0,
            max_model_len=env.envs[0].protocol.max_prompt_length,
            kv_cache_bytes=int(r.vllm_kv_cache_gb * 2**30),
        )
    else:
        from agents.policy import HFPolicy

        policy = HFPolicy(model, tok, seed=0)
    engine_start = time.perf_counter() - start
    clock = Stopwatch()
    clock.wrap(env, "reset", "env_reset")
    clock.wrap(env, "step", "env_step")
    clock.wrap(env.retriever, "search", "retrieval")  # inside env_step
    clock.wrap(policy, "generate", "generate")
    prompts = r.num_envs // r.group_size

    def one_round(step: int) -> list[Any]:
        indices = question_indices(len(env.dataset), prompts, 0, step)
        return collect(
            env, policy, indices=indices, group_size=r.group_size, temperature=r.temperature
        )

    one_round(0)  # warm-up: first-call allocations, kernel selection
    clock.reset()
    trajectories, start = [], time.perf_counter()
    for step in range(1, rounds + 1):
        trajectories += one_round(step)
    wall = time.perf_counter() - start
    pushes = []
    for _ in range(3):
        t0 = time.perf_counter()
        policy.update_weights({k: v.clone() for k, v in model.state_dict().items()})
        pushes.append(time.perf_counter() - t0)
    if hasattr(policy, "close"):
        policy.close()
    env.close()
    tokens = sum(t.agent_tokens for t in trajectories)
    return {
        "agent_tokens_per_s": tokens / wall,
        "episodes_per_s": len(trajectories) / wall,
        "agent_tokens_per_episode": tokens / len(trajectories),
        "searches_per_episode": statistics.mean(t.searches for t in trajectories),
        # The goal's number: the env's reset() and step(), retrieval included.
        "env_fraction": (clock.seconds["env_reset"] + clock.seconds["env_step"]) / wall,
        "env_step_fraction": clock.seconds["env_step"] / wall,
        "retrieval_fraction": clock.seconds["retrieval"] / wall,
        "generate_fraction": clock.seconds["generate"] / wall,
        "rollout_wall_s": wall,
        "engine_start_s": engine_start,
        "weight_push_ms": 1000 * statistics.median(pushes),
        "rollout_peak_rss_gb": peak_rss_gb(),
    }


def grpo_step_time(cfg: Any) -> dict[str, float]:
    """Median rollout, update and total time of the GRPO steps of a short run."""
    from agents.grpo import train_grpo

    train_grpo(cfg)
    lines = (Path(cfg.out_dir) / "metrics.jsonl").read_text().splitlines()
    steps = [r for r in map(json.loads, lines) if r.get("step", 0) > 0]
    return {
        "grpo_step_s": statistics.median(r["rollout_time"] + r["update_time"] for r in steps),
        "grpo_rollout_s": statistics.median(r["rollout_time"] for r in steps),
        "grpo_update_s": statistics.median(r["update_time"] for r in steps),
        "peak_rss_gb": peak_rss_gb(),
    }


def worker(args: argparse.Namespace) -> None:
    """One back end, in this process; prints one JSON line."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = bench_config(args.model, args.worker, tmp, args.steps, args.threads)
        result = {"backend": args.worker, **rollout_speed(cfg, args.rounds), **grpo_step_time(cfg)}
    print("RESULT " + json.dumps(result), flush=True)


def warm_start_model(sft_steps: int, out: Path) -> dict[str, Any]:
    from agents.config import apply_overrides, tiny_cpu
    from agents.recipe import warm_start

    cfg = apply_overrides(tiny_cpu(), {"sft.steps": sft_steps, "rollout.eval_questions": 32})
    return warm_start(cfg, out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="model directory (default: a fresh SFT warm start)")
    parser.add_argument("--sft-steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3, help="timed rollout rounds")
    parser.add_argument("--steps", type=int, default=3, help="GRPO steps timed")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: a second thread only spin-waits on a busy box)",
    )
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    import torch

    torch.set_num_threads(args.threads)
    backends = [b for b in args.backends.split(",") if b]
    if "vllm" in backends and importlib.util.find_spec("vllm") is None:
        print("vllm is not installed: HF only", file=sys.stderr)
        backends.remove("vllm")
    with tempfile.TemporaryDirectory() as tmp:
        sft: dict[str, Any] = {}
        if args.model is None:
            sft = warm_start_model(args.sft_steps, Path(tmp))
            args.model = sft["model_dir"]
        rows = []
        for backend in backends:
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                backend,
                "--model",
                args.model,
                "--rounds",
                str(args.rounds),
                "--steps",
                str(args.steps),
                "--threads",
                str(args.threads),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not lines:
                sys.stderr.write(proc.stderr[-4000:])
                raise SystemExit(f"the {backend} worker failed (exit {proc.returncode})")
            rows.append(json.loads(lines[-1].removeprefix("RESULT ")))
    save_results(
        "rollout_backends",
        {
            "preset": "tiny-cpu (48 episodes a step, groups of 8, 48-token turns, 512 context)",
            "threads": args.threads,
            "model": "tiny-cpu Qwen2"
            + (f" after {args.sft_steps} SFT steps" if sft else f" from {args.model}"),
            "sft": {k: v for k, v in sft.items() if k != "model_dir"},
            "env_fraction_goal": 0.02,
            "backends": rows,
        },
    )


if __name__ == "__main__":
    main()
