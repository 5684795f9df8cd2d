"""GRPO on a search-env, one readable loop (Search-R1's GRPO settings by default).

Each step: sample ``num_envs / group_size`` train questions and ``group_size`` episodes
of each -> group-relative advantages ``(r - mean) / (std + 1e-6)`` spread over the
agent's tokens -> clipped policy loss + low-variance KL to the frozen reference, over
agent tokens only (retrieved-token masking; ``mask_env_tokens=False`` for the ablation)
-> gradient clipping and an AdamW step per mini-batch.
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
from agents.losses import aggregate, kl_loss, policy_loss_clipped
from agents.model import forward_tokens
from agents.optim import minibatches, warmup_schedule
from agents.rollout import Batch, collect, response_mask, rollout_stats, to_batch
from agents.run import setup_run
from agents.seeding import question_indices


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
    """The GRPO objective of one mini-batch (all tensors ``# (B, T)``).

    ``loss = clipped policy loss + kl_coef * KL(policy || ref) - entropy_coef * entropy``,
    each averaged over ``mask``-1 tokens only.
    """
    out = forward_tokens(
        model,
        batch.input_ids,
        batch.attention_mask,
        temperature=temperature,
        entropy=True,
        entropy_grad=cfg.entropy_coef != 0,
        only=mask,
    )
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
    )
    kl, kl_stats = kl_loss(out.logprobs, ref_logp, mask, cfg.kl_kind, agg=cfg.loss_agg)
    entropy = aggregate(out.entropy, mask, cfg.loss_agg)
    loss = pg + cfg.kl_coef * kl - cfg.entropy_coef * entropy
    return loss, {
        **stats,
        **kl_stats,
        "entropy": float(entropy.detach()),
        "loss": float(loss.detach()),
    }


def train_grpo(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train with GRPO; returns the run summary (also in ``{out_dir}/summary.json``)."""
    g, r = cfg.grpo, cfg.rollout
    run = setup_run(cfg, resume, overwrite)
    model, ref_model, policy = run.model, run.ref_model, run.policy
    optimizer = torch.optim.AdamW(model.parameters(), lr=g.lr, weight_decay=g.weight_decay)
    scheduler = warmup_schedule(optimizer, g.warmup_ratio, cfg.steps)
    state = {"model": model, "optimizer": optimizer, "scheduler": scheduler}
    start = run.begin(state)
    prompts = r.num_envs // r.group_size

    for step in run.steps(start):
        t0 = time.perf_counter()
        # 1. Rollout: group_size episodes of each of `prompts` train questions.
        indices = question_indices(len(run.train_env.dataset), prompts, cfg.seed, step)
        policy.seed(run.step_seed(step, 0))
        trajectories = collect(
            run.train_env,
            policy,
            indices=indices,
            group_size=r.group_size,
            temperature=r.temperature,
            max_new_tokens=r.max_new_tokens,
        )
        batch = to_batch(trajectories, run.pad_id)
        t1 = time.perf_counter()

        # 2. Advantages: one number per episode, the same on each of its loss tokens.
        adv = grpo_advantages(batch.rewards, batch.group_ids, normalize_std=g.normalize_std)
        mask = batch.loss_mask if g.mask_env_tokens else response_mask(batch)  # (B, T)
        advantages = adv[:, None] * mask  # (B, T)
        with torch.no_grad():
            # Recomputed rather than the sampler's: env tokens have none (the no-mask
            # ablation needs them), and a trainer may differ numerically from a sampler.
            old_logp = forward_tokens(
                model, batch.input_ids, batch.attention_mask, temperature=r.temperature, only=mask
            ).logprobs.cpu()
            ref_logp = forward_tokens(
                ref_model,
                batch.input_ids,
                batch.attention_mask,
                temperature=r.temperature,
                only=mask,
            ).logprobs.cpu()

        # 3. Clipped policy-gradient updates over mini-batches.
        model.train()
        stats: dict[str, list[float]] = defaultdict(list)
        shuffle = torch.Generator().manual_seed(run.step_seed(step, 1))
        for _ in range(g.epochs):
            for rows in minibatches(len(batch), g.minibatch_size, shuffle):
                loss, mb_stats = grpo_loss(
                    model,
                    batch.select(rows),
                    old_logp[rows],
                    ref_logp[rows],
                    advantages[rows],
                    mask[rows],
                    g,
                    r.temperature,
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), g.grad_clip)
                optimizer.step()
                for k, v in {**mb_stats, "grad_norm": float(grad_norm)}.items():
                    stats[k].append(v)
        scheduler.step()
        model.eval()
        policy.update_weights(model.state_dict())  # vLLM samples from a copy

        # 4. Log, evaluate, checkpoint.
        record: dict[str, Any] = {
            "step": step,
            **rollout_stats(trajectories),
            **{k: float(np.mean(v)) for k, v in stats.items()},
            "kl": float(np.mean(stats["kl_loss"])),
            "adv_nonzero": float((adv != 0).float().mean()),
            "lr": scheduler.get_last_lr()[0],
            "rollout_time": t1 - t0,
            "update_time": time.perf_counter() - t1,
        }
        run.end_step(step, record, state, t0)
    return run.finish()
