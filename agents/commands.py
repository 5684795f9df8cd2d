"""The agents' commands of ``search-env``: ``train``, ``recipe``, ``plan`` and ``eval --model``.

The env layer's command line (:mod:`search_env.cli`) finds them through the
``search_env.commands`` entry points declared in pyproject.toml; each function below takes
its :class:`~search_env.cli.CommandLine` and adds one command. Importing this module is
light: the trainers, the recipe and torch load only when their command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from search_env.cli import CommandLine

TRAIN_BACKENDS = {
    "rllib": "agents.rllib.train",
    "sb3": "agents.sb3.train",
    "trl": "agents.trl.train",
}
"""``search-env train --backend NAME``: the module whose ``main(argv)`` trains."""


def train(cli: CommandLine) -> None:
    """``search-env train``: native GRPO/PPO, or ``--backend rllib|sb3``."""
    from agents.train import add_train_arguments, run_train

    parser = cli.add_command(
        "train",
        help="train an LLM policy with GRPO or PPO (agents package)",
        before_parse=_train_backend,
    )
    add_train_arguments(parser)
    parser.add_argument(
        "--backend",
        choices=["native", *TRAIN_BACKENDS],
        default="native",
        help="native: this package's GRPO/PPO; rllib / sb3: every other option "
        "goes to `python -m agents.rllib.train` / `agents.sb3.train` (see "
        "their --help)",
    )
    parser.set_defaults(func=_needs_torch(run_train))


def plan(cli: CommandLine) -> None:
    """``search-env plan``: the memory plan of a preset or config per GPU (agents.plan)."""
    from agents.plan.command import add_plan_arguments, run_plan

    parser = cli.add_command(
        "plan",
        help="memory plan per GPU of a preset or config (parameters, gradients, optimizer, "
        "activations, logits, reference, critic, vLLM) against the GPU's memory",
    )
    add_plan_arguments(parser)
    parser.set_defaults(func=_needs_torch(run_plan))


def recipe(cli: CommandLine) -> None:
    """``search-env recipe``: every argument goes to ``agents.recipe`` (its own parser)."""
    cli.add_command(
        "recipe",
        add_help=False,
        help="the tiny-cpu recipe: SFT warm start, then GRPO, GRPO without the loss mask and "
        "PPO on the offline world (`python -m agents.recipe`; see `recipe --help`)",
        before_parse=lambda rest: _run_main("agents.recipe", rest),
    )


def eval_model(cli: CommandLine) -> None:
    """``search-env eval --model``: a model and baselines instead of the scripted agents."""
    parser = cli.extend_eval(_eval_model)
    arg = parser.add_argument_group("a model (agents package)").add_argument
    arg(
        "--model",
        default=None,
        help="a Hugging Face model directory, a `search-env train` run directory or one of its "
        "checkpoints: greedy evaluation on the search protocol (needs torch; results in "
        "runs/eval-model.json unless --out)",
    )
    arg(
        "--baselines",
        default="",
        help="with --model, also run these, comma-separated: direct (no search), "
        "rag (retrieve on the question), oracle (scripted; Synth only)",
    )
    arg(
        "--max-new-tokens",
        type=int,
        default=None,
        help="--model: one turn's token budget (default: the run's, else the protocol's)",
    )
    arg("--device", default="auto", help="--model: auto, cpu or cuda")
    arg(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16"),
        help="--model: parameter dtype (auto: bfloat16 on CUDA, else float32)",
    )
    arg("--threads", type=int, default=0, help="--model: torch threads (0: torch's default)")
    arg(
        "--markdown",
        default=None,
        help="--model: markdown tables path (default: the JSON path with .md; '' to skip)",
    )


def _train_backend(rest: list[str]) -> int | None:
    """``train ... --backend rllib|sb3 ...``: that trainer's ``main`` gets the other
    arguments; None for the native trainer (or a bad name, which the parser reports)."""
    for i, arg in enumerate(rest):
        if arg == "--backend" and i + 1 < len(rest):
            name, drop = rest[i + 1], 2
        elif arg.startswith("--backend="):
            name, drop = arg.partition("=")[2], 1
        else:
            continue
        if name in TRAIN_BACKENDS:
            return _run_main(TRAIN_BACKENDS[name], rest[:i] + rest[i + drop :])
        return None
    return None


def _run_main(module: str, argv: list[str]) -> int:
    """``module.main(argv)``; 2 with a one-line hint when ``module`` cannot be imported."""
    try:
        entry = importlib.import_module(module).main
    except ImportError as exc:
        print(
            f"error: {module} needs a missing package ({exc}); the recipe and native "
            "training need 'search-env[torch]' (on a CPU-only machine: pip install "
            "torch==2.13.0 first)",
            file=sys.stderr,
        )
        return 2
    return int(entry(argv))


def _needs_torch(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            import torch  # noqa: F401
        except ImportError:
            print(
                "error: training needs torch: pip install 'search-env[torch]' "
                "(on a CPU-only machine: pip install torch==2.13.0)",
                file=sys.stderr,
            )
            return 2
        return func(args)

    return run


def _eval_model(
    args: argparse.Namespace, env_ids: list[str], env_args: dict[str, Any]
) -> int | None:
    """``eval --model``: the model on the search protocol plus the requested baselines
    (None without ``--model``: the scripted agents run)."""
    if not args.model:
        if args.baselines:
            print("error: --baselines needs --model (scripted agents: --agents)", file=sys.stderr)
            return 2
        return None
    try:
        import torch
    except ImportError:
        print(
            "error: evaluating a model needs torch: pip install 'search-env[torch]'",
            file=sys.stderr,
        )
        return 2
    from agents.evaluation import EvalSetupError, evaluate_model, parse_methods

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        baselines = parse_methods(args.baselines)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        report = evaluate_model(
            args.model,
            env_ids,
            baselines=baselines,
            limit=args.limit,
            num_envs=args.num_envs,
            split=args.split,
            size=args.size,
            qa_dir=args.qa_dir,
            retriever=args.retriever,
            env_kwargs=env_args,
            max_new_tokens=args.max_new_tokens,
            device=args.device,
            dtype=args.dtype,
            progress=not args.quiet,
        )
    except (EvalSetupError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print()
    print(report.markdown_table("em"))
    print(report.avg_note())
    out = "runs/eval-model.json" if args.out is None else args.out
    markdown = args.markdown
    if markdown is None:
        markdown = str(Path(out).with_suffix(".md")) if out else ""
    report.save(out or None, markdown or None)
    for path in (out, markdown):
        if path:
            print(f"wrote {path}")
    return 0
