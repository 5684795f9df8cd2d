"""Set-up and bookkeeping shared by the GRPO and PPO loops (not the loops themselves).

:func:`setup_run` builds envs, model, tokenizer, the SFT warm start, the frozen
reference policy and the run directory; :class:`Run` then evaluates, logs, checkpoints
and plots, so that ``grpo.py`` and ``ppo.py`` hold only the algorithm.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from agents.checkpoint import (
    CHECKPOINT_DIR,
    atomic_torch_save,
    latest_checkpoint,
    load_checkpoint,
    resume_checkpoint,
    save_checkpoint,
    step_of,
)
from agents.config import TrainConfig, to_dict
from agents.distributed import (
    DistContext,
    gathered,
    load_dist_checkpoint,
    local_num_envs,
    on_main,
    reduce_metrics,
    resume_dist_checkpoint,
    save_dist_checkpoint,
    shard_model,
    shard_range,
    shard_reference,
)
from agents.evaluation.greedy import evaluate_greedy
from agents.metrics import MetricsLogger
from agents.model import frozen_copy, load_model, model_eos_ids
from agents.plots import plot_run
from agents.policy.base import samples_from, sync_weights
from agents.progress import progress_interval
from agents.rollout import make_env
from agents.seeding import seed_everything, step_seed
from search_env.files import atomic_write_text

logger = logging.getLogger(__name__)

INIT_WEIGHTS = "init_model.pt"
"""The model after the SFT warm start (the KL reference), kept in the run directory."""

EXPORT_DIR = "final_model"
"""A ``torchrun`` run's final policy, written with ``save_pretrained`` by rank 0."""

