"""PPO / GRPO loss terms over token sequences: pure torch functions.

Every term takes a ``mask`` ``# (B, T)`` and averages over mask-1 tokens only, so that
environment tokens (prompt, information blocks) and padding contribute neither loss nor
gradient: Search-R1's "retrieved-token masking". Whether env tokens are masked is the
caller's choice of ``mask``. Each loss function returns ``(loss, stats)`` where ``stats``
holds plain floats for logging.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch

from agents.advantages import KLKind, kl_penalty, masked_mean, masked_sum

if TYPE_CHECKING:
    from agents.microbatch import Normaliser

Agg = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"]


def aggregate(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    agg: Agg = "token-mean",
    norm: Normaliser | None = None,
) -> torch.Tensor:
    """Reduce per-token losses ``# (B, T)`` to a scalar over mask-1 tokens.

    - ``"token-mean"``: mean over every mask-1 token of the batch (each token weighs the
      same; the default of verl and Search-R1).
    - ``"seq-mean-token-sum"``: sum over each sequence's tokens, mean over sequences.
    - ``"seq-mean-token-mean"``: mean over each sequence's tokens, then over the
      sequences that have at least one mask-1 token (the original GRPO).

    Args:
        loss_mat: per-token losses ``# (B, T)``.
        mask: ``# (B, T)``.
        agg: the mode above.
        norm: when ``loss_mat`` is one micro-batch of a larger mini-batch, the mini-batch's
            counts (tokens, sequences): the result is then this micro-batch's share, and
            the shares of all micro-batches add up to the whole mini-batch's value (so do
            their gradients). ``None``: ``loss_mat`` is the whole batch.
    """
    if agg not in ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean"):
        raise ValueError(
            f"agg must be 'token-mean', 'seq-mean-token-sum' or 'seq-mean-token-mean', got {agg!r}"
        )
    if norm is not None:
        if agg == "token-mean":
            return masked_sum(loss_mat, mask) / max(norm.tokens, 1)
        if agg == "seq-mean-token-sum":
            return masked_sum(loss_mat, mask, dim=-1).sum() / max(norm.seqs, 1)
        # a sequence without mask-1 tokens has a per-sequence mean of 0 and no weight
        return masked_mean(loss_mat, mask, dim=-1).sum() / max(norm.seqs_with_tokens, 1)
    if agg == "token-mean":
        return masked_mean(loss_mat, mask)
    if agg == "seq-mean-token-sum":
        return masked_sum(loss_mat, mask, dim=-1).mean()
    per_seq = masked_mean(loss_mat, mask, dim=-1)  # (B,)
    has_tokens = (mask != 0).any(-1)
    return masked_mean(per_seq, has_tokens)


def upcast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in fp32 at least: bf16 / fp16 logits are upcast, fp64 ones (tests) kept."""
    return x if x.dtype == torch.float64 else x.float()


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[label]`` per position, in fp32.

    Args:
        logits: ``# (B, T, V)``.
        labels: token ids ``# (B, T)``.

    Returns:
        ``# (B, T)``. Gathers before normalising, so no ``(B, T, V)`` log-softmax copy.
    """
    logits = upcast(logits)
    picked = logits.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` along the last axis, in fp32: ``# (..., V) -> (...)``."""
    logits = upcast(logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


def masked_entropy(
    logits: torch.Tensor, mask: torch.Tensor, agg: Agg = "token-mean"
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean entropy of the policy over mask-1 tokens (maximise it: ``loss -= coef * ent``).

    Args:
        logits: ``# (B, T, V)``, position ``t`` = the distribution token ``t`` was drawn
            from.
        mask: ``# (B, T)``.
        agg: see :func:`aggregate`.
    """
    entropy = aggregate(entropy_from_logits(logits), mask, agg)
    return entropy, {"entropy": float(entropy.detach())}


def policy_loss_clipped(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
    *,
    clip_high: float | None = None,
    dual_clip: float | None = None,
    agg: Agg = "token-mean",
    norm: Normaliser | None = None,
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate, per token: ``max(-A * r, -A * clip(r, 1 - c, 1 + c_high))``.

    Args:
        logp: log-probs of the taken tokens under the current policy ``# (B, T)``.
        old_logp: under the policy that sampled them ``# (B, T)``.
        advantages: ``# (B, T)``.
        mask: ``# (B, T)``.
        clip: the clip range below 1 (and above, unless ``clip_high`` is given).
        clip_high: the clip range above 1 (DAPO's "clip-higher"); defaults to ``clip``.
        dual_clip: if set (e.g. 3.0), bound the loss of negative-advantage tokens by
            ``-A * dual_clip`` (dual-clip PPO, arXiv 1912.09729). Off by default, as in
            the Search-R1 reference.
        agg: see :func:`aggregate`.
        norm: the whole mini-batch's counts when this is one micro-batch (see
            :func:`aggregate`); the stats are then this micro-batch's own.
        is_weights: per-token importance weights ``# (B, T)`` (no gradient) multiplying
            the clipped loss: the sampler correction of :func:`tis_weights`.

    Returns:
        ``(loss, stats)``; stats: ``pg_loss``, ``pg_clip_frac`` (fraction of mask-1
        tokens whose clipped term is the active one), ``approx_kl`` (mean of
        ``old_logp - logp``, k1 estimate of KL(old || new)), ``ratio_mean``, ``ratio_max``
        and, with ``dual_clip``, ``pg_clip_frac_lower``.
    """
    high = clip if clip_high is None else clip_high
    # Clamped as in verl: one stale token must not produce an inf ratio.
    log_ratio = (logp - old_logp).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    loss1 = -advantages * ratio
    loss2 = -advantages * ratio.clamp(1.0 - clip, 1.0 + high)
    per_token = torch.maximum(loss1, loss2)
    stats_extra: dict[str, float] = {}
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        loss3 = -advantages * dual_clip
        lower = torch.minimum(per_token, loss3)
        stats_extra["pg_clip_frac_lower"] = float(
            masked_mean(((per_token > loss3) & (advantages < 0)).float(), mask)
        )
        per_token = torch.where(advantages < 0, lower, per_token)
    if is_weights is not None:
        per_token = per_token * is_weights.detach()
    loss = aggregate(per_token, mask, agg, norm)
    with torch.no_grad():
        keep = mask != 0
        stats = {
            "pg_loss": float(loss.detach()),
            "pg_clip_frac": float(masked_mean((loss2 > loss1).float(), mask)),
            "approx_kl": float(masked_mean(-log_ratio, mask)),
            "ratio_mean": float(masked_mean(ratio, mask)),
            "ratio_max": float(ratio[keep].max()) if bool(keep.any()) else 1.0,
            **stats_extra,
        }
    return loss, stats


def value_loss_clipped(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.5,
    *,
    agg: Agg = "token-mean",
    norm: Normaliser | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped value loss: ``0.5 * max((V - R)^2, (V_clip - R)^2)`` per token.

    ``V_clip = old_V + clamp(V - old_V, -clip, clip)``. The default ``clip=0.5`` is the
    Search-R1 reference's ``critic.cliprange_value``.

    Args:
        values: current critic values ``# (B, T)``.
        old_values: values at rollout time ``# (B, T)``.
        returns: targets ``# (B, T)`` (from :func:`agents.advantages.gae`).
        mask: ``# (B, T)``.
        clip: how far a value may move from ``old_values`` before its loss is clipped.
        agg: see :func:`aggregate`.
        norm: the whole mini-batch's counts when this is one micro-batch.

    Returns:
        ``(loss, stats)``; stats: ``vf_loss``, ``vf_clip_frac``, ``value_mean``,
        ``explained_variance`` (``1 - Var[R - V] / Var[R]`` over mask-1 tokens).
    """
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    loss1 = (values - returns).square()
    loss2 = (clipped - returns).square()
    loss = 0.5 * aggregate(torch.maximum(loss1, loss2), mask, agg, norm)
    with torch.no_grad():
        explained = explained_variance(explained_variance_sums(returns, values, mask))
        stats = {
            "vf_loss": float(loss.detach()),
            # where the clip moved the value: without the first test, old + (V - old)
            # rounding one ulp away from V would count unclipped tokens at random
            "vf_clip_frac": float(
                masked_mean((((values - old_values).abs() > clip) & (loss2 > loss1)).float(), mask)
            ),
            "value_mean": float(masked_mean(values, mask)),
            "explained_variance": explained,
        }
    return loss, stats


def explained_variance_sums(
    returns: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """The sufficient statistics of :func:`explained_variance` over mask-1 tokens.

    Returns ``[n, sum R, sum R^2, sum D, sum D^2]`` with ``D = R - V`` (fp64, so that
    sums of many tokens, or of many ranks' sums, keep their digits); sums of disjoint
    token sets add up to the sums of their union.
    """
    dev = values.device
    keep = mask.to(dev) != 0
    r = returns.detach().to(device=dev, dtype=torch.float64)
    d = r - values.detach().double()
    zero = r.new_zeros(())
    r, d = torch.where(keep, r, zero), torch.where(keep, d, zero)
    n = keep.sum().double()
    return torch.stack([n, r.sum(), r.square().sum(), d.sum(), d.square().sum()])


def explained_variance(sums: torch.Tensor) -> float:
    """``1 - Var[R - V] / Var[R]`` from :func:`explained_variance_sums` (Bessel-corrected
    variances, as :func:`agents.advantages.masked_var`; ``Var[R]`` floored at 1e-8, so a
    constant return gives ``1 - Var[R - V] / 1e-8``)."""
    n, r1, r2, d1, d2 = sums.double().unbind()
    dof = (n - 1).clamp(min=1)
    count = n.clamp(min=1)
    var_r = ((r2 - r1 * r1 / count) / dof).clamp(min=0.0)  # min: rounding, never below 0
    var_d = ((d2 - d1 * d1 / count) / dof).clamp(min=0.0)
    return float(1.0 - var_d / var_r.clamp(min=1e-8))


def kl_loss(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    kind: KLKind = "low_var_kl",
    *,
    agg: Agg = "token-mean",
    norm: Normaliser | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """KL(policy || reference) as a loss term (GRPO's ``use_kl_loss``), over mask-1 tokens.

    Args:
        logp: ``# (B, T)`` log-probs under the policy being trained.
        ref_logp: ``# (B, T)`` under the frozen reference.
        mask: ``# (B, T)``.
        kind: estimator, see :func:`agents.advantages.kl_penalty` (GRPO: ``low_var_kl``).
        agg: see :func:`aggregate`.
        norm: the whole mini-batch's counts when this is one micro-batch.

    Returns:
        ``(loss, {"kl_loss": ...})``.
    """
    loss = aggregate(kl_penalty(logp, ref_logp, kind), mask, agg, norm)
    return loss, {"kl_loss": float(loss.detach())}


def tis_weights(
    trainer_logp: torch.Tensor,
    sampler_logp: torch.Tensor,
    agent_mask: torch.Tensor,
    cap: float,
) -> torch.Tensor:
    """Truncated importance-sampling weights of the sampler's tokens (verl / TRL style).

    ``min(exp(trainer_logp - sampler_logp), cap)`` at agent tokens: the episodes were
    drawn from the sampler's distribution (e.g. vLLM's kernels), the policy loss assumes
    the trainer's; capping bounds the variance. 1 elsewhere (env tokens have no sampler
    log-prob). All tensors ``# (B, T)``; the result carries no gradient.
    """
    if not cap > 0:
        raise ValueError(f"tis_cap must be > 0, got {cap}")
    log_w = (trainer_logp - sampler_logp).detach().clamp(max=20.0)  # no inf before the cap
    weights = torch.exp(log_w).clamp(max=cap)
    return torch.where(agent_mask != 0, weights, torch.ones_like(weights))


def logp_diff_stats(
    trainer_logp: torch.Tensor, sampler_logp: torch.Tensor, agent_mask: torch.Tensor
) -> dict[str, float]:
    """``logp_diff_mean`` and ``logp_diff_max``: ``|trainer - sampler|`` log-prob over agent
    tokens (0 when there are none); how far the sampler's distribution is from the
    trainer's."""
    keep = agent_mask != 0
    if not bool(keep.any()):
        return {"logp_diff_mean": 0.0, "logp_diff_max": 0.0}
    diff = (trainer_logp - sampler_logp).abs()[keep]
    return {"logp_diff_mean": float(diff.mean()), "logp_diff_max": float(diff.max())}
