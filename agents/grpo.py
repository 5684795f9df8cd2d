"""GRPO on a search-env, one readable loop (Search-R1's GRPO settings by default).

Each step: sample ``num_envs / group_size`` train questions and ``group_size`` episodes
of each -> group-relative advantages ``(r - mean) / (std + 1e-6)`` spread over the
agent's tokens -> clipped policy loss + low-variance KL to the frozen reference, over
agent tokens only (retrieved-token masking; ``mask_env_tokens=False`` for the ablation)
-> gradient clipping and an AdamW step per mini-batch (accumulated over micro-batches of
at most ``micro_batch_tokens`` padded tokens when set).
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from torch import nn

from agents.advantages import grpo_advantages
from agents.config import GRPOConfig, TrainConfig
from agents.distributed import (
    DistContext,
    gathered,
    max_over_ranks,
    rank_minibatches,
    reduce_loss_stats,
    reduce_metrics,
)
from agents.distributed.loop import global_normaliser, scalar
from agents.losses import (
    aggregate,
    kl_loss,
    policy_loss_clipped,
)
from agents.microbatch import (
    WHOLE,
    MicroBatch,
    Normaliser,
    accumulate,
    forward_in_micro_batches,
    forward_micro,
    plan_micro_batches,
    plan_stats,
)
from agents.model import TokenOutputs
from agents.optim import warmup_schedule
from agents.policy.base import sync_weights
from agents.rollout import Batch, response_mask, rollout_stats
from agents.run import setup_run
from agents.steps import play_step, reference_logprobs, sampler_check


def grpo_objective(
    out: TokenOutputs,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: GRPOConfig,
    norm: Normaliser | None = None,
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO objective given the policy's per-token outputs (all tensors ``# (B, T)``).

    ``loss = clipped policy loss + kl_coef * KL(policy || ref) - entropy_coef * entropy``,
    each aggregated over ``mask``-1 tokens only (``norm``: the whole mini-batch's counts
    when ``out`` is one micro-batch; ``is_weights``: the sampler correction of
    :func:`agents.losses.tis_weights` on the policy loss).
    """
    device = out.logprobs.device
    mask, old_logp, ref_logp = mask.to(device), old_logp.to(device), ref_logp.to(device)
    pg, stats = policy_loss_clipped(
        out.logprobs,
        old_logp,
        advantages.to(device),
        mask,
        cfg.clip,
        clip_high=cfg.clip_high,
        agg=cfg.loss_agg,
        norm=norm,
        is_weights=None if is_weights is None else is_weights.to(device),
    )
    kl, kl_stats = kl_loss(out.logprobs, ref_logp, mask, cfg.kl_kind, agg=cfg.loss_agg, norm=norm)
    assert out.entropy is not None
    entropy = aggregate(out.entropy, mask, cfg.loss_agg, norm)
    loss = pg + cfg.kl_coef * kl - cfg.entropy_coef * entropy
    return loss, {
        **stats,
        **kl_stats,
        "entropy": float(entropy.detach()),
        "loss": float(loss.detach()),
    }


def _policy_forward(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    mask: torch.Tensor,
    cfg: GRPOConfig,
    temperature: float,
    mb: MicroBatch | None = None,
) -> TokenOutputs:
    """The policy's outputs on ``mb``'s rows (taken already), packed if ``mb.packed``."""
    return forward_micro(
        model,
        WHOLE if mb is None else mb,
        input_ids,
        attention_mask,
        temperature=temperature,
        entropy=True,
        entropy_grad=cfg.entropy_coef != 0,
        only=mask,
    )


