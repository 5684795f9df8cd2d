"""PPO on a search-env, one readable loop (the Search-R1 reference's PPO by default).

The critic is a value head on the policy's last hidden state (one backbone, two heads;
the value loss is weighted by ``vf_coef``, the head has its own learning rate). Each
step: one episode per sub-env -> outcome reward on the last agent token, minus
``kl_coef * KL`` on every token (reward-level KL) -> GAE with gamma = lambda = 1 over the
agent tokens (environment tokens are not time steps) -> whitened advantages -> clipped
policy loss, clipped value loss and entropy bonus per mini-batch.

Masking: the actor side (policy loss, entropy, KL) always uses the retrieved-token mask
unless ``mask_env_tokens=False``. GAE, value loss and whitening use it too
(``mask_critic_and_whitening``); ``reference_masking=True`` runs them over every
response token instead, as the Search-R1 reference does.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from torch import nn

from agents.advantages import gae, kl_penalty, masked_whiten, terminal_rewards
from agents.config import PPOConfig, TrainConfig
from agents.distributed import (
    DistContext,
    gathered,
    global_explained_variance,
    global_masked_whiten,
    max_over_ranks,
    rank_minibatches,
    reduce_loss_stats,
    reduce_metrics,
    shard_module,
)
from agents.distributed.loop import global_normaliser, scalar
from agents.losses import (
    aggregate,
    kl_loss,
    policy_loss_clipped,
    value_loss_clipped,
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
from agents.model import TokenOutputs, ValueHead
from agents.optim import warmup_schedule
from agents.policy.base import sync_weights
from agents.rollout import Batch, response_mask, rollout_stats
from agents.run import setup_run
from agents.steps import play_step, reference_logprobs, sampler_check


def ppo_objective(
    out: TokenOutputs,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    old_values: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    actor_mask: torch.Tensor,
    critic_mask: torch.Tensor,
    cfg: PPOConfig,
    norms: tuple[Normaliser, Normaliser] | None = None,
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The PPO objective given the per-token outputs (all tensors ``# (B, T)``).

    ``loss = policy loss - entropy_coef * entropy + vf_coef * value loss``
    (``+ kl_coef * KL`` when the KL is a loss term rather than part of the reward).
    ``norms``: the whole mini-batch's counts of the actor and the critic mask when ``out``
    is one micro-batch; ``is_weights``: the sampler correction of
    :func:`agents.losses.tis_weights` on the policy loss.
    """
    actor_norm, critic_norm = (None, None) if norms is None else norms
    dev = out.logprobs.device
    actor_mask, critic_mask = actor_mask.to(dev), critic_mask.to(dev)
    pg, stats = policy_loss_clipped(
        out.logprobs,
        old_logp.to(dev),
        advantages.to(dev),
        actor_mask,
        cfg.clip,
        agg=cfg.loss_agg,
        norm=actor_norm,
        is_weights=None if is_weights is None else is_weights.to(dev),
    )
    assert out.values is not None and out.entropy is not None
    vf, vf_stats = value_loss_clipped(
        out.values,
        old_values.to(dev),
        returns.to(dev),
        critic_mask,
        cfg.value_clip,
        agg=cfg.loss_agg,
        norm=critic_norm,
    )
    entropy = aggregate(out.entropy, actor_mask, cfg.loss_agg, actor_norm)
    loss = pg - cfg.entropy_coef * entropy + cfg.vf_coef * vf
    if not cfg.kl_in_reward:
        kl, kl_stats = kl_loss(
            out.logprobs,
            ref_logp.to(dev),
            actor_mask,
            cfg.kl_kind,
            agg=cfg.loss_agg,
            norm=actor_norm,
        )
        loss = loss + cfg.kl_coef * kl
        stats.update(kl_stats)
    return loss, {
        **stats,
        **vf_stats,
        "entropy": float(entropy.detach()),
        "loss": float(loss.detach()),
    }


