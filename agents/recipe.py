"""The ``tiny-cpu`` recipe, end to end: SFT warm start, then GRPO, GRPO without the loss
mask, and PPO, all from the same warm-started model, measured on held-out test questions.

Run it with ``search-env recipe`` or ``python -m agents.recipe`` (on 2 CPU cores: the
SFT warm start about 7 minutes, each RL run 2-3; ``--runs grpo`` for one RL run);
``--quick`` shrinks everything to a smoke test. Results go to ``{out}/recipe.json`` (with
the package versions, git commit, threads and wall times they were measured with) and
``{out}/recipe.md`` (the README's table); with ``--results``, the JSON also goes to a
benchmark file (``benchmarks/results/tiny_cpu_recipe.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.config import TINY_WORLD, TrainConfig, apply_overrides, tiny_cpu, to_dict
from agents.evaluation.greedy import evaluate_greedy
from agents.model import load_model
from agents.provenance import provenance
from agents.rollout import make_env
from agents.seeding import seed_everything
from agents.sft import train_sft, warm_start_data

logger = logging.getLogger(__name__)

QUICK = {
    "steps": 2,
    "eval_every": 0,
    "model.hidden_size": 32,
    "model.intermediate": 64,
    "model.layers": 1,
    **TINY_WORLD,
    "rollout.num_envs": 8,
    "rollout.eval_questions": 8,
    "rollout.eval_num_envs": 8,
    "grpo.minibatch_size": 8,
    "ppo.minibatch_size": 8,
    "sft.steps": 2,
    "sft.lm_steps": 1,
}
"""Overrides that turn the recipe into a seconds-long smoke test. The preset's
``checkpoint_every`` is kept: the last step is always checkpointed, so ``search-env eval
--model {out}/grpo`` works on a quick run too."""


def warm_start(cfg: TrainConfig, out_dir: Path) -> dict[str, Any]:
    """SFT the tiny model on oracle trajectories, evaluate it, save it as a model directory."""
    from agents.policy import HFPolicy
    from agents.tiny_model import save_tiny_model

    start = time.perf_counter()
    seed_everything(cfg.seed)
    r = cfg.rollout
    train_env = make_env(r, "train", r.num_envs)
    eval_env = make_env(r, r.eval_split, r.eval_num_envs)
    tok = train_env.envs[0].tokenizer
    model, _ = load_model(cfg.model, tok)
    data, classes = warm_start_data(train_env, cfg.sft, tok, cfg.seed)
    records = train_sft(
        model, data, cfg.sft, tok.pad_token_id, seed=cfg.seed, progress=True, name_classes=classes
    )
    sft_seconds = time.perf_counter() - start
    n_eval = len(eval_env.dataset) if r.eval_questions is None else r.eval_questions
    questions = range(min(n_eval, len(eval_env.dataset)))
    stats = evaluate_greedy(
        HFPolicy(model, tok, seed=cfg.seed), eval_env, questions, r.max_new_tokens
    )
    path = save_tiny_model(model, tok, out_dir / "sft_model")
    train_env.close()
    eval_env.close()
    return {
        "model_dir": str(path),
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": cfg.sft.steps,
        "trajectories": len(data),
        "demo_train_em": float(np.mean([t.reward for t in data])),
        "demo_searches": float(np.mean([t.searches for t in data])),
        "final_loss": records[-1]["sft_loss"],
        "seconds": sft_seconds,
        "test_questions": len(questions),
        "test_em": stats["eval_em"],
        "test_searches": stats["eval_searches"],
        "test_answered": stats["eval_answered"],
    }


RUNS: dict[str, dict[str, Any]] = {
    "grpo": {"algo": "grpo"},
    "grpo_no_mask": {"algo": "grpo", "grpo.mask_env_tokens": False},
    "ppo": {"algo": "ppo"},
}
"""The RL runs of the recipe, each from the same warm start."""

LABELS = {"grpo": "GRPO", "grpo_no_mask": "GRPO without the loss mask", "ppo": "PPO"}
"""A run's name in the results table."""


def check_runs(runs: Sequence[str]) -> list[str]:
    """``runs`` as a list, after checking each is a name of :data:`RUNS`.

    Raises:
        ValueError: a name is unknown (the message lists the known ones) or given twice,
            or none is given.
    """
    runs = list(runs)
    unknown = [name for name in runs if name not in RUNS]
    if unknown:
        raise ValueError(
            f"unknown recipe run(s) {', '.join(map(repr, unknown))}; choose from {', '.join(RUNS)}"
        )
    if not runs:
        raise ValueError(f"no recipe run given; choose from {', '.join(RUNS)}")
    twice = sorted({name for name in runs if runs.count(name) > 1})
    if twice:  # the second would overwrite the first's run directory
        raise ValueError(f"recipe run(s) given twice: {', '.join(twice)}")
    return runs