def grpo_loss(
    model: nn.Module,
    batch: Batch,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: GRPOConfig,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO objective of one mini-batch in one pass (see :func:`grpo_objective`)."""
    out = _policy_forward(model, batch.input_ids, batch.attention_mask, mask, cfg, temperature)
    return grpo_objective(out, old_logp, ref_logp, advantages, mask, cfg)


def grpo_backward(
    model: nn.Module,
    batch: Batch,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: GRPOConfig,
    temperature: float = 1.0,
    is_weights: torch.Tensor | None = None,
    norm: Normaliser | None = None,
    ctx: DistContext | None = None,
) -> dict[str, float]:
    """Accumulate one mini-batch's GRPO gradient in ``.grad``, micro-batch by micro-batch.

    Micro-batches of at most ``cfg.micro_batch_tokens`` padded tokens, or real tokens in
    one packed row with ``cfg.packing`` (:mod:`agents.microbatch`); each loss is
    normalised by the whole mini-batch's counts, so the gradient equals the unsplit
    pass's. The stats are computed once over the whole
    mini-batch's stitched outputs, so they are the unsplit pass's too.

    ``norm``: the counts to divide by when ``batch`` is one rank's part of a larger
    mini-batch (the global counts, reduced over ranks); default: ``batch``'s own. The
    stats are then this part's.

    ``ctx`` (under ``torchrun``, with ``norm`` the global counts): each loss is scaled
    by the world size, since FSDP2 averages the ranks' gradients, so the result is the
    gradient of the whole global mini-batch; a rank with fewer micro-batches than
    another runs zero-loss stand-ins, so that every rank joins as many collectives.
    """
    plan = plan_micro_batches(batch.attention_mask.sum(-1), cfg.micro_batch_tokens, cfg.packing)
    if norm is None and plan[0].rows is not None:
        norm = Normaliser.of(mask)
    scale = 1.0 if ctx is None or not ctx.is_distributed else float(ctx.world_size)

    def step(mb: MicroBatch) -> tuple[torch.Tensor, TokenOutputs]:
        ids, attn, m = mb.take(batch.input_ids), mb.take(batch.attention_mask), mb.take(mask)
        out = _policy_forward(model, ids, attn, m, cfg, temperature, mb)
        weights = None if is_weights is None else mb.take(is_weights)
        loss, _ = grpo_objective(
            out, mb.take(old_logp), mb.take(ref_logp), mb.take(advantages), m, cfg, norm, weights
        )
        return loss * scale if scale != 1.0 else loss, out

    # Agreed before any pass: the passes are collectives and must pair up in order.
    pad = 0 if ctx is None or scale == 1.0 else max_over_ranks(len(plan), ctx) - len(plan)
    full = accumulate(plan, step, batch.input_ids.shape)
    for _ in range(pad):
        _standin_backward(model, batch, cfg, temperature)
    with torch.no_grad():
        # Under torchrun, the loss terms with the global counts: this rank's share.
        _, stats = grpo_objective(
            full,
            old_logp,
            ref_logp,
            advantages,
            mask,
            cfg,
            norm if scale != 1.0 else None,
            is_weights=is_weights,
        )
    if cfg.micro_batch_tokens is not None:
        stats.update(plan_stats(plan))
    return stats


def _standin_backward(model: nn.Module, batch: Batch, cfg: GRPOConfig, temperature: float) -> None:
    """A forward and backward of one row with a zero loss: no gradient, but the rank
    joins the FSDP collectives of a micro-batch that another rank runs."""
    ids, attn = batch.input_ids[:1], batch.attention_mask[:1]
    out = _policy_forward(model, ids, attn, torch.ones_like(attn), cfg, temperature)
    (out.logprobs.sum() * 0.0).backward()


SUMMED = ("loss", "pg_loss", "kl_loss", "entropy", "micro_batches", "oversize_rows")
"""Under ``torchrun``: loss terms (each rank's value is its share of the global one)
and micro-batch counts (a stand-in counts none)."""


def train_grpo(
    cfg: TrainConfig,
    resume: bool = False,
    overwrite: bool = False,
    ctx: DistContext | None = None,
) -> dict[str, Any]:
    """Train with GRPO; returns the run summary (also in ``{out_dir}/summary.json``).

    ``ctx``: this rank under ``torchrun``: it plays its block of each step's questions
    (whole groups), the update averages the ranks' gradients of the global mini-batch
    (FSDP2), metrics are reduced over ranks, and rank 0 writes the files.
    """
    g, r = cfg.grpo, cfg.rollout
    run = setup_run(cfg, resume, overwrite, ctx)
    ctx = run.ctx
    model, ref_model, policy = run.model, run.ref_model, run.policy
    optimizer = torch.optim.AdamW(model.parameters(), lr=g.lr, weight_decay=g.weight_decay)
    scheduler = warmup_schedule(optimizer, g.warmup_ratio, cfg.steps)
    state = {"model": model, "optimizer": optimizer, "scheduler": scheduler}
    start = run.begin(state)

    for step in run.steps(start):
        t0 = time.perf_counter()
        # 1. Rollout: group_size episodes of each of `prompts` train questions.
        # Under torchrun: this rank's block of them, its own sampler stream.
        trajectories, batch = play_step(run, cfg, step, model)
        t1 = time.perf_counter()

        # 2. Advantages: one number per episode, the same on each of its loss tokens.
        adv = grpo_advantages(batch.rewards, batch.group_ids, normalize_std=g.normalize_std)
        mask = batch.loss_mask if g.mask_env_tokens else response_mask(batch)  # (B, T)
        advantages = adv[:, None] * mask  # (B, T)
        # (Sharded: each model gathered for its no-grad pass, as ranks' micro-batch
        # counts may differ.)
        with gathered(model):
            # Recomputed rather than the sampler's: env tokens have none (the no-mask
            # ablation needs them), and a trainer may differ numerically from a sampler.
            old_logp = forward_in_micro_batches(
                model,
                batch.input_ids,
                batch.attention_mask,
                g.micro_batch_tokens,
                temperature=r.temperature,
                only=mask,
                packing=g.packing,
            ).logprobs
        ref_logp = reference_logprobs(
            ref_model, batch, g.micro_batch_tokens, r.temperature, only=mask, packing=g.packing
        )
        sampler, is_weights = sampler_check(old_logp, batch, r.tis_cap)

        # 3. Clipped policy-gradient updates over mini-batches.
        model.train()
        stats: dict[str, list[float]] = defaultdict(list)
        shuffle = torch.Generator().manual_seed(run.step_seed(step, 1))
        for _ in range(g.epochs):
            # The 1-rank mini-batches of the global batch; each rank keeps its rows.
            for part in rank_minibatches(len(batch), g.minibatch_size, shuffle, ctx):
                rows = part.rows
                mb_mask = mask[rows] if part.live else torch.zeros_like(mask[rows])
                norm = global_normaliser(mb_mask, part.live, ctx) if ctx.is_distributed else None
                optimizer.zero_grad(set_to_none=True)
                mb_stats = grpo_backward(
                    model,
                    batch.select(rows),
                    old_logp[rows],
                    ref_logp[rows],
                    advantages[rows],
                    mb_mask,
                    g,
                    r.temperature,
                    None if is_weights is None else is_weights[rows],
                    norm=norm,
                    ctx=ctx,
                )
                if ctx.is_distributed:
                    if not part.live:  # the stand-in row's micro-batch is not one
                        mb_stats.update(
                            {k: 0.0 for k in ("micro_batches", "oversize_rows") if k in mb_stats}
                        )
                    tokens = int((mb_mask != 0).sum())
                    mb_stats = reduce_loss_stats(mb_stats, ctx, SUMMED, tokens)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), g.grad_clip)
                optimizer.step()
                for k, v in {**mb_stats, "grad_norm": scalar(grad_norm)}.items():
                    stats[k].append(v)
        scheduler.step()
        model.eval()
        sync_weights(policy, model)  # vLLM samples from a copy (LoRA: merged)

        # 4. Log, evaluate, checkpoint.
        played = {
            **rollout_stats(trajectories),
            "adv_nonzero": float((adv != 0).float().mean()),
            "rollout_time": t1 - t0,
            "update_time": time.perf_counter() - t1,
        }
        if ctx.is_distributed:  # ranks play equal numbers of episodes; tokens weigh sampler
            played = reduce_metrics(played, ctx)
            sampler = reduce_metrics(sampler, ctx, weight=float(batch.loss_mask.sum()) + 1e-9)
        record: dict[str, Any] = {
            "step": step,
            **{k: played[k] for k in rollout_stats(trajectories)},
            **{k: float(np.mean(v)) for k, v in stats.items()},
            **sampler,
            "kl": float(np.mean(stats["kl_loss"])),
            "adv_nonzero": played["adv_nonzero"],
            "lr": scheduler.get_last_lr()[0],
            "rollout_time": played["rollout_time"],
            "update_time": played["update_time"],
        }
        run.end_step(step, record, state, t0)
    return run.finish()
