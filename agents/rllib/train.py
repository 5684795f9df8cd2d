"""``python -m agents.rllib.train``: RLlib PPO on the token-level env.

Examples::

    python -m agents.rllib.train --preset laptop --out runs/rllib-laptop
    python -m agents.rllib.train --preset laptop --set ppo.lr=3e-4 --set env_config.size=small
    python -m agents.rllib.train --preset cluster --address auto      # on a Ray cluster
    python -m agents.rllib.train --config runs/rllib-laptop/config.json --iterations 100

Same conventions as ``search-env train``: the resolved ``config.json``, one record per
iteration in ``metrics.jsonl`` / ``metrics.csv``, ``curves.png`` (with matplotlib) and
``summary.json`` in the run directory, plus an RLlib checkpoint in ``checkpoint/``.
Precedence: preset (or ``--config``), then ``--set`` overrides, then the dedicated flags.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from agents.cli_args import add_config_arguments, add_set_argument, base_config, overrides_from_args
from agents.rllib.config import (
    PRESETS,
    RLlibRunConfig,
    apply_overrides,
    build_ppo_config,
    load_config,
    preset,
    save_config,
)
from agents.rllib.deps import require_ray
from search_env.logs import configure_logging

logger = logging.getLogger(__name__)

PLOT_KEYS = ("reward", "answered")


def _get(result: dict[str, Any], *path: str, default: Any = None) -> Any:
    node: Any = result
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def iteration_record(result: dict[str, Any], iteration: int, started: float) -> dict[str, Any]:
    """The metrics of one ``algo.train()`` result that a run keeps.

    ``reward`` is RLlib's mean episode return over the last 100 finished episodes;
    ``answered``, ``em`` and ``searches`` come from
    :class:`~agents.rllib.callbacks.SearchEpisodeMetrics` over the same window.
    """
    env = result.get("env_runners", {})
    learn = _get(result, "learners", "__all_modules__", default={})
    policy = _get(result, "learners", "default_policy", default={})
    record: dict[str, Any] = {"step": iteration}
    for name, value in (
        ("reward", env.get("episode_return_mean")),
        ("answered", env.get("answered")),
        ("em", env.get("em")),
        ("searches", env.get("searches")),
        ("episode_len", env.get("episode_len_mean")),
        ("episodes", env.get("num_episodes")),
        ("env_steps", env.get("num_env_steps_sampled")),
        ("env_steps_total", result.get("num_env_steps_sampled_lifetime")),
        ("agent_tokens", learn.get("agent_tokens")),
        ("env_tokens", learn.get("env_tokens")),
        ("loss_rows", learn.get("loss_rows")),
        ("entropy", policy.get("entropy")),
        ("policy_loss", policy.get("policy_loss")),
        ("vf_loss", policy.get("vf_loss")),
        ("vf_explained_var", policy.get("vf_explained_var")),
        ("sample_time", _get(result, "timers", "env_runner_sampling_timer")),
        ("learn_time", _get(result, "timers", "learner_update_timer")),
    ):
        if value is not None:
            record[name] = float(value)
    record["wall_time"] = time.perf_counter() - started
    return record


def _ray_init(cfg: RLlibRunConfig, temp_dir: str | None) -> bool:
    """Start (or join) Ray unless it is already running; True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False}
    if cfg.ray_address is not None:
        kwargs["address"] = cfg.ray_address
    else:
        kwargs["num_cpus"] = cfg.num_cpus
        if temp_dir is not None:
            kwargs["_temp_dir"] = temp_dir
    ray.init(**kwargs)
    return True


