"""``search-env train --backend trl``: the tiny recipe's GRPO with TRL's ``GRPOTrainer``.

The same config as the native trainer (``--preset`` / ``--config`` / ``--set``), mapped
onto a ``GRPOConfig`` by :func:`grpo_args`; the same SFT warm start (the recipe's
:func:`agents.recipe.warm_start`, i.e. :mod:`agents.sft`), or ``--init-model DIR`` to
start from an already warm-started model directory (so that a native run and a TRL run
start from the very same weights); episodes played by :mod:`agents.trl.rollout` on the
chunk-mode vector env; held-out EM measured before and after with this package's greedy
evaluation (:func:`agents.evaluation.greedy.evaluate_greedy`)::

    search-env train --backend trl --preset tiny-cpu --steps 2 --out runs/trl
    python -m agents.trl.train --init-model runs/tiny-cpu-recipe/sft_model --out runs/trl

One native step (``num_envs`` episodes, ``num_envs / group_size`` questions, one
optimizer step per mini-batch) is one TRL generation batch: ``per_device_train_batch_size
= minibatch_size``, ``steps_per_generation = num_envs / minibatch_size``,
``num_iterations = epochs``, ``num_generations = group_size``. The run directory gets
``config.json``, ``metrics.jsonl`` (TRL's log, one record per optimizer step, plus the
step time and the rollout's token counts), ``summary.json`` and ``final_model/``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.cli_args import add_config_arguments, add_set_argument, base_config, overrides_from_args
from agents.config import PRESETS, TrainConfig, apply_overrides, load_config, preset, to_dict
from agents.trl.deps import require_trl
from search_env.logs import configure_logging

logger = logging.getLogger(__name__)

LOSS_TYPES = {"token-mean": "dapo", "seq-mean-token-mean": "grpo"}
"""``grpo.loss_agg`` -> TRL's ``loss_type`` with the same reduction (``dapo``: one mean
over every loss token of the batch; ``grpo``: per-sequence means, then their mean)."""


def grpo_args(cfg: TrainConfig, **extra: Any) -> Any:
    """TRL's ``GRPOConfig`` for a native GRPO config (see the module docstring).

    Raises:
        ValueError: a setting TRL cannot reproduce: PPO, a KL estimator other than k3
            (``low_var_kl``), a loss reduction without a TRL equivalent, or a mini-batch
            that does not divide the batch.
    """
    from trl import GRPOConfig

    from agents.model import resolve_device

    g, r = cfg.grpo, cfg.rollout
    if cfg.algo != "grpo":
        raise ValueError("--backend trl trains GRPO only (TRL has no multi-turn PPO with a critic)")
    if g.kl_coef and g.kl_kind != "low_var_kl":
        raise ValueError(f"TRL's KL term is the k3 estimator (low_var_kl), not {g.kl_kind!r}")
    if g.loss_agg not in LOSS_TYPES:
        raise ValueError(
            f"grpo.loss_agg {g.loss_agg!r} has no TRL loss_type; use {list(LOSS_TYPES)}"
        )
    if r.num_envs % g.minibatch_size:
        raise ValueError(
            f"grpo.minibatch_size ({g.minibatch_size}) must divide rollout.num_envs ({r.num_envs})"
        )
    per_generation = r.num_envs // g.minibatch_size
    max_steps = cfg.steps * per_generation * g.epochs
    kwargs: dict[str, Any] = {
        "output_dir": cfg.out_dir,
        "use_cpu": resolve_device(cfg.model.device).type == "cpu",
        "report_to": [],
        "max_steps": max_steps,
        "per_device_train_batch_size": g.minibatch_size,
        "gradient_accumulation_steps": 1,
        "steps_per_generation": per_generation,
        "num_iterations": g.epochs,
        "num_generations": r.group_size,
        "learning_rate": g.lr,
        "weight_decay": g.weight_decay,
        "lr_scheduler_type": "constant_with_warmup",
        "warmup_steps": int(g.warmup_ratio * max_steps),
        "max_grad_norm": g.grad_clip,
        "beta": g.kl_coef,
        "epsilon": g.clip,
        "epsilon_high": g.clip_high,
        "loss_type": LOSS_TYPES[g.loss_agg],
        "scale_rewards": "group" if g.normalize_std else "none",
        "entropy_coef": g.entropy_coef,
        "temperature": r.temperature,
        "top_p": 1.0,
        "top_k": 0,
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": cfg.seed,
        "disable_dropout": True,
        "bf16": cfg.model.dtype == "bfloat16",
        "dataloader_num_workers": 0,
    }
    kwargs.update(vllm_args(cfg))
    kwargs.update(extra)
    return GRPOConfig(**kwargs)


def vllm_args(cfg: TrainConfig) -> dict[str, Any]:
    """The ``GRPOConfig`` fields of ``rollout.backend`` (``vllm``: TRL's colocated engine).

    ``rollout.tis_cap`` maps onto TRL's token-level truncated importance sampling
    (``vllm_importance_sampling_mode="token_truncate"``, ``clip_max=tis_cap``), as the
    native trainer's; ``None`` turns TRL's correction off.
    """
    r = cfg.rollout
    if r.backend != "vllm":
        return {"use_vllm": False}
    return {
        "use_vllm": True,
        "vllm_mode": "colocate",
        "vllm_gpu_memory_utilization": r.vllm_gpu_memory_utilization,
        "vllm_importance_sampling_correction": r.tis_cap is not None,
        "vllm_importance_sampling_mode": "token_truncate",
        "vllm_importance_sampling_clip_max": r.tis_cap,
    }


@dataclass
class StepTimes:
    """A ``TrainerCallback`` body: wall time of every optimizer step (generation included)."""

    seconds: list[float] = field(default_factory=list)
    _start: float = 0.0

    def callback(self) -> Any:
        """The ``transformers.TrainerCallback`` that fills :attr:`seconds`."""
        from transformers import TrainerCallback

        times = self

        class _Timer(TrainerCallback):
            def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                times._start = time.perf_counter()

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                times.seconds.append(time.perf_counter() - times._start)

        return _Timer()


def warm_start_model(cfg: TrainConfig, out_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The model directory RL starts from, and the warm start's numbers.

    ``model.path="tiny"``: the recipe's SFT warm start (:func:`agents.recipe.warm_start`,
    saved to ``out_dir/sft_model``), or with ``sft.steps=0`` the random-init tiny model
    saved there. Any other path is used as it is (``sft.steps`` must then be 0).
    """
    from agents.recipe import warm_start
    from agents.rollout import make_env
    from agents.seeding import seed_everything
    from agents.tiny_model import make_tiny_qwen2, save_tiny_model

    if cfg.model.path != "tiny":
        if cfg.sft.steps:
            raise ValueError(
                "--backend trl warm-starts the tiny model only: set sft.steps=0 for "
                f"model.path={cfg.model.path!r} (or warm-start it first, then --init-model)"
            )
        return Path(cfg.model.path), {}
    if cfg.sft.steps > 0:
        sft = warm_start(cfg, out_dir)
        return Path(sft["model_dir"]), sft
    seed_everything(cfg.seed)
    env = make_env(cfg.rollout, "train", 1)
    tok = env.envs[0].tokenizer
    m = cfg.model
    model = make_tiny_qwen2(
        tok,
        hidden_size=m.hidden_size,
        layers=m.layers,
        heads=m.heads,
        kv_heads=m.kv_heads,
        intermediate=m.intermediate,
        max_positions=m.max_positions,
        seed=m.init_seed,
    )
    env.close()
    return save_tiny_model(model, tok, out_dir / "sft_model"), {}


@dataclass
class TRLRun:
    """What :func:`train_trl` built and measured."""

    summary: dict[str, Any]
    trainer: Any
    rollout: Any
    init_model: Path


def train_trl(
    cfg: TrainConfig,
    init_model: str | Path | None = None,
    overwrite: bool = False,
    *,
    policy_factory: Callable[[Any], Any] | None = None,
    keep_outputs: bool = False,
) -> TRLRun:
    """Warm start (or ``init_model``), GRPO with TRL's trainer, greedy held-out EM before and after.

    Args:
        cfg: the run's config (see :func:`grpo_args` for what maps onto TRL's).
        init_model: start from this model directory instead of warm-starting.
        overwrite: replace a run in a non-empty ``cfg.out_dir``.
        policy_factory: ``train vector env -> Policy`` that samples the training episodes
            instead of the model (tests: a scripted policy with reward variance).
        keep_outputs: keep every rollout output (``TRLRun.rollout.outputs``).

    Raises:
        FileExistsError: ``cfg.out_dir`` is not empty and ``overwrite`` is False.
        ValueError: a config TRL cannot reproduce (see :func:`grpo_args`).
    """
    require_trl()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is documented here
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from trl import GRPOTrainer

    from agents.evaluation.greedy import evaluate_greedy
    from agents.policy.hf import HFPolicy
    from agents.rollout import make_env
    from agents.run import prepare_run_dir
    from agents.trl.dataset import questions_dataset
    from agents.trl.rollout import SearchR1Rollout, env_reward
    from search_env.files import atomic_write_text
    from search_env.registration import load_tokenizer

    started = time.perf_counter()
    args = check_config(cfg, init_model)  # a bad config fails before any work
    out = Path(cfg.out_dir)
    prepare_run_dir(out, resume=False, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    sft: dict[str, Any] = {}
    if init_model is None:
        model_dir, sft = warm_start_model(cfg, out)
    else:
        model_dir = Path(init_model)
    # As the native trainer does for a model directory: its tokenizer and logits count.
    tokenizer = load_tokenizer(str(model_dir))
    model_config = AutoConfig.from_pretrained(model_dir).get_text_config()
    vocab_size = model_config.vocab_size
    if args.use_vllm:
        _check_vllm(model_config.to_dict())
    r = cfg.rollout
    train_env = make_env(r, "train", r.num_envs, tokenizer, vocab_size)
    eval_env = make_env(r, r.eval_split, r.eval_num_envs, tokenizer, vocab_size)
    n_eval = len(eval_env.dataset) if r.eval_questions is None else r.eval_questions
    eval_indices = list(range(min(n_eval, len(eval_env.dataset))))
    dtype = torch.bfloat16 if cfg.model.dtype == "bfloat16" else torch.float32
    # TRL builds the KL reference from the model's directory (config._name_or_path).
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)

    def evaluate(m: Any) -> dict[str, float]:
        start = time.perf_counter()
        policy = HFPolicy(m, tokenizer, device=next(m.parameters()).device, seed=cfg.seed)
        stats = evaluate_greedy(policy, eval_env, eval_indices, r.max_new_tokens)
        return {**stats, "eval_time": time.perf_counter() - start}

    before = evaluate(model)
    rollout = SearchR1Rollout(
        train_env,
        max_new_tokens=r.max_new_tokens,
        seed=cfg.seed,
        mask_env_tokens=cfg.grpo.mask_env_tokens,
        policy=None if policy_factory is None else policy_factory(train_env),
        keep_outputs=keep_outputs,
    )
    times = StepTimes()
    with _engine_setup(args, cfg):
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[env_reward],
            args=args,
            train_dataset=questions_dataset(train_env),
            processing_class=tokenizer,
            rollout_func=rollout,
            callbacks=[times.callback()],
        )
    atomic_write_text(
        out / "config.json", json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n"
    )
    rl_start = time.perf_counter()
    trainer.train()
    rl_seconds = time.perf_counter() - rl_start
    final = trainer.accelerator.unwrap_model(trainer.model)
    final.eval()
    after = evaluate(final)
    final.save_pretrained(out / "final_model")
    tokenizer.save_pretrained(out / "final_model")

    losses = [rec["loss"] for rec in trainer.state.log_history if "loss" in rec]
    records = [rec for rec in trainer.state.log_history if "loss" in rec]
    for rec, seconds in zip(records, times.seconds):
        rec["step_time"] = seconds
    for record in rollout.history:  # one per generation batch
        records.append({"rollout": dataclasses.asdict(record)})
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(rec) + "\n" for rec in records))
    agent_tokens = sum(rec.agent_tokens for rec in rollout.history)
    summary: dict[str, Any] = {
        "backend": "trl",
        "generation": "vllm-colocate" if args.use_vllm else "hf",
        "trl_version": _version("trl"),
        "steps": cfg.steps,
        "optimizer_steps": int(trainer.state.global_step),
        "run_dir": str(out),
        "init_model": str(model_dir),
        "eval_questions": len(eval_indices),
        "eval_em_start": before["eval_em"],
        "eval_em_end": after["eval_em"],
        "eval_searches_start": before["eval_searches"],
        "eval_searches_end": after["eval_searches"],
        "losses": losses,
        "loss_finite": bool(losses) and all(math.isfinite(x) for x in losses),
        "step_times": times.seconds,
        "agent_tokens": agent_tokens,
        "agent_tokens_per_s": agent_tokens / max(sum(times.seconds), 1e-9),
        "rl_seconds": rl_seconds,
        "wall_seconds": time.perf_counter() - started,
        **{f"sft_{k}": v for k, v in sft.items() if isinstance(v, (int, float))},
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    if args.use_vllm:
        from agents.trl.vllm import shutdown_engine

        shutdown_engine(trainer)
    train_env.close()
    eval_env.close()
    return TRLRun(summary=summary, trainer=trainer, rollout=rollout, init_model=model_dir)


def check_config(cfg: TrainConfig, init_model: str | Path | None = None) -> Any:
    """The run's ``GRPOConfig`` (:func:`grpo_args`), after checking what can be checked
    before any work: with ``rollout.backend=vllm``, that vllm is installed and runs the
    tiny model's head size here.

    Raises:
        ValueError: see :func:`grpo_args`; a head size vLLM's CPU attention lacks.
        ImportError: ``rollout.backend=vllm`` without vllm.
    """
    args = grpo_args(cfg)
    if args.use_vllm and cfg.model.path == "tiny" and init_model is None:
        m = cfg.model
        _check_vllm({"hidden_size": m.hidden_size, "num_attention_heads": m.heads})
    return args


def _check_vllm(model_config: dict[str, Any]) -> None:
    """vllm is installed and runs this model here (vLLM's CPU attention lacks some head sizes)."""
    from agents.policy.vllm import check_vllm_can_run

    check_vllm_can_run(model_config)


def _engine_setup(args: Any, cfg: TrainConfig) -> Any:
    """The block ``GRPOTrainer`` is built in: TRL's colocated vLLM engine set up as this
    package's (:func:`agents.trl.vllm.colocated_engine`), or a no-op block."""
    if not args.use_vllm:
        return contextlib.nullcontext()
    from agents.trl.vllm import colocated_engine, engine_kwargs

    r = cfg.rollout
    return colocated_engine(
        **engine_kwargs(cfg.model.dtype, r.vllm_kv_cache_gb, r.vllm_enforce_eager)
    )


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def build_parser() -> argparse.ArgumentParser:
    """The ``search-env train --backend trl`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="search-env train --backend trl", description=__doc__.splitlines()[0]
    )
    add_config_arguments(parser, PRESETS, default="tiny-cpu")
    parser.add_argument("--env", help="env id (e.g. SearchQA-Synth-v0)")
    parser.add_argument("--model", help="'tiny' (random-init Qwen2) or a hub id / local path")
    parser.add_argument(
        "--init-model",
        help="start RL from this warm-started model directory (no SFT here); e.g. "
        "the recipe's sft_model, so a native and a TRL run share their weights",
    )
    parser.add_argument("--out", help="run directory")
    parser.add_argument("--steps", type=int, help="RL steps (generation batches)")
    parser.add_argument("--seed", type=int, help="run seed")
    parser.add_argument("--no-mask", action="store_true", help="the masking ablation")
    parser.add_argument("--overwrite", action="store_true", help="replace a run in --out")
    add_set_argument(parser, "grpo.lr=1e-4")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The resolved config of a command line (preset, then ``--set``, then the flags)."""
    cfg = base_config(args, load_config, preset, default="tiny-cpu")
    overrides = overrides_from_args(
        args,
        TrainConfig,
        (
            ("env", "rollout.env_id"),
            ("model", "model.path"),
            ("out", "out_dir"),
            ("steps", "steps"),
            ("seed", "seed"),
        ),
    )
    if args.no_mask:
        overrides["grpo.mask_env_tokens"] = False
    return apply_overrides(cfg, overrides)


def main(argv: list[str] | None = None) -> int:
    """``search-env train --backend trl`` = ``python -m agents.trl.train``."""
    configure_logging(logging.INFO)
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        check_config(cfg, args.init_model)  # a config TRL cannot reproduce fails here
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        run = train_trl(cfg, init_model=args.init_model, overwrite=bool(args.overwrite))
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = {k: v for k, v in run.summary.items() if k not in ("losses", "step_times")}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
