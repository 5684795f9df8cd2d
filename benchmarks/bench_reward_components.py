"""GRPO on the synthetic world with the EM reward and with a shaped reward, side by side.

One SFT warm start of the ``tiny-cpu`` recipe (:func:`agents.recipe.warm_start`), saved
as a model directory; then the native GRPO trainer twice from those same weights, with
the same seed, batch and steps, differing only in ``rollout.env_kwargs.reward``:

* ``em``: the default, Search-R1's exact-match reward;
* ``search_r1_format`` (or ``--reward``): Search-R1 v0.3's format reward
  (:class:`search_env.reward_config.RewardConfig`): a right answer 1, otherwise 0.2 for a
  well-formed episode, 0.1 for an answer in a bad format.

The eval env gets the same kwargs, so ``eval_reward`` is the reward paid while
``eval_em`` stays the answer's exact match in both runs. Reported per run: held-out EM
before and after, the mean reward paid, searches, and each ``rc_<name>`` reward
component per step (``metrics.jsonl``).

Which rewards a run config can carry: a kind name (``reward="search_r1_format"``, as
here) goes through the saved JSON config and back. A ``RewardConfig`` object in
``env_kwargs`` trains, but is saved as a plain dict, which the env does not accept when
the config is loaded again (resume); a ``reward_fn=`` callable cannot be saved at all.
Both are for Python users who build their env themselves
(``SearchQAEnv(reward=RewardConfig(...))`` / ``SearchQAEnv(reward_fn=...)``).

    nice -n 10 python benchmarks/bench_reward_components.py --sft-steps 300 --steps 12
    python benchmarks/bench_reward_components.py --quick          # a smoke test

Writes ``benchmarks/results/reward_components.json`` and ``.md`` (``--name`` changes it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS_DIR, rebuild_table, save_results, tiny_recipe_base  # noqa: E402

CURVES = ("reward", "em", "searches", "rc_format_valid", "rc_retrieval_hit", "rc_answered")
"""Per-step training metrics kept as curves in the JSON (and shown first/last in the md)."""


def run_numbers(run_dir: Path) -> dict[str, Any]:
    """The per-step curves and the last held-out evaluation of a run's ``metrics.jsonl``."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r.get("step", 0) > 0 and "reward" in r]
    names = sorted({k for r in steps for k in r if k.startswith("rc_")})
    curves = {k: [r.get(k) for r in steps] for k in ("reward", "em", "searches", *names)}
    evals = [r for r in records if "eval_em" in r]
    return {
        "curves": curves,
        "eval_first": {k: v for k, v in evals[0].items() if k.startswith("eval_")},
        "eval_last": {k: v for k, v in evals[-1].items() if k.startswith("eval_")},
        "step_times": [r.get("step_time") for r in steps],
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def markdown(results: dict[str, Any]) -> str:
    """The results as markdown: the summary table, the rc_* means, the settings line."""
    lines = [
        "| reward | steps | held-out EM before → after | held-out reward before → after "
        "| held-out searches before → after | held-out format_valid before → after "
        "| train reward (first → last step) | train EM (mean) | train searches (mean) "
        "| train retrieval_hit (mean) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        c, n, e0, e1 = r["curves"], r["eval_questions"], r["eval_first"], r["eval_last"]

        def both(key: str, e0: dict = e0, e1: dict = e1) -> str:
            nan = float("nan")
            return f"{e0.get(key, nan):.3f} → {e1.get(key, nan):.3f}"

        lines.append(
            f"| `{r['reward']}` | {r['steps']} | {r['em_before']:.3f} → **{r['em_after']:.3f}** "
            f"({round(r['em_after'] * n)}/{n}) | {both('eval_reward')} | {both('eval_searches')} "
            f"| {both('eval_rc_format_valid')} | {c['reward'][0]:.3f} → {c['reward'][-1]:.3f} "
            f"| {_mean(c['em']):.3f} | {_mean(c['searches']):.2f} "
            f"| {_mean(c.get('rc_retrieval_hit', [])):.3f} |"
        )
    lines += ["", "Per-step training curves (mean over the step's episodes):", ""]
    for r in results["rows"]:
        lines.append(f"- `{r['reward']}`:")
        for k, v in r["curves"].items():
            lines.append(f"  - {k}: " + " ".join(f"{x:.2f}" for x in v))
    s = results["settings"]
    lines += [
        "",
        f"Same warm start ({s['sft_steps']} SFT steps, held-out EM {s['sft_em']:.3f}, "
        f"{s['sft_seconds']:.0f} s), same seed {s['seed']}, {s['num_envs']} episodes a step "
        f"({s['num_envs'] // s['group_size']} questions x {s['group_size']}), {s['steps']} "
        f"GRPO steps each, {s['eval_questions']} held-out questions, {s['threads']} torch "
        f"thread; torch {s['torch']}. {s['note']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import torch

    from agents.cli_args import add_set_argument
    from agents.config import apply_overrides
    from agents.grpo import train_grpo
    from agents.recipe import warm_start

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-reward-components", help="run directories")
    parser.add_argument("--sft-steps", type=int, default=600)
    parser.add_argument("--steps", type=int, default=20, help="GRPO steps of each run")
    parser.add_argument(
        "--reward", default="search_r1_format", help="the shaped reward kind (a RewardConfig kind)"
    )
    parser.add_argument("--quick", action="store_true", help="the recipe's --quick sizes")
    parser.add_argument("--name", default="reward_components", help="results file name")
    parser.add_argument("--note", default="", help="a sentence for the table (e.g. machine load)")
    parser.add_argument(
        "--rebuild", action="store_true", help="only rewrite the .md from the saved .json"
    )
    add_set_argument(parser, "rollout.eval_questions=100")
    args = parser.parse_args(argv)
    if args.rebuild:
        return rebuild_table(args.name, args.note, markdown)
    base, overrides, out = tiny_recipe_base(args)

    started = time.perf_counter()
    sft = warm_start(base, out)  # once; both runs start from sft["model_dir"]
    sft_seconds = time.perf_counter() - started

    rows = []
    for kind in ("em", args.reward):
        cfg = apply_overrides(
            base,
            {
                "model.path": sft["model_dir"],
                "sft.steps": 0,
                "out_dir": str(out / kind),
                "rollout.env_kwargs.reward": kind,
            },
        )
        t0 = time.perf_counter()
        summary = train_grpo(cfg, overwrite=True)
        wall = time.perf_counter() - t0
        nums = run_numbers(out / kind)
        rows.append(
            {
                "reward": kind,
                "steps": base.steps,
                "em_before": summary["eval_em_start"],
                "em_after": summary["eval_em_end"],
                "eval_questions": int(summary["eval_questions"]),
                "rl_wall_s": wall,
                **nums,
            }
        )
    r = base.rollout
    results: dict[str, Any] = {
        "rows": rows,
        "settings": {
            "sft_steps": base.sft.steps,
            "sft_em": sft["test_em"],
            "sft_seconds": sft_seconds,
            "seed": base.seed,
            "num_envs": r.num_envs,
            "group_size": r.group_size,
            "steps": base.steps,
            "eval_questions": rows[0]["eval_questions"],
            "threads": base.threads,
            "torch": torch.__version__,
            "note": args.note,
            "overrides": overrides,
        },
        "sft": sft,
    }
    save_results(args.name, results)
    text = markdown(results)
    (RESULTS_DIR / f"{args.name}.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
