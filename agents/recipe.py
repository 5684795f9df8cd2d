"""The ``tiny-cpu`` recipe, end to end: SFT warm start, then GRPO, GRPO without the loss
mask, and PPO, all from the same warm-started model, measured on held-out test questions.

Run it with ``search-env recipe`` or ``python -m agents.recipe`` (on 2 CPU cores: the
SFT warm start about 7 minutes, each RL run 2-3; ``--runs grpo`` for one RL run);
``--quick`` shrinks everything to a smoke test. Results go to ``{out}/recipe.json`` and,
with ``--results``, to a benchmark JSON (``benchmarks/results/tiny_cpu_recipe.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from agents.common import evaluate_greedy, load_model, make_env, seed_everything
from agents.config import TINY_WORLD, TrainConfig, apply_overrides, tiny_cpu, to_dict
from agents.sft import train_sft, warm_start_data

logger = logging.getLogger(__name__)

QUICK = {
    "steps": 2,
    "eval_every": 0,
    "checkpoint_every": 0,
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
"""Overrides that turn the recipe into a seconds-long smoke test."""


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
    records = train_sft(model, data, cfg.sft, tok.pad_token_id, seed=cfg.seed, progress=True,
                        name_classes=classes)
    sft_seconds = time.perf_counter() - start
    n_eval = len(eval_env.dataset) if r.eval_questions is None else r.eval_questions
    stats = evaluate_greedy(HFPolicy(model, tok, seed=cfg.seed), eval_env,
                            range(min(n_eval, len(eval_env.dataset))), r.max_new_tokens)
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


def run_recipe(
    out_dir: str | Path = "runs/tiny-cpu-recipe",
    overrides: dict[str, Any] | None = None,
    runs: Sequence[str] = tuple(RUNS),
    results_path: str | Path | None = None,
) -> dict[str, Any]:
    """SFT once, then each RL run of ``runs`` from the SFT model; returns all numbers.

    Args:
        out_dir: parent directory of the SFT model and one run directory per RL run.
        overrides: dotted-key overrides of the ``tiny-cpu`` preset (e.g. :data:`QUICK`).
        runs: names from :data:`RUNS`.
        results_path: also write the results JSON there.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = apply_overrides(tiny_cpu(), dict(overrides or {}))
    if base.threads:
        torch.set_num_threads(base.threads)
    sft = warm_start(base, out)
    logger.info("SFT: test EM %.3f after %.0f s", sft["test_em"], sft["seconds"])
    results: dict[str, Any] = {
        "recipe": "tiny-cpu",
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads()},
        "config": to_dict(base),
        "sft": sft,
        "runs": {},
    }
    for name in runs:
        cfg = apply_overrides(base, {**RUNS[name], "model.path": sft["model_dir"],
                                     "sft.steps": 0, "out_dir": str(out / name)})
        if cfg.algo == "grpo":
            from agents.grpo import train_grpo as train
        else:
            from agents.ppo import train_ppo as train
        summary = train(cfg, overwrite=True)  # a rerun of the recipe replaces its runs
        results["runs"][name] = {
            "overrides": RUNS[name],
            "test_em_start": summary.get("eval_em_start"),
            "test_em_end": summary.get("eval_em_end"),
            "test_em_best": summary.get("eval_em_best"),
            "test_searches_start": summary.get("eval_searches_start"),
            "test_searches_end": summary.get("eval_searches_end"),
            "rl_seconds": summary["wall_seconds"],
            "sft_plus_rl_seconds": summary["wall_seconds"] + sft["seconds"],
            "run_dir": summary["run_dir"],
            "curves_png": summary.get("curves_png"),
        }
        logger.info("%s: test EM %.3f -> %.3f in %.0f s", name, summary.get("eval_em_start", 0),
                    summary.get("eval_em_end", 0), summary["wall_seconds"])
    text = json.dumps(results, indent=2) + "\n"
    (out / "recipe.json").write_text(text)
    if results_path is not None:
        Path(results_path).parent.mkdir(parents=True, exist_ok=True)
        Path(results_path).write_text(text)
    return results


def main(argv: list[str] | None = None) -> int:
    """``python -m agents.recipe [--quick] [--out DIR] [--runs grpo,ppo] [--set K=V]``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/tiny-cpu-recipe")
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke test")
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated names")
    parser.add_argument("--results", default=None, help="also write the results JSON here")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = dict(QUICK) if args.quick else {}
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    results = run_recipe(args.out, overrides, [r for r in args.runs.split(",") if r],
                         args.results)
    print(json.dumps({"sft": results["sft"], "runs": results["runs"]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