RUN_FILES = (
    "config.json",
    "metrics.jsonl",
    "metrics.csv",
    "summary.json",
    "curves.png",
    INIT_WEIGHTS,
    "sft_metrics.jsonl",
    CHECKPOINT_DIR,
    EXPORT_DIR,
)
"""What a run writes into its directory (and ``overwrite`` removes)."""


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one directory.

    A non-empty ``run_dir`` needs ``resume`` (continue the run there) or ``overwrite``
    (remove its run files first; files a run does not write are left alone).

    Raises:
        ValueError: both ``resume`` and ``overwrite``.
        FileExistsError: ``run_dir`` holds files and neither flag is given, or it is a file.
    """
    if resume and overwrite:
        raise ValueError("pass --resume or --overwrite, not both")
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"run directory {run_dir} is a file")
    held = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    if not held or resume:
        return
    if not overwrite:
        shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
        raise FileExistsError(
            f"run directory {run_dir} is not empty ({shown}): pass --resume to continue "
            "the run there, or --overwrite to replace it (or choose another --out)"
        )
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    logger.info("--overwrite: removed the earlier run's files from %s", run_dir)


def run_label(run_dir: str | Path, algo: str) -> str:
    """A run's name for progress bars and figures: its directory's name, with the
    algorithm when that differs (the recipe's two GRPO runs must read apart)."""
    name = Path(run_dir).resolve().name
    return algo if name == algo else f"{name} ({algo})"


@dataclass
class Run:
    """Everything a training loop needs besides its algorithm."""

    cfg: TrainConfig
    run_dir: Path
    model: nn.Module
    ref_model: nn.Module
    tokenizer: Any
    policy: Any
    train_env: Any
    eval_env: Any
    eval_indices: list[int]
    pad_id: int
    metrics: MetricsLogger
    resume: bool = False
    resume_from: Path | None = None
    """The verified checkpoint :meth:`begin` loads (None: a fresh start)."""
    sft_summary: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    ctx: DistContext = field(default_factory=DistContext)
    """This rank (the single-process context outside ``torchrun``)."""

    # ----------------------------------------------------------------- seeding
    def step_seed(self, step: int, stream: int) -> int:
        """A seed that depends only on (run seed, step, stream): resume-safe randomness."""
        return step_seed(self.cfg.seed, step, stream)

    # ------------------------------------------------------------- checkpoints
    def begin(self, modules: dict[str, Any]) -> int:
        """Start the loop: the step to start at.

        Loads the checkpoint chosen by :func:`setup_run` into ``modules`` when resuming,
        writes ``config.json`` (only now: a resume that fails, e.g. into a run of another
        model size, leaves the run's config as it was), hands the model's weights to the
        sampler (a vLLM engine holds a copy), and on a fresh start logs the step-0
        evaluation.
        """
        path = self.resume_from if self.resume else None
        step = 0
        if path is not None and (self.ctx.is_distributed or is_dist_checkpoint(path)):
            nets, optimizer, scheduler = _split_state(modules)
            step, _ = load_dist_checkpoint(
                path, self.ctx, nets, optimizer, scheduler=scheduler, verify=False
            )
            logger.info("resumed from %s (step %d)", path, step)
        elif path is not None:
            step, _ = load_checkpoint(path, modules, verify=False)  # setup_run verified it
            logger.info("resumed from %s (step %d)", path, step)
        if self.ctx.is_main:
            atomic_write_text(
                self.run_dir / "config.json",
                json.dumps(to_dict(self.cfg), indent=2, sort_keys=True) + "\n",
            )
        sync_weights(self.policy, self.model)  # a no-op for HF, which samples from it
        if step == 0:
            self.log({"step": 0, **self.evaluate()})
        return step

    def maybe_checkpoint(self, step: int, modules: dict[str, Any]) -> None:
        """Checkpoint every ``checkpoint_every`` steps and after the last one."""
        every = self.cfg.checkpoint_every
        if not every or (step % every and step != self.cfg.steps):
            return
        if self.ctx.is_distributed:  # sharded: every rank writes its part
            nets, optimizer, scheduler = _split_state(modules)
            save_dist_checkpoint(
                self.run_dir,
                step,
                self.ctx,
                nets,
                optimizer,
                scheduler=scheduler,
                config=self.cfg,
                keep=self.cfg.keep_checkpoints,
            )
        else:
            save_checkpoint(self.run_dir, step, self.cfg, modules, keep=self.cfg.keep_checkpoints)

    def end_step(
        self, step: int, record: dict[str, Any], modules: dict[str, Any], started: float
    ) -> None:
        """Evaluate when due, log the step's record and checkpoint when due."""
        if self.should_evaluate(step):
            record.update(self.evaluate())
        # the slowest rank's (reduce_metrics takes the max of *_time)
        record.update(reduce_metrics({"step_time": time.perf_counter() - started}, self.ctx))
        self.log(record)
        self.maybe_checkpoint(step, modules)

    def log(self, record: dict[str, Any]) -> None:
        """Keep a step's record (the same on every rank); rank 0 alone writes the files."""
        if self.ctx.is_main:
            self.metrics.log(record)
        else:
            self.metrics.records.append(record)

    # -------------------------------------------------------------- evaluation
    def evaluate(self) -> dict[str, float]:
        """Greedy decoding on the held-out questions (under ``torchrun``: each rank its
        :func:`~agents.distributed.shard_range` of them, means weighted by count)."""
        start = time.perf_counter()
        if not self.ctx.is_distributed:
            stats = evaluate_greedy(
                self.policy, self.eval_env, self.eval_indices, self.cfg.rollout.max_new_tokens
            )
            stats["eval_time"] = time.perf_counter() - start
            return stats
        mine = [self.eval_indices[i] for i in shard_range(len(self.eval_indices), self.ctx)]
        # HF: ranks decode different lengths, so no collectives inside (vLLM: its own copy)
        on_model = samples_from(self.policy, self.model)
        with gathered(self.model) if on_model else contextlib.nullcontext():
            stats = evaluate_greedy(
                self.policy, self.eval_env, mine, self.cfg.rollout.max_new_tokens
            )
        stats["eval_time"] = time.perf_counter() - start
        return reduce_metrics(stats, self.ctx, weight=float(len(mine)))

    def should_evaluate(self, step: int) -> bool:
        every = self.cfg.eval_every
        return step == self.cfg.steps or bool(every and step % every == 0)

    def steps(self, start: int) -> Iterator[int]:
        """Steps ``start + 1 .. cfg.steps`` (1-based: step N is the N-th update) with a bar."""
        from tqdm.auto import tqdm

        return iter(
            tqdm(
                range(start + 1, self.cfg.steps + 1),
                initial=start,
                total=self.cfg.steps,
                desc=self.label,
                dynamic_ncols=True,
                mininterval=progress_interval(),
                disable=not self.ctx.is_main,
            )
        )

    @property
    def label(self) -> str:
        """The run's name for progress bars and figures (see :func:`run_label`)."""
        return run_label(self.run_dir, self.cfg.algo)

    # ----------------------------------------------------------------- the end
    def finish(self) -> dict[str, Any]:
        """Write ``summary.json`` and the curve PNG; return the summary.

        Under ``torchrun`` every rank calls it: the final policy is gathered and written
        to ``final_model/`` with ``save_pretrained``; rank 0 alone writes the files.
        """
        if self.ctx.is_distributed:
            from agents.distributed import export_pretrained

            saver = self.tokenizer if hasattr(self.tokenizer, "save_pretrained") else None
            export_pretrained(self.model, self.ctx, self.run_dir / EXPORT_DIR, saver)
            return on_main(self.ctx, self._summarise)
        return self._summarise()

    def _summarise(self) -> dict[str, Any]:
        records = self.metrics.records
        evals = [r for r in records if "eval_em" in r]
        summary: dict[str, Any] = {
            "algo": self.cfg.algo,
            "steps": self.cfg.steps,
            "run_dir": str(self.run_dir),
            "wall_seconds": time.perf_counter() - self.started,
            **self.sft_summary,
        }
        if evals:
            first, last = evals[0], evals[-1]
            summary.update(
                {
                    "eval_em_start": first["eval_em"],
                    "eval_em_end": last["eval_em"],
                    "eval_em_best": max(r["eval_em"] for r in evals),
                    "eval_searches_start": first["eval_searches"],
                    "eval_searches_end": last["eval_searches"],
                    "eval_questions": len(self.eval_indices),
                }
            )
        r = self.cfg.rollout
        png = self.run_dir / "curves.png"
        fig = plot_run(
            records,
            png,
            name=self.label,
            train_questions=r.num_envs // r.group_size,
            episodes=r.num_envs // r.group_size * r.group_size,
            eval_questions=len(self.eval_indices),
        )
        summary["curves_png"] = str(png) if fig is not None else None
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary


def is_dist_checkpoint(path: Path) -> bool:
    """Whether a checkpoint directory is a sharded (``torchrun``) one."""
    from agents.distributed.checkpoint import DCP_DIR

    return (Path(path) / DCP_DIR).is_dir()


def _split_state(modules: dict[str, Any]) -> tuple[dict[str, nn.Module], Any, Any]:
    """A loop's checkpoint dict as the sharded checkpoint takes it: the networks, the
    optimizer and the scheduler."""
    nets = {k: v for k, v in modules.items() if k not in ("optimizer", "scheduler")}
    return nets, modules.get("optimizer"), modules.get("scheduler")


def check_distributed(cfg: TrainConfig, ctx: DistContext) -> int:
    """Refuse, before any work, a config that cannot run on ``ctx.world_size`` ranks;
    returns the sub-envs of each rank's train env.

    Raises:
        ValueError: a rank's share of ``rollout.num_envs`` is not a whole number of
            groups (a GRPO group would span two ranks), the vLLM back end with LoRA
            (not wired under ``torchrun`` yet), or fewer evaluation questions than ranks.
    """
    r = cfg.rollout
    if not ctx.is_distributed:
        return r.num_envs
    share = local_num_envs(r.num_envs, r.group_size, ctx.world_size)
    if r.backend == "vllm" and cfg.model.lora_rank > 0:
        raise ValueError(
            "rollout.backend=vllm with model.lora_rank > 0 under torchrun is not supported "
            "yet (the sharded weight push streams the model's tensors; a LoRA model's would "
            "need merging first): use rollout.backend=hf, or one process"
        )
    if r.eval_questions is not None and 0 < r.eval_questions < ctx.world_size:
        raise ValueError(
            f"rollout.eval_questions ({r.eval_questions}) must be at least the number of "
            f"ranks ({ctx.world_size}): every rank evaluates a share"
        )
    return share


def setup_run(
    cfg: TrainConfig,
    resume: bool = False,
    overwrite: bool = False,
    ctx: DistContext | None = None,
) -> Run:
    """Build envs, model, warm start, reference policy and run directory.

    Args:
        cfg: the resolved config (saved as ``config.json`` in ``cfg.out_dir`` once the
            run has started, by :meth:`Run.begin`).
        resume: continue from the newest intact checkpoint in ``cfg.out_dir`` (the SFT
            warm start is then not rerun: its result is loaded from ``init_model.pt``).
        overwrite: replace the run in a non-empty ``cfg.out_dir``.
        ctx: this rank under ``torchrun`` (default: one process). Each rank then builds
            a train env of ``num_envs / world_size`` sub-envs, and the policy and the
            reference are sharded with FSDP2 (``cfg.fsdp``) after the warm start.

    Raises:
        FileExistsError: ``cfg.out_dir`` is not empty and neither flag is given.
        CorruptCheckpointError: resuming, and every checkpoint is damaged.
        ValueError: the config cannot be split over the ranks (:func:`check_distributed`).
    """
    from agents.policy import HFPolicy

    started = time.perf_counter()
    ctx = DistContext() if ctx is None else ctx
    local_envs = check_distributed(cfg, ctx)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.out_dir)
    if ctx.is_distributed:
        on_main(ctx, lambda: prepare_run_dir(run_dir, resume, overwrite))
        last = resume_dist_checkpoint(run_dir, ctx) if resume else None
        if resume and last is None and latest_checkpoint(run_dir) is not None:
            raise ValueError(
                f"{run_dir} holds checkpoints of a single-process run only: resume it "
                "without torchrun (a sharded checkpoint is not made from them)"
            )
    else:
        prepare_run_dir(run_dir, resume, overwrite)
        # Chosen (and its sha256 checked) before hours of set-up, so a damaged one fails fast.
        last = resume_checkpoint(run_dir) if resume else None
        if resume and last is None:  # a torchrun run's sharded checkpoints load here too
            last = resume_dist_checkpoint(run_dir, ctx)
    seed_everything(cfg.seed)
    run_dir.mkdir(parents=True, exist_ok=True)

    env_tokenizer = vocab_size = eos_ids = None
    if cfg.model.path != "tiny":
        from transformers import AutoConfig

        from search_env.registration import load_tokenizer

        env_tokenizer = load_tokenizer(cfg.model.path)
        # the model's logits, not len(tokenizer): Qwen2.5 pads 151,665 ids to 151,936
        vocab_size = AutoConfig.from_pretrained(cfg.model.path).get_text_config().vocab_size
        eos_ids = model_eos_ids(cfg.model.path)  # instruct models list several
    r = cfg.rollout
    train_env = make_env(r, "train", local_envs, env_tokenizer, vocab_size, eos_ids)
    eval_env = make_env(r, r.eval_split, r.eval_num_envs, env_tokenizer, vocab_size, eos_ids)
    tok = train_env.envs[0].tokenizer
    model, tokenizer = load_model(cfg.model, tok)
    if r.backend == "vllm":  # before the SFT warm start, not after it
        from agents.policy.vllm import check_vllm_can_run

        check_vllm_can_run(model.config.to_dict())
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )

    init_path = run_dir / INIT_WEIGHTS
    sft_summary: dict[str, float] = {}
    can_resume = last is not None
    # On resume, keep the metrics of the steps up to the checkpoint, drop any later ones.
    metrics = MetricsLogger(run_dir, resume_step=step_of(last) if last else None)
    if cfg.sft.steps > 0:
        if can_resume and init_path.exists():
            model.load_state_dict(torch.load(init_path, map_location="cpu"))
        elif ctx.is_distributed:
            # Rank 0 warm-starts and writes init_model.pt; the others load it, so every
            # rank starts from the same weights (FSDP shards one model, not W of them).
            sft_summary = on_main(
                ctx, lambda: _warm_start(cfg, model, tokenizer, train_env, pad_id, run_dir)
            )
            if not ctx.is_main:
                model.load_state_dict(torch.load(init_path, map_location="cpu"))
        else:
            sft_summary = _warm_start(cfg, model, tokenizer, train_env, pad_id, run_dir)
    ref_model = frozen_copy(model)
    if ctx.is_distributed:  # after the warm start and the copy; optimizers come after this
        shard_model(model, ctx, cfg.fsdp)
        shard_reference(ref_model, ctx, cfg.fsdp)
    if r.backend == "vllm":
        from agents.policy import VLLMPolicy

        # A copy of the weights in a vLLM engine; the loops push them after every update.
        # Under torchrun (a sharded model): one engine per rank, on the rank's device.
        policy = VLLMPolicy.from_model(
            model,
            tokenizer,
            seed=cfg.seed,
            max_model_len=train_env.envs[0].protocol.max_prompt_length,
            gpu_memory_utilization=r.vllm_gpu_memory_utilization,  # of this rank's GPU
            kv_cache_bytes=None if r.vllm_kv_cache_gb is None else int(r.vllm_kv_cache_gb * 2**30),
            enforce_eager=r.vllm_enforce_eager,
            sleep_mode=r.vllm_sleep,
        )
        if ctx.is_distributed:  # its shutdown destroys the job's group: after the last collective
            ctx.on_destroy(policy.close)
    elif r.backend == "hf":
        policy = HFPolicy(model, tokenizer, device=next(model.parameters()).device, seed=cfg.seed)
    else:
        raise ValueError(f"rollout.backend must be 'hf' or 'vllm', got {r.backend!r}")
    n_eval = len(eval_env.dataset) if r.eval_questions is None else r.eval_questions
    return Run(
        cfg=cfg,
        run_dir=run_dir,
        model=model,
        ref_model=ref_model,
        tokenizer=tokenizer,
        policy=policy,
        train_env=train_env,
        eval_env=eval_env,
        eval_indices=list(range(min(n_eval, len(eval_env.dataset)))),
        pad_id=int(pad_id),
        metrics=metrics,
        resume=can_resume,
        resume_from=last,
        sft_summary=sft_summary,
        started=started,
        ctx=ctx,
    )


def _warm_start(
    cfg: TrainConfig, model: nn.Module, tokenizer: Any, train_env: Any, pad_id: int, run_dir: Path
) -> dict[str, float]:
    """The SFT warm start: train ``model`` in place, write ``init_model.pt`` and the SFT
    metrics; returns the summary lines."""
    from agents.sft import train_sft, warm_start_data

    start = time.perf_counter()
    data, classes = warm_start_data(train_env, cfg.sft, tokenizer, cfg.seed)
    records = train_sft(
        model, data, cfg.sft, pad_id, seed=cfg.seed, progress=True, name_classes=classes
    )
    atomic_torch_save(model.state_dict(), run_dir / INIT_WEIGHTS)  # never a cut init_model.pt
    atomic_write_text(
        run_dir / "sft_metrics.jsonl", "".join(json.dumps(rec) + "\n" for rec in records)
    )
    return {
        "sft_steps": cfg.sft.steps,
        "sft_trajectories": len(data),
        "sft_demo_em": float(np.mean([t.reward for t in data])),
        "sft_final_loss": records[-1]["sft_loss"],
        "sft_seconds": time.perf_counter() - start,
    }
