"""``search-env train`` / ``python -m agents.train``: GRPO or PPO from a preset or config file.

Examples::

    python -m agents.train --preset tiny-cpu --algo grpo --out runs/grpo
    python -m agents.train --preset tiny-cpu --algo grpo --no-mask --out runs/grpo-nomask
    python -m agents.train --config runs/grpo/config.json --resume
    python -m agents.train --preset tiny-cpu --out runs/grpo --overwrite   # replace that run
    python -m agents.train --preset tiny-cpu --set grpo.lr=1e-3 --set rollout.eval_questions=50
    python -m agents.train --preset tiny-cpu --set rollout.num_envs=16 --set grpo.minibatch_size=16
    torchrun --standalone --nproc-per-node 2 -m agents.train --preset tiny-cpu --out runs/dist

Under ``torchrun`` every rank runs this command: data-parallel with FSDP2 (see
``docs/distributed.md``); rank 0 alone prints the summary and writes the run's files.

Precedence: preset (or ``--config``), then ``--set`` overrides, then the dedicated flags.
Every value is checked against its field's type, and the config as a whole, before any
work (a bad one exits with status 2).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from agents.cli_args import add_config_arguments, add_set_argument, base_config, overrides_from_args
from agents.config import PRESETS, TrainConfig, apply_overrides, load_config, preset
from search_env.logs import configure_logging


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``train`` options to ``parser`` (for the ``search-env`` CLI to reuse)."""
    parser.add_argument("--algo", choices=("grpo", "ppo"), help="RL algorithm")
    parser.add_argument("--env", help="env id (e.g. SearchQA-Synth-v0)")
    parser.add_argument("--model", help="'tiny' (random-init Qwen2) or a hub id / local path")
    add_config_arguments(parser, PRESETS, default="tiny-cpu")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest intact checkpoint in the run directory",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in a non-empty run directory (without --resume or "
        "--overwrite, a non-empty one is refused)",
    )
    parser.add_argument(
        "--no-plan-check",
        action="store_true",
        help="start even when the memory plan (`search-env plan`) says the config does not fit",
    )
    parser.add_argument("--out", help="run directory")
    parser.add_argument("--steps", type=int, help="RL steps")
    parser.add_argument("--seed", type=int, help="run seed")
    parser.add_argument(
        "--no-mask",
        action="store_true",
        help="train on environment tokens too (the masking ablation)",
    )
    add_set_argument(parser, "grpo.lr=1e-4")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The resolved config of a ``train`` command line."""
    cfg = base_config(args, load_config, preset, default="tiny-cpu")
    overrides = overrides_from_args(
        args,
        TrainConfig,
        (
            ("algo", "algo"),
            ("env", "rollout.env_id"),
            ("model", "model.path"),
            ("out", "out_dir"),
            ("steps", "steps"),
            ("seed", "seed"),
        ),
    )
    if args.no_mask:
        overrides["grpo.mask_env_tokens"] = False
        overrides["ppo.mask_env_tokens"] = False
    return apply_overrides(cfg, overrides)


def run_train(args: argparse.Namespace) -> int:
    """Run the ``train`` command; returns the exit status."""
    try:
        cfg = config_from_args(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.resume and args.overwrite:
        print("error: pass --resume or --overwrite, not both", file=sys.stderr)
        return 2
    if not getattr(args, "no_plan_check", False):  # before any weights load
        from agents.plan import PlanRefusedError, check_config_fits

        try:
            check_config_fits(cfg)
        except PlanRefusedError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    from agents.checkpoint import CorruptCheckpointError
    from agents.distributed import DistributedInitError, MainProcessFilter, init_distributed
    from agents.run import check_distributed

    try:
        # torchrun: join the job (a plain run gets the no-op single-process context)
        ctx = init_distributed()
    except DistributedInitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if ctx.is_distributed:  # W ranks must not log every line W times
            for handler in logging.getLogger().handlers:
                handler.addFilter(MainProcessFilter(ctx))
        try:
            check_distributed(cfg, ctx)  # e.g. a GRPO group across ranks: before any work
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if cfg.algo == "grpo":
            from agents.grpo import train_grpo as train
        else:
            from agents.ppo import train_ppo as train
        kwargs = {"ctx": ctx} if ctx.is_distributed else {}
        try:
            summary = train(cfg, resume=bool(args.resume), overwrite=bool(args.overwrite), **kwargs)
        except (FileExistsError, CorruptCheckpointError) as exc:  # raised before any training
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if ctx.is_main:
            print(json.dumps(summary, indent=2))
        # Every rank done with its collectives (rank 0 exports last) before any rank tears
        # the group down: a rank that exits first can abort the other's gloo threads.
        ctx.barrier()
        return 0
    finally:
        ctx.destroy()


def main(argv: list[str] | None = None) -> int:
    """``python -m agents.train``."""
    configure_logging(logging.INFO)
    parser = add_train_arguments(
        argparse.ArgumentParser(prog="python -m agents.train", description=__doc__.splitlines()[0])
    )
    return run_train(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