def train_rllib(
    cfg: RLlibRunConfig, *, ray_temp_dir: str | None = None, progress: bool = True
) -> dict[str, Any]:
    """Train ``cfg`` with RLlib PPO; write the run directory; return the summary.

    Starts a local Ray (or joins ``cfg.ray_address``) unless Ray is already initialised,
    and shuts down only a Ray it started.
    """
    require_ray()
    import ray
    import torch

    from agents.metrics import MetricsLogger
    from agents.plots import plot_curves
    from agents.rllib.env import register_search_envs

    started = time.perf_counter()
    run_dir = Path(cfg.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.json")
    torch.set_num_threads(cfg.torch_threads)
    we_started = _ray_init(cfg, ray_temp_dir)
    algo = None
    try:
        register_search_envs()
        algo = build_ppo_config(cfg).build_algo()
        metrics = MetricsLogger(run_dir)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.iterations, desc="rllib-ppo", dynamic_ncols=True)
        for iteration in range(1, cfg.iterations + 1):
            record = iteration_record(algo.train(), iteration, started)
            metrics.log(record)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(reward=f"{record.get('reward', float('nan')):.3f}")
            if cfg.time_budget_s is not None and record["wall_time"] >= cfg.time_budget_s:
                logger.info(
                    "time budget of %.0f s reached after %d iterations",
                    cfg.time_budget_s,
                    iteration,
                )
                break
        if bar is not None:
            bar.close()
        checkpoint = (
            str(algo.save_to_path(str((run_dir / "checkpoint").resolve())))
            if cfg.checkpoint
            else None
        )
        return _finish(cfg, run_dir, metrics.records, started, checkpoint, plot_curves)
    finally:
        if algo is not None:
            algo.stop()
        if we_started:
            ray.shutdown()


def _finish(
    cfg: RLlibRunConfig,
    run_dir: Path,
    records: list[dict[str, Any]],
    started: float,
    checkpoint: str | None,
    plot_curves: Any,
) -> dict[str, Any]:
    rewards = [r["reward"] for r in records if "reward" in r]
    summary: dict[str, Any] = {
        "backend": "rllib",
        "algo": "ppo",
        "iterations": len(records),
        "run_dir": str(run_dir),
        "wall_seconds": time.perf_counter() - started,
        "env_steps": records[-1].get("env_steps_total") if records else 0,
        "checkpoint": checkpoint,
    }
    if rewards:
        summary.update(reward_first=rewards[0], reward_last=rewards[-1], reward_best=max(rewards))
    png = plot_curves(
        records, run_dir / "curves.png", keys=PLOT_KEYS, title=f"rllib ppo {run_dir.name}"
    )
    summary["curves_png"] = str(png) if png else None
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


# ----------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``train --backend rllib`` options (for the ``search-env`` CLI to reuse)."""
    add_config_arguments(parser, PRESETS, default="laptop")
    parser.add_argument("--env", help="env id (e.g. SearchQA-Synth-v0)")
    parser.add_argument("--out", help="run directory")
    parser.add_argument("--iterations", type=int, help="training iterations")
    parser.add_argument("--time-budget", type=float, help="stop after this many seconds")
    parser.add_argument("--seed", type=int, help="run seed")
    parser.add_argument("--address", help="Ray address to join ('auto' on a cluster node)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of a local Ray")
    parser.add_argument("--ray-temp-dir", help="Ray's session directory (keep it short)")
    add_set_argument(parser, "ppo.lr=1e-4")
    return parser


def config_from_args(args: argparse.Namespace) -> RLlibRunConfig:
    """The resolved config of a command line."""
    cfg = base_config(args, load_config, preset, default="laptop")
    return apply_overrides(
        cfg,
        overrides_from_args(
            args,
            RLlibRunConfig,
            (
                ("env", "env_id"),
                ("out", "out_dir"),
                ("iterations", "iterations"),
                ("time_budget", "time_budget_s"),
                ("seed", "seed"),
                ("address", "ray_address"),
                ("num_cpus", "num_cpus"),
            ),
        ),
    )


def run(args: argparse.Namespace) -> int:
    """Run a parsed command line; returns the exit status."""
    try:
        require_ray()
        cfg = config_from_args(args)
    except (ImportError, ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = train_rllib(cfg, ray_temp_dir=args.ray_temp_dir)
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m agents.rllib.train``."""
    configure_logging(logging.INFO)
    parser = add_arguments(
        argparse.ArgumentParser(
            prog="python -m agents.rllib.train", description=__doc__.splitlines()[0]
        )
    )
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