def _actor_critic_forward(
    model: nn.Module,
    value_head: ValueHead,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    actor_mask: torch.Tensor,
    cfg: PPOConfig,
    temperature: float,
    mb: MicroBatch | None = None,
) -> TokenOutputs:
    """Log-probs, entropy and values on ``mb``'s rows (taken), packed if ``mb.packed``."""
    return forward_micro(
        model,
        WHOLE if mb is None else mb,
        input_ids,
        attention_mask,
        temperature=temperature,
        entropy=True,
        entropy_grad=cfg.entropy_coef != 0,
        value_head=value_head,
        only=actor_mask,
    )


def ppo_loss(
    model: nn.Module,
    value_head: ValueHead,
    batch: Batch,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    old_values: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    actor_mask: torch.Tensor,
    critic_mask: torch.Tensor,
    cfg: PPOConfig,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The PPO objective of one mini-batch in one pass (see :func:`ppo_objective`)."""
    out = _actor_critic_forward(
        model, value_head, batch.input_ids, batch.attention_mask, actor_mask, cfg, temperature
    )
    return ppo_objective(
        out, old_logp, ref_logp, old_values, advantages, returns, actor_mask, critic_mask, cfg
    )


def ppo_backward(
    model: nn.Module,
    value_head: ValueHead,
    batch: Batch,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    old_values: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    actor_mask: torch.Tensor,
    critic_mask: torch.Tensor,
    cfg: PPOConfig,
    temperature: float = 1.0,
    is_weights: torch.Tensor | None = None,
    norms: tuple[Normaliser, Normaliser] | None = None,
    ctx: DistContext | None = None,
) -> dict[str, float]:
    """Accumulate one mini-batch's PPO gradient (actor and critic) in ``.grad``.

    As :func:`agents.grpo.grpo_backward`: micro-batches of at most
    ``cfg.micro_batch_tokens`` padded tokens (packed rows of real tokens with
    ``cfg.packing``), each normalised by the whole mini-batch's
    actor and critic counts, stats over the stitched whole. ``norms``: the (actor,
    critic) counts when ``batch`` is one rank's part of a larger mini-batch; with
    ``ctx`` (under ``torchrun``) losses are scaled by the world size and micro-batch
    counts padded, as in :func:`agents.grpo.grpo_backward`, the stats' loss terms
    are this rank's shares and ``explained_variance`` is the global mini-batch's (a
    collective: every rank calls this for every mini-batch).
    """
    plan = plan_micro_batches(batch.attention_mask.sum(-1), cfg.micro_batch_tokens, cfg.packing)
    if norms is None and plan[0].rows is not None:
        norms = (Normaliser.of(actor_mask), Normaliser.of(critic_mask))
    scale = 1.0 if ctx is None or not ctx.is_distributed else float(ctx.world_size)
    per_token = (old_logp, ref_logp, old_values, advantages, returns, actor_mask, critic_mask)

    def step(mb: MicroBatch) -> tuple[torch.Tensor, TokenOutputs]:
        parts = [mb.take(x) for x in per_token]
        ids, attn = mb.take(batch.input_ids), mb.take(batch.attention_mask)
        out = _actor_critic_forward(model, value_head, ids, attn, parts[5], cfg, temperature, mb)
        weights = None if is_weights is None else mb.take(is_weights)
        loss, _ = ppo_objective(out, *parts, cfg, norms, weights)
        return loss * scale if scale != 1.0 else loss, out

    # Agreed before any pass: the passes are collectives and must pair up in order.
    pad = 0 if ctx is None or scale == 1.0 else max_over_ranks(len(plan), ctx) - len(plan)
    full = accumulate(plan, step, batch.input_ids.shape)
    if pad:
        for _ in range(pad):
            # zero loss: no gradient, but this rank joins the FSDP collectives
            ids, attn = batch.input_ids[:1], batch.attention_mask[:1]
            out = _actor_critic_forward(
                model, value_head, ids, attn, torch.ones_like(attn), cfg, temperature
            )
            assert out.values is not None
            ((out.logprobs.sum() + out.values.sum()) * 0.0).backward()
    with torch.no_grad():
        _, stats = ppo_objective(
            full, *per_token, cfg, norms if scale != 1.0 else None, is_weights=is_weights
        )
    if scale != 1.0:  # a ratio of variances: from every rank's sums, not averaged later
        assert ctx is not None and full.values is not None
        stats["explained_variance"] = global_explained_variance(
            returns, full.values, critic_mask, ctx
        )
    if cfg.micro_batch_tokens is not None:
        stats.update(plan_stats(plan))
    return stats


SUMMED = ("loss", "pg_loss", "kl_loss", "entropy", "vf_loss", "micro_batches", "oversize_rows")
"""Under ``torchrun``: loss terms (each rank's value is its share of the global one)
and micro-batch counts (a stand-in counts none)."""

CRITIC_STATS = ("vf_clip_frac", "value_mean")
"""Token means over the critic's tokens (weighted by them across ranks)."""

GLOBAL_STATS = ("explained_variance",)
"""Under ``torchrun``: already global in :func:`ppo_backward` (from every rank's sums)."""


def train_ppo(
    cfg: TrainConfig,
    resume: bool = False,
    overwrite: bool = False,
    ctx: DistContext | None = None,
) -> dict[str, Any]:
    """Train with PPO; returns the run summary (also in ``{out_dir}/summary.json``).

    ``ctx``: this rank under ``torchrun`` (see :func:`agents.grpo.train_grpo`); the
    value head is its own FSDP2 unit, advantages are whitened with all ranks' tokens.
    """
    p, r = cfg.ppo, cfg.rollout
    run = setup_run(cfg, resume, overwrite, ctx)
    ctx = run.ctx
    model, ref_model, policy = run.model, run.ref_model, run.policy
    hidden = model.get_output_embeddings().weight.shape[1]
    value_head = ValueHead(hidden).to(next(model.parameters()).device)
    if ctx.is_distributed:
        import torch.distributed as dist

        # Rank 0's initial head on every rank (only rank 0 ran the warm start, so the
        # ranks' generators differ here), then sharded like the policy.
        for t in value_head.state_dict().values():
            dist.broadcast(t, src=0)
        shard_module(value_head, ctx, cfg.fsdp)
    optimizer = torch.optim.AdamW(
        [
            {"params": model.parameters(), "lr": p.lr},
            {"params": value_head.parameters(), "lr": p.critic_lr},
        ],
        weight_decay=p.weight_decay,
    )
    scheduler = warmup_schedule(optimizer, p.warmup_ratio, cfg.steps)
    state = {
        "model": model,
        "value_head": value_head,
        "optimizer": optimizer,
        "scheduler": scheduler,
    }
    start = run.begin(state)
    params = list(model.parameters()) + list(value_head.parameters())

    for step in run.steps(start):
        t0 = time.perf_counter()
        # 1. Rollout: one episode per sub-env (group_size > 1 repeats each question).
        # Under torchrun: this rank's block of them, its own sampler stream.
        trajectories, batch = play_step(run, cfg, step, model)
        t1 = time.perf_counter()

        # 2. Rewards, values and GAE advantages.
        actor_mask = batch.loss_mask if p.mask_env_tokens else response_mask(batch)  # (B, T)
        critic_mask = batch.loss_mask if p.critic_masked else response_mask(batch)  # (B, T)
        scored = torch.maximum(actor_mask, critic_mask)  # tokens whose log-probs are used
        # (Sharded: the models gathered for the no-grad passes, whose micro-batch counts
        # may differ between ranks.)
        with gathered(model), gathered(value_head):
            out = forward_in_micro_batches(
                model,
                batch.input_ids,
                batch.attention_mask,
                p.micro_batch_tokens,
                temperature=r.temperature,
                value_head=value_head,
                only=scored,
                packing=p.packing,
            )
            old_logp, old_values = out.logprobs, out.values
            assert old_values is not None
        ref_logp = reference_logprobs(
            ref_model, batch, p.micro_batch_tokens, r.temperature, only=scored, packing=p.packing
        )
        sampler, is_weights = sampler_check(old_logp, batch, r.tis_cap)
        kl = kl_penalty(old_logp, ref_logp, p.kl_kind) * critic_mask  # (B, T)
        rewards = terminal_rewards(batch.rewards, critic_mask)  # (B, T)
        if p.kl_in_reward:
            rewards = rewards - p.kl_coef * kl
        advantages, returns = gae(rewards, old_values, critic_mask, p.gamma, p.lam)
        if ctx.is_distributed:  # the statistics of every rank's tokens
            advantages = global_masked_whiten(advantages, critic_mask, ctx)
        else:
            advantages = masked_whiten(advantages, critic_mask)

        # 3. Clipped actor and critic updates over mini-batches.
        model.train()
        stats: dict[str, list[float]] = defaultdict(list)
        shuffle = torch.Generator().manual_seed(run.step_seed(step, 1))
        for _ in range(p.epochs):
            # The 1-rank mini-batches of the global batch; each rank keeps its rows.
            for part in rank_minibatches(len(batch), p.minibatch_size, shuffle, ctx):
                rows = part.rows
                mb_actor = actor_mask[rows] if part.live else torch.zeros_like(actor_mask[rows])
                mb_critic = critic_mask[rows] if part.live else torch.zeros_like(critic_mask[rows])
                norms = None
                if ctx.is_distributed:
                    norms = (
                        global_normaliser(mb_actor, part.live, ctx),
                        global_normaliser(mb_critic, part.live, ctx),
                    )
                optimizer.zero_grad(set_to_none=True)
                mb_stats = ppo_backward(
                    model,
                    value_head,
                    batch.select(rows),
                    old_logp[rows],
                    ref_logp[rows],
                    old_values[rows],
                    advantages[rows],
                    returns[rows],
                    mb_actor,
                    mb_critic,
                    p,
                    r.temperature,
                    None if is_weights is None else is_weights[rows],
                    norms=norms,
                    ctx=ctx,
                )
                if ctx.is_distributed:
                    if not part.live:  # the stand-in row's micro-batch is not one
                        mb_stats.update(
                            {k: 0.0 for k in ("micro_batches", "oversize_rows") if k in mb_stats}
                        )
                    mb_stats = reduce_loss_stats(
                        mb_stats,
                        ctx,
                        SUMMED,
                        float((mb_actor != 0).sum()),
                        CRITIC_STATS,
                        float((mb_critic != 0).sum()),
                        GLOBAL_STATS,
                    )
                grad_norm = torch.nn.utils.clip_grad_norm_(params, p.grad_clip)
                optimizer.step()
                for k, v in {**mb_stats, "grad_norm": scalar(grad_norm)}.items():
                    stats[k].append(v)
        scheduler.step()
        model.eval()
        sync_weights(policy, model)  # vLLM samples from a copy (LoRA: merged)

        # 4. Log, evaluate, checkpoint.
        mask_bool = critic_mask != 0
        played = {
            **rollout_stats(trajectories),
            "kl": float(kl[mask_bool].mean()) if bool(mask_bool.any()) else 0.0,
            "rollout_time": t1 - t0,
            "update_time": time.perf_counter() - t1,
        }
        if ctx.is_distributed:  # ranks play equal numbers of episodes; tokens weigh the KL
            kl_mean = reduce_metrics(
                {"kl": played.pop("kl")}, ctx, weight=float(mask_bool.sum()) + 1e-9
            )
            played = {**reduce_metrics(played, ctx), **kl_mean}
            sampler = reduce_metrics(sampler, ctx, weight=float(batch.loss_mask.sum()) + 1e-9)
        record: dict[str, Any] = {
            "step": step,
            **{k: played[k] for k in rollout_stats(trajectories)},
            **{k: float(np.mean(v)) for k, v in stats.items()},
            **sampler,
            "kl": played["kl"],
            "lr": scheduler.get_last_lr()[0],
            "rollout_time": played["rollout_time"],
            "update_time": played["update_time"],
        }
        run.end_step(step, record, state, t0)
    return run.finish()
