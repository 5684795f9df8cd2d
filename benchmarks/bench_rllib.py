"""Env steps/s through RLlib's env runners (1, 2 runners) vs the bare vector env.

Every row steps the same token env (the small synthetic task of ``agents.tokenlevel.task``:
tiny world, 8-token turns, contexts under 128 tokens) with ``--envs`` sub-envs per
process, and counts agent tokens (env steps) per second of wall time:

- ``bare vector env``: ``gym.make_vec`` (search-env's batched ``SearchQAVectorEnv``, one
  retriever call per step), uniform random tokens from the task's 8-token vocabulary,
  drawn with numpy: the env alone.
- ``rllib, uniform module``: RLlib's ``SingleAgentEnvRunner`` (Ray actor) with an
  RLModule that returns fixed logits (the same uniform 8-token policy): env runner
  overhead only (connectors, episode bookkeeping, action sampling, actor call).
- ``rllib, token transformer``: the same runners with the laptop preset's
  ``TokenPolicyModule`` (d_model 64, 2 layers, window 32): what training samples at.

RLlib rows run each runner's ``sample(num_timesteps=...)`` at once and return only the
step counts (shipping episodes to the learner is the learner's cost, not measured).
With 2 runners on a 2-core machine the ideal is 2x one runner.

    python benchmarks/bench_rllib.py               # ~2 minutes on 2 cores
    python benchmarks/bench_rllib.py --steps 16000 --envs 32
    python benchmarks/bench_rllib.py --curves      # the learning curves instead (~10 minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import save_results  # noqa: E402


def bare_vector_env(envs: int, steps: int, seed: int = 0) -> dict[str, Any]:
    """Steps/s of ``gym.make_vec`` with uniform random task tokens."""
    import gymnasium as gym
    import numpy as np

    from agents.tokenlevel.env import OUR_KEYS, env_tokenizer
    from agents.tokenlevel.task import TASK_ENV_CONFIG, TASK_ENV_ID, task_token_ids

    config = {k: v for k, v in TASK_ENV_CONFIG.items() if k not in OUR_KEYS}
    tokenizer = env_tokenizer(TASK_ENV_ID, TASK_ENV_CONFIG)
    vec = gym.make_vec(TASK_ENV_ID, num_envs=envs, tokenizer=tokenizer, **config)
    ids = np.asarray(task_token_ids(tokenizer))
    rng = np.random.default_rng(seed)
    vec.reset(seed=seed)
    for _ in range(50):  # warm the caches
        vec.step(ids[rng.integers(len(ids), size=envs)])
    rounds = max(1, steps // envs)
    start = time.perf_counter()
    for _ in range(rounds):
        vec.step(ids[rng.integers(len(ids), size=envs)])
    seconds = time.perf_counter() - start
    vec.close()
    return {
        "setup": "bare vector env",
        "runners": 0,
        "envs_per_runner": envs,
        "env_steps": rounds * envs,
        "seconds": seconds,
        "steps_per_s": rounds * envs / seconds,
    }


def _uniform_module_class() -> type:
    """An RLModule with fixed logits: uniform over the allowed tokens, no network."""
    import torch
    from ray.rllib.core.columns import Columns
    from ray.rllib.core.rl_module.apis import ValueFunctionAPI
    from ray.rllib.core.rl_module.torch import TorchRLModule

    from agents.rllib.module import MASKED_LOGIT

    class UniformTokenModule(TorchRLModule, ValueFunctionAPI):
        def setup(self) -> None:
            logits = torch.full((int(self.action_space.n),), MASKED_LOGIT)
            logits[torch.tensor(self.model_config["allowed_token_ids"])] = 0.0
            self.register_buffer("logits", logits, persistent=False)
            self.dummy = torch.nn.Parameter(torch.zeros(1))  # the learner needs a parameter

        def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
            n = batch[Columns.OBS]["length"].shape[0]
            return {Columns.ACTION_DIST_INPUTS: self.logits.expand(n, -1)}

        def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> Any:
            return self.dummy.expand(batch[Columns.OBS]["length"].shape[0])

    return UniformTokenModule


def rllib_runners(runners: int, envs: int, steps: int, module: str) -> dict[str, Any]:
    """Steps/s of ``runners`` RLlib env runners sampling ``steps`` env steps each."""
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from agents.rllib.config import allowed_token_ids, apply_overrides, build_ppo_config, preset

    cfg = apply_overrides(
        preset("laptop"),
        {
            "runners.num_env_runners": runners,
            "runners.num_envs_per_env_runner": envs,
            "ppo.train_batch_size": max(steps * runners, 256),
            "ppo.minibatch_size": 256,
        },
    )
    config = build_ppo_config(cfg)
    if module == "uniform":
        config.rl_module(
            rl_module_spec=RLModuleSpec(
                module_class=_uniform_module_class(),
                model_config={"allowed_token_ids": allowed_token_ids(cfg)},
            )
        )
    algo = config.build_algo()
    try:
        group = algo.env_runner_group

        def sample(n: int) -> list[int]:
            return group.foreach_env_runner(
                lambda r: sum(len(e) for e in r.sample(num_timesteps=n, explore=True)),
                local_env_runner=False,
            )

        sample(max(envs * 20, 200))  # warm up: envs built, caches filled
        start = time.perf_counter()
        counts = sample(steps)
        seconds = time.perf_counter() - start
    finally:
        algo.stop()
    total = int(sum(counts))
    name = "rllib, uniform module" if module == "uniform" else "rllib, token transformer"
    return {
        "setup": name,
        "runners": runners,
        "envs_per_runner": envs,
        "env_steps": total,
        "seconds": seconds,
        "steps_per_s": total / seconds,
    }


def learning_curves(out: Path, rllib_seconds: float, sb3_timesteps: int) -> None:
    """Train the laptop preset (RLlib) and the SB3 example; save both return curves."""
    from agents.rllib.config import apply_overrides, preset
    from agents.rllib.train import train_rllib
    from agents.sb3.train import SB3RunConfig, train_sb3

    keep = (
        "step",
        "timesteps",
        "env_steps_total",
        "reward",
        "answered",
        "em",
        "episode_len",
        "entropy",
        "agent_tokens",
        "loss_rows",
        "env_tokens",
        "wall_time",
    )
    rllib_cfg = apply_overrides(
        preset("laptop"),
        {"out_dir": str(out / "rllib-laptop"), "iterations": 1000, "time_budget_s": rllib_seconds},
    )
    rllib_summary = train_rllib(
        rllib_cfg, ray_temp_dir=tempfile.mkdtemp(prefix="ray", dir="/tmp"), progress=False
    )
    sb3_summary = train_sb3(SB3RunConfig(timesteps=sb3_timesteps, out_dir=str(out / "sb3")))
    curves = {}
    for name, run_dir in (("rllib", out / "rllib-laptop"), ("sb3", out / "sb3")):
        records = [
            json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        ]
        curves[name] = [{k: r[k] for k in keep if k in r} for r in records]
    save_results(
        "rllib_sb3_learning_curves",
        {
            "task": "agents.tokenlevel.task.TASK_ENV_CONFIG: return = 1 for EM, 0.5 for a well-formed "
            "wrong answer, 0 without an answer",
            "load_average_1min": os.getloadavg()[0],
            "rllib_summary": rllib_summary,
            "sb3_summary": sb3_summary,
            "rllib_curve": curves["rllib"],
            "sb3_curve": curves["sb3"],
        },
    )
    from agents.plots import plot_curves  # writes nothing without matplotlib

    for name, records in curves.items():
        plot_curves(
            records,
            Path(__file__).parent / "results" / f"{name}_learning_curve.png",
            keys=("reward", "answered"),
            title=f"{name} ppo, synthetic task",
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8000, help="env steps per runner per row")
    parser.add_argument("--envs", type=int, default=8, help="sub-envs per process")
    parser.add_argument(
        "--curves",
        action="store_true",
        help="instead: train RLlib (laptop preset) and SB3 on the task, save the curves",
    )
    parser.add_argument(
        "--rllib-seconds", type=float, default=420.0, help="--curves: RLlib time budget"
    )
    parser.add_argument("--sb3-timesteps", type=int, default=60_000, help="--curves: SB3 timesteps")
    parser.add_argument(
        "--out", type=Path, default=Path("runs/bench-rllib"), help="--curves: run dirs"
    )
    args = parser.parse_args(argv)
    if args.curves:
        learning_curves(args.out, args.rllib_seconds, args.sb3_timesteps)
        return

    import ray
    import torch

    from agents.rllib.env import register_search_envs

    torch.set_num_threads(1)
    rows = [bare_vector_env(args.envs, args.steps)]
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=tempfile.mkdtemp(prefix="ray", dir="/tmp"),
    )
    try:
        register_search_envs()
        for module in ("uniform", "transformer"):
            for runners in (1, 2):
                rows.append(rllib_runners(runners, args.envs, args.steps, module))
    finally:
        ray.shutdown()
    bare = rows[0]["steps_per_s"]
    for row in rows:
        row["vs_bare"] = row["steps_per_s"] / bare
    name = "rllib_env_runners" if args.envs == 8 else f"rllib_env_runners_{args.envs}envs"
    save_results(
        name,
        {
            "steps_per_runner": args.steps,
            "envs_per_process": args.envs,
            "task": "agents.tokenlevel.task.TASK_ENV_CONFIG (tiny synth world, 8-token vocabulary)",
            "load_average_1min": os.getloadavg()[0],
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
