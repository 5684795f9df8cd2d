"""The parts of one RL step that GRPO and PPO share: playing the step's episodes, the
frozen reference's log-probs and the sampler-vs-trainer check.

Under ``torchrun`` each rank plays its block of the step's questions with its own
sampler stream, and every pass runs on the gathered (unsharded) model, since ranks
generate different lengths and may run different numbers of micro-batches. A vLLM
sampler has its own copy of the weights: nothing is gathered for it, and after the
rollout it sleeps (where its sleep mode is on) until the update's weight push wakes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import nn

from agents.config import TrainConfig
from agents.distributed import gathered, rank_questions, rank_seed
from agents.losses import logp_diff_stats, tis_weights
from agents.microbatch import forward_in_micro_batches
from agents.policy.base import samples_from, sleep_sampler
from agents.rollout import Batch, Trajectory, collect, to_batch
from agents.run import Run


def play_step(
    run: Run, cfg: TrainConfig, step: int, model: nn.Module
) -> tuple[Sequence[Trajectory], Batch]:
    """This rank's episodes of ``step`` (``group_size`` of each of its questions) and
    their padded batch; then a sampler with its own weights (vLLM) frees its memory for
    the update (:func:`~agents.policy.base.sleep_sampler`), until ``sync_weights``."""
    r, ctx = cfg.rollout, run.ctx
    indices = rank_questions(
        len(run.train_env.dataset), r.num_envs, r.group_size, cfg.seed, step, ctx
    )
    run.policy.seed(rank_seed(run.step_seed(step, 0), ctx))
    # HF: ranks generate different lengths, so no collectives inside (vLLM: its own copy)
    with gathered(model) if samples_from(run.policy, model) else nullcontext():
        trajectories = collect(
            run.train_env,
            run.policy,
            indices=indices,
            group_size=r.group_size,
            temperature=r.temperature,
            max_new_tokens=r.max_new_tokens,
        )
    sleep_sampler(run.policy)
    return trajectories, to_batch(trajectories, run.pad_id)


def reference_logprobs(
    ref_model: nn.Module,
    batch: Batch,
    budget: int | None,
    temperature: float,
    only: torch.Tensor,
    packing: bool = False,
) -> torch.Tensor:
    """The frozen reference's log-probs ``# (B, T)`` at ``only``'s tokens, micro-batch by
    micro-batch under ``budget`` tokens (packed rows with ``packing``)."""
    with gathered(ref_model):
        return forward_in_micro_batches(
            ref_model,
            batch.input_ids,
            batch.attention_mask,
            budget,
            temperature=temperature,
            only=only,
            packing=packing,
        ).logprobs


def sampler_check(
    old_logp: torch.Tensor, batch: Batch, tis_cap: float | None
) -> tuple[dict[str, float], torch.Tensor | None]:
    """The trainer's log-probs against the sampler's (``batch.old_logprobs``) at agent
    tokens: the logged difference, and the truncated importance weights when
    ``tis_cap`` is set (else None)."""
    stats = logp_diff_stats(old_logp, batch.old_logprobs, batch.loss_mask)
    weights = None
    if tis_cap is not None:
        weights = tis_weights(old_logp, batch.old_logprobs, batch.loss_mask, tis_cap)
    return stats, weights
