"""The tiny-cpu recipe's GRPO, side by side: the native trainer and TRL's ``GRPOTrainer``.

Both runs start from the same weights: the recipe's SFT warm start
(:func:`agents.recipe.warm_start`) is run once and saved as a model directory; the
native run loads it as ``model.path`` with ``sft.steps=0`` (as the recipe's own RL runs
do) and the TRL run as ``--init-model``. Same config (the ``tiny-cpu`` preset plus
``--set`` overrides), same batch (``num_envs`` episodes a step: ``num_envs / group_size``
questions x ``group_size``), same number of steps, the same episodes' env
(:mod:`agents.trl.rollout` plays them with :func:`agents.rollout.collect`), the same
greedy held-out evaluation before and after. Measured per backend: the mean step time
(rollout plus update; the native loop's final evaluation taken out), agent tokens
generated per second of step time, and held-out EM before and after.

What differs (by design of each trainer): which questions a step draws (TRL's shuffled
sampler vs the native seeded draw), TRL's advantage epsilon (1e-4 vs 1e-6), and TRL's
per-step loss normalisation (``dapo``) vs the native token mean.

    nice -n 10 python benchmarks/bench_trl.py                      # SFT 600 steps, RL 30
    python benchmarks/bench_trl.py --sft-steps 2000 --steps 40     # the full recipe's sizes
    python benchmarks/bench_trl.py --quick                         # a smoke test
    python benchmarks/bench_trl.py --warm-start runs/tiny-cpu-recipe/sft_model --steps 40
                                        # reuse the recipe's SFT model (2,000 steps)

Writes ``benchmarks/results/trl_vs_native.json`` and ``.md`` (``--name`` changes it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS_DIR, rebuild_table, save_results, tiny_recipe_base  # noqa: E402


def native_numbers(run_dir: Path, num_envs: int) -> dict[str, Any]:
    """Step times and agent tokens of a native run, from its ``metrics.jsonl``."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r.get("step", 0) > 0 and "step_time" in r]
    times = [r["step_time"] - r.get("eval_time", 0.0) for r in steps]
    tokens = [r["response_length"] * num_envs for r in steps]
    return {
        "step_times": times,
        "rollout_seconds": sum(r["rollout_time"] for r in steps),
        "agent_tokens": sum(tokens),
        "losses": [r["loss"] for r in steps],
    }


def reused_warm_start(model_dir: Path) -> dict[str, Any]:
    """An earlier SFT warm start: its directory, and its steps and held-out EM when a
    recipe's ``recipe.json`` sits beside it (else the EM is the native run's step 0)."""
    if not (model_dir / "config.json").is_file():
        raise SystemExit(f"--warm-start {model_dir} is not a model directory (no config.json)")
    recipe = model_dir.parent / "recipe.json"
    info: dict[str, Any] = {"model_dir": str(model_dir), "test_em": None}
    if recipe.is_file():
        sft = json.loads(recipe.read_text())["sft"]
        info.update(steps=sft["steps"], test_em=sft["test_em"])
    return info


def row(
    name: str,
    steps: int,
    times: list[float],
    tokens: float,
    before: float,
    after: float,
    questions: int,
    wall: float,
    rollout_seconds: float,
) -> dict[str, Any]:
    """One line of the side-by-side table."""
    return {
        "trainer": name,
        "steps": steps,
        "step_s_mean": statistics.fmean(times),
        "step_s_median": statistics.median(times),
        "rollout_s_mean": rollout_seconds / len(times),
        "agent_tokens_per_s": tokens / sum(times),
        "em_before": before,
        "em_after": after,
        "eval_questions": questions,
        "rl_wall_s": wall,
    }