def eval_curve(run_dir: str | Path) -> list[dict[str, float]]:
    """The held-out evaluations of a run's ``metrics.jsonl``: step, EM, searches."""
    curve = []
    for line in (Path(run_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "eval_em" in record:
            curve.append(
                {
                    "step": record["step"],
                    "test_em": record["eval_em"],
                    "test_searches": record["eval_searches"],
                }
            )
    return curve


def run_recipe(
    out_dir: str | Path = "runs/tiny-cpu-recipe",
    overrides: dict[str, Any] | None = None,
    runs: Sequence[str] = tuple(RUNS),
    results_path: str | Path | None = None,
) -> dict[str, Any]:
    """SFT once, then each RL run of ``runs`` from the SFT model; returns all numbers.

    Writes ``{out_dir}/recipe.json`` (the returned results) and ``{out_dir}/recipe.md``
    (:func:`results_table`).

    Args:
        out_dir: parent directory of the SFT model and one run directory per RL run.
        overrides: dotted-key overrides of the ``tiny-cpu`` preset (e.g. :data:`QUICK`).
        runs: names from :data:`RUNS`.
        results_path: also write the results JSON there.

    Raises:
        ValueError: an unknown run name or config key (before anything is written).
    """
    started = time.perf_counter()
    runs = check_runs(runs)
    base = apply_overrides(tiny_cpu(), dict(overrides or {}))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if base.threads:
        torch.set_num_threads(base.threads)
    sft = warm_start(base, out)
    wall = {"sft": time.perf_counter() - started}
    logger.info("SFT: test EM %.3f after %.0f s", sft["test_em"], sft["seconds"])
    results: dict[str, Any] = {
        "recipe": "tiny-cpu",
        "machine": provenance(),
        "config": to_dict(base),
        "sft": sft,
        "runs": {},
        "wall_seconds": wall,
    }
    for name in runs:
        cfg = apply_overrides(
            base,
            {
                **RUNS[name],
                "model.path": sft["model_dir"],
                "sft.steps": 0,
                "out_dir": str(out / name),
            },
        )
        if cfg.algo == "grpo":
            from agents.grpo import train_grpo as train
        else:
            from agents.ppo import train_ppo as train
        run_started = time.perf_counter()
        summary = train(cfg, overwrite=True)  # a rerun of the recipe replaces its runs
        wall[name] = time.perf_counter() - run_started
        results["runs"][name] = {
            "overrides": RUNS[name],
            "steps": cfg.steps,
            "test_questions": summary.get("eval_questions"),
            "test_em_start": summary.get("eval_em_start"),
            "test_em_end": summary.get("eval_em_end"),
            "test_em_best": summary.get("eval_em_best"),
            "test_searches_start": summary.get("eval_searches_start"),
            "test_searches_end": summary.get("eval_searches_end"),
            "rl_seconds": summary["wall_seconds"],
            "sft_plus_rl_seconds": summary["wall_seconds"] + sft["seconds"],
            "run_dir": summary["run_dir"],
            "curves_png": summary.get("curves_png"),
            "test_curve": eval_curve(summary["run_dir"]),
        }
        logger.info(
            "%s: test EM %.3f -> %.3f in %.0f s",
            name,
            summary.get("eval_em_start", 0),
            summary.get("eval_em_end", 0),
            summary["wall_seconds"],
        )
    wall["total"] = time.perf_counter() - started
    text = json.dumps(results, indent=2) + "\n"
    (out / "recipe.json").write_text(text)
    (out / "recipe.md").write_text(f"{results_table(results)}\n\n{provenance_line(results)}\n")
    if results_path is not None:
        Path(results_path).parent.mkdir(parents=True, exist_ok=True)
        Path(results_path).write_text(text)
    return results


# ------------------------------------------------------------------ the table
def _em(value: float, n: int | None, bold: bool = False) -> str:
    """``0.146 (30/205)``; bold the number, not the count."""
    text = f"**{value:.3f}**" if bold else f"{value:.3f}"
    return f"{text} ({round(value * n)}/{n})" if n else text


def _peak(run: dict[str, Any]) -> dict[str, float] | None:
    """The best evaluation of a run that then lost more than half of what it had gained
    over the start (a collapse, worth a column entry of its own); else None."""
    curve = run.get("test_curve") or []
    if len(curve) < 3:
        return None
    best = max(curve[1:-1], key=lambda point: point["test_em"])
    start, end = curve[0]["test_em"], curve[-1]["test_em"]
    gain = best["test_em"] - start
    return best if gain > 0 and best["test_em"] - end > gain / 2 else None


def results_table(results: dict[str, Any]) -> str:
    """The README's markdown table of a recipe's results: one row for the SFT warm start,
    one per RL run (held-out EM start → [peak →] end, searches per episode, wall time)."""
    sft = results["sft"]
    rows = [
        "| run | held-out EM start → end | searches/episode | wall time |",
        "|---|---|---|---|",
        (
            f"| SFT warm start | {_em(sft['test_em'], sft.get('test_questions'))} "
            f"| {sft['test_searches']:.2f} | {sft['seconds']:.0f} s |"
        ),
    ]
    for name, run in results["runs"].items():
        n = run.get("test_questions")
        if run.get("test_em_end") is None:  # no evaluation (e.g. steps=0 with eval_every=0)
            rows.append(
                f"| {LABELS.get(name, name)}, {run['steps']} steps | n/a | n/a "
                f"| {run['rl_seconds']:.0f} s |"
            )
            continue
        em = [f"{run['test_em_start']:.3f}"]
        searches = [f"{run['test_searches_start']:.2f}"]
        peak = _peak(run)
        if peak is not None:
            em.append(f"{peak['test_em']:.3f} at step {peak['step']}")
            searches.append(f"{peak['test_searches']:.2f}")
        em.append(_em(run["test_em_end"], n, bold=True))
        searches.append(f"{run['test_searches_end']:.2f}")
        rows.append(
            f"| {LABELS.get(name, name)}, {run['steps']} steps | {' → '.join(em)} "
            f"| {' → '.join(searches)} | {run['rl_seconds']:.0f} s |"
        )
    return "\n".join(rows)


def provenance_line(results: dict[str, Any]) -> str:
    """One line naming the commit, torch, threads and total wall time of a recipe run."""
    machine = results.get("machine", {})
    git = machine.get("git") or {}
    commit = git.get("commit")
    where = (
        "not a git checkout"
        if commit is None
        else (f"commit {commit[:10]}" + (" (uncommitted changes)" if git.get("dirty") else ""))
    )
    torch_version = (machine.get("packages") or {}).get("torch")
    total = results.get("wall_seconds", {}).get("total")
    parts = [where, f"torch {torch_version}", f"{machine.get('torch_threads')} torch thread(s)"]
    if total is not None:
        parts.append(f"{total / 60:.1f} min in all")
    return ", ".join(parts)


# ------------------------------------------------------------------ the CLI
DESCRIPTION = """\
The tiny-cpu recipe, end to end, with no pretrained weights: a 1.1M-parameter Qwen2 is
warm-started by SFT on a synthetic world's oracle demonstrations (half of them answer
closed-book, wrongly), then trained from that warm start by each RL run named in --runs
(GRPO; GRPO without the retrieved-token loss mask; PPO), each evaluated greedily on the
held-out test questions. About 15 minutes on 2 CPU cores; --quick is a smoke test of a
minute.

Writes OUT/sft_model (a Hugging Face model directory), one run directory per RL run
(metrics.jsonl/.csv, curves.png, checkpoints: `search-env eval --model OUT/grpo`),
OUT/recipe.json (every number, package versions, git commit, threads, wall times) and
OUT/recipe.md (the results table, also printed at the end)."""


def parse_runs(text: str) -> list[str]:
    """``--runs``: comma-separated names of :data:`RUNS` (argparse reports the error)."""
    try:
        return check_runs([name.strip() for name in text.split(",") if name.strip()])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """The ``search-env recipe`` argument parser."""
    from agents.cli_args import add_set_argument

    parser = argparse.ArgumentParser(
        prog="search-env recipe",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out", default="runs/tiny-cpu-recipe", help="output directory (default: %(default)s)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: tiny world and model, 2 SFT and 2 RL steps",
    )
    parser.add_argument(
        "--runs",
        type=parse_runs,
        default=list(RUNS),
        metavar="NAME[,NAME]",
        help=f"comma-separated RL runs, from: {', '.join(RUNS)} (default: all)",
    )
    parser.add_argument("--results", default=None, help="also write the results JSON here")
    add_set_argument(parser, "seed=1")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="DEBUG log lines too (default: INFO)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """``search-env recipe`` = ``python -m agents.recipe``; see :data:`DESCRIPTION`."""
    from agents.cli_args import overrides_from_args
    from search_env.logs import configure_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    overrides: dict[str, Any] = dict(QUICK) if args.quick else {}
    try:
        overrides.update(overrides_from_args(args, TrainConfig))
        apply_overrides(tiny_cpu(), overrides)  # a bad key fails here, before any work
    except ValueError as exc:
        parser.error(str(exc))
    results = run_recipe(args.out, overrides, args.runs, args.results)
    out = Path(args.out)
    print(results_table(results))
    print(f"\n{provenance_line(results)}")
    print(
        f"wrote {out / 'recipe.json'} and {out / 'recipe.md'}"
        + (f" (and {args.results})" if args.results else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