def markdown(results: dict[str, Any]) -> str:
    """The results as a markdown table plus the settings line."""
    lines = [
        "| trainer | steps | step time (mean / median) | of which rollout (mean) "
        "| agent tokens/s | held-out EM before → after |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        n = r["eval_questions"]
        lines.append(
            f"| {r['trainer']} | {r['steps']} | {r['step_s_mean']:.2f} s / {r['step_s_median']:.2f} s "
            f"| {r['rollout_s_mean']:.2f} s | {r['agent_tokens_per_s']:.0f} | {r['em_before']:.3f} → **{r['em_after']:.3f}** "
            f"({round(r['em_after'] * n)}/{n}) |"
        )
    s = results["settings"]
    lines += [
        "",
        f"Same warm start ({s['sft_steps']} SFT steps, held-out EM {s['sft_em']:.3f}), "
        f"{s['num_envs']} episodes a step ({s['num_envs'] // s['group_size']} questions x "
        f"{s['group_size']}), {s['steps']} steps, {s['threads']} torch thread; "
        f"trl {s['trl']}, torch {s['torch']}. {s['note']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import torch

    from agents.cli_args import add_set_argument
    from agents.config import apply_overrides
    from agents.grpo import train_grpo
    from agents.recipe import warm_start
    from agents.trl.train import train_trl

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-trl", help="run directories")
    parser.add_argument("--sft-steps", type=int, default=600)
    parser.add_argument("--steps", type=int, default=30, help="RL steps of each trainer")
    parser.add_argument("--quick", action="store_true", help="the recipe's --quick sizes")
    parser.add_argument(
        "--warm-start",
        type=Path,
        default=None,
        help="an SFT model directory to start both trainers from (e.g. the recipe's "
        "runs/tiny-cpu-recipe/sft_model) instead of running the SFT here",
    )
    parser.add_argument("--name", default="trl_vs_native", help="results file name")
    parser.add_argument(
        "--note", default="", help="a sentence for the table (e.g. how busy the machine was)"
    )
    parser.add_argument(
        "--rebuild", action="store_true", help="only rewrite the .md from the saved .json"
    )
    add_set_argument(parser, "rollout.num_envs=48")
    args = parser.parse_args(argv)
    if args.rebuild:
        return rebuild_table(args.name, args.note, markdown)
    base, overrides, out = tiny_recipe_base(args)

    started = time.perf_counter()
    if args.warm_start is not None:
        sft = reused_warm_start(args.warm_start)
    else:
        sft = warm_start(base, out)  # once; both trainers start from sft["model_dir"]
    sft_seconds = time.perf_counter() - started
    r = base.rollout

    native_cfg = apply_overrides(
        base, {"model.path": sft["model_dir"], "sft.steps": 0, "out_dir": str(out / "native")}
    )
    t0 = time.perf_counter()
    native = train_grpo(native_cfg, overwrite=True)
    native_wall = time.perf_counter() - t0
    nat = native_numbers(out / "native", r.num_envs)

    trl_cfg = apply_overrides(base, {"sft.steps": 0, "out_dir": str(out / "trl")})
    t0 = time.perf_counter()
    trl_run = train_trl(trl_cfg, init_model=sft["model_dir"], overwrite=True)
    trl_wall = time.perf_counter() - t0
    t = trl_run.summary

    questions = int(native["eval_questions"])
    rows = [
        row(
            "native GRPO (agents.grpo)",
            base.steps,
            nat["step_times"],
            nat["agent_tokens"],
            native["eval_em_start"],
            native["eval_em_end"],
            questions,
            native_wall,
            nat["rollout_seconds"],
        ),
        row(
            "TRL GRPOTrainer (agents.trl)",
            base.steps,
            t["step_times"],
            t["agent_tokens"],
            t["eval_em_start"],
            t["eval_em_end"],
            int(t["eval_questions"]),
            trl_wall,
            sum(rec.seconds for rec in trl_run.rollout.history),
        ),
    ]
    results: dict[str, Any] = {
        "rows": rows,
        "settings": {
            "sft_steps": sft.get("steps", base.sft.steps),
            "sft_em": native["eval_em_start"] if sft["test_em"] is None else sft["test_em"],
            "sft_model": str(sft["model_dir"]),
            "sft_seconds": sft_seconds,
            "num_envs": r.num_envs,
            "group_size": r.group_size,
            "steps": base.steps,
            "threads": base.threads,
            "trl": t["trl_version"],
            "torch": torch.__version__,
            "note": args.note,
            "overrides": overrides,
        },
        "native": {**native, **{k: v for k, v in nat.items()}},
        "trl": t,
    }
    save_results(args.name, results)
    text = markdown(results)
    (RESULTS_DIR / f"{args.name}.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
