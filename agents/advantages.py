"""Advantages, returns and KL estimators over token sequences: pure torch functions.

Conventions: tensors are ``(B, T)`` with position ``t`` holding the quantity of token
``t`` of the context (the same alignment as :class:`agents.rollout.Batch`). ``mask`` is
1 at agent tokens (what the policy generated) and 0 at environment tokens (prompt,
information blocks, invalid-action messages) and padding. Masks may be bool, int or
float 0/1 tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

KLKind = Literal["kl", "abs", "mse", "low_var_kl"]


def _as_bool(mask: torch.Tensor) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` over mask-1 entries; masked entries never reach the result.

    ``torch.where`` rather than ``x * mask`` so that a NaN or inf at a masked position
    (e.g. the log-prob of a pad token) cannot leak in.
    """
    kept = torch.where(_as_bool(mask), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over mask-1 entries (over all of them, or along ``dim``).

    An empty selection gives 0, not NaN.

    Args:
        x: values, any shape.
        mask: same shape as ``x``.
        dim: reduce along this dimension only; ``None`` reduces everything.
    """
    count = _as_bool(mask).sum() if dim is None else _as_bool(mask).sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1).to(x.dtype)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over mask-1 entries (Bessel-corrected by default, as verl does)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = _as_bool(mask).sum()
        var = var * n / (n - 1).clamp(min=1)
    return var


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Normalise ``x`` to unit variance using statistics of the mask-1 entries only.

    Args:
        x: values, e.g. advantages ``# (B, T)``.
        mask: which entries count (and which are kept: the others become 0).
        shift_mean: subtract the mean (True), or keep it and only rescale (False).
        eps: added to the variance.

    Returns:
        ``(x - mean) / sqrt(var + eps)`` (plus ``mean`` again when ``shift_mean`` is
        False) at mask-1 entries, 0 elsewhere.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(_as_bool(mask), out, torch.zeros((), dtype=out.dtype, device=out.device))


def terminal_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Put each sequence's scalar reward on its last mask-1 token.

    Args:
        rewards: one reward per sequence ``# (B,)``.
        mask: agent-token mask ``# (B, T)``.

    Returns:
        Token rewards ``# (B, T)``: 0 everywhere except the last agent token of each row.
        A row without agent tokens gets no reward (and so no gradient anyway).
    """
    keep = _as_bool(mask)
    positions = torch.arange(keep.shape[-1], device=keep.device).expand_as(keep)
    last = torch.where(keep, positions, torch.full_like(positions, -1)).amax(-1)  # (B,)
    out = torch.zeros(keep.shape, dtype=rewards.dtype, device=rewards.device)
    has = last >= 0
    out[has.nonzero(as_tuple=True)[0], last[has]] = rewards[has]
    return out


@torch.no_grad()
def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the agent tokens of each sequence.

    Every row is one episode. Its agent tokens (mask 1) at positions
    ``t_1 < t_2 < ... < t_n`` are the time steps; environment tokens (mask 0) between
    them are not steps at all, so an information block between two turns neither
    discounts nor breaks the credit chain::

        delta_k = r[t_k] + gamma * V[t_{k+1}] - V[t_k]      (V[t_{n+1}] = 0: terminal)
        A_k     = delta_k + gamma * lam * A_{k+1}           (A_{n+1} = 0)
        R_k     = A_k + V[t_k]

    The same recursion as verl's ``compute_gae_advantage_return`` (which carries the
    next value and advantage across masked positions).

    Masked positions: their ``values`` are never read; their ``rewards`` must be 0 (a
    ValueError otherwise, rather than silently losing reward; use
    :func:`terminal_rewards` to place an outcome reward on the last agent token); their
    advantages and returns are 0.

    Args:
        rewards: token rewards ``# (B, T)``.
        values: critic values ``# (B, T)``, ``V[t]`` = value of the state in which token
            ``t`` is generated.
        mask: 1 at the tokens that are time steps ``# (B, T)`` (the loss mask; pass the
            attention mask of the response to reproduce the reference, which runs GAE over
            information tokens too).
        gamma: discount per agent token.
        lam: GAE lambda.

    Returns:
        ``(advantages, returns)``, both ``# (B, T)``, not whitened (see
        :func:`masked_whiten`).
    """
    if rewards.shape != values.shape or rewards.shape != mask.shape or rewards.dim() != 2:
        raise ValueError(
            f"rewards, values and mask must share one (B, T) shape, got "
            f"{tuple(rewards.shape)}, {tuple(values.shape)}, {tuple(mask.shape)}"
        )
    keep = _as_bool(mask)
    if bool((rewards[~keep] != 0).any()):
        raise ValueError("rewards at mask-0 positions must be 0; put them on agent tokens")
    rewards, values = rewards.float(), values.float()
    batch, length = rewards.shape
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(batch, device=rewards.device)  # V[t_{k+1}]
    next_adv = torch.zeros(batch, device=rewards.device)  # A_{k+1}
    for t in reversed(range(length)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = delta + gamma * lam * next_adv
        step = keep[:, t]
        advantages[:, t] = torch.where(step, adv, 0.0)
        # Environment tokens pass the next step's value and advantage through unchanged.
        next_value = torch.where(step, values[:, t], next_value)
        next_adv = torch.where(step, adv, next_adv)
    returns = torch.where(keep, advantages + values, 0.0)
    return advantages, returns


@torch.no_grad()
def grpo_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor | Sequence[int] | None = None,
    *,
    group_size: int | None = None,
    normalize_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Group-relative advantages: ``(r - group mean) / (group std + eps)``.

    The std is the unbiased (Bessel-corrected) one, as in verl and Search-R1. With
    ``normalize_std=False`` the advantage is ``r - group mean`` (Dr. GRPO, arXiv
    2503.20783: dividing by the std over-weights questions that are nearly always or
    never solved). As in verl, a group of one sequence gets mean 0 and std 1, i.e. its
    raw reward.

    Args:
        rewards: one reward per sequence ``# (B,)``.
        group_ids: group of each sequence ``# (B,)`` (any integers); or
        group_size: consecutive groups of this size (B must be a multiple).
        normalize_std: divide by the group std.
        eps: added to the std.

    Returns:
        Advantages ``# (B,)``; broadcast to tokens with ``adv[:, None] * mask``.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must have shape (B,), got {tuple(rewards.shape)}")
    if (group_ids is None) == (group_size is None):
        raise ValueError("pass exactly one of group_ids and group_size")
    n = rewards.shape[0]
    if group_size is not None:
        if group_size < 1 or n % group_size:
            raise ValueError(f"group_size must divide the batch size {n}, got {group_size}")
        ids = torch.arange(n, device=rewards.device) // group_size
    else:
        ids = torch.as_tensor(group_ids, device=rewards.device)
        if ids.shape != (n,):
            raise ValueError(f"group_ids must have shape ({n},), got {tuple(ids.shape)}")
    if n == 0:
        return rewards.float()
    _, ids = torch.unique(ids, return_inverse=True)  # dense 0..G-1
    groups = int(ids.max()) + 1
    r = rewards.double()
    zeros = torch.zeros(groups, dtype=r.dtype, device=r.device)
    count = zeros.index_add(0, ids, torch.ones_like(r))
    mean = zeros.index_add(0, ids, r) / count
    sq = zeros.index_add(0, ids, (r - mean[ids]) ** 2)
    std = (sq / (count - 1).clamp(min=1)).sqrt()
    single = count == 1
    mean = torch.where(single, 0.0, mean)
    std = torch.where(single, 1.0, std)
    adv = r - mean[ids]
    if normalize_std:
        adv = adv / (std[ids] + eps)
    return adv.to(rewards.dtype if rewards.is_floating_point() else torch.float32)


def kl_penalty(
    logp: torch.Tensor, ref_logp: torch.Tensor, kind: KLKind = "low_var_kl"
) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from sampled-token log-probs.

    With ``d = ref_logp - logp`` (tokens sampled from the policy):

    - ``"kl"`` (k1): ``-d`` = ``logp - ref_logp``; unbiased, high variance, can be < 0.
    - ``"abs"``: ``|logp - ref_logp|``.
    - ``"mse"`` (k2): ``0.5 * (logp - ref_logp)**2``.
    - ``"low_var_kl"`` (k3, Schulman's "Approximating KL divergence"):
      ``exp(d) - d - 1``, always >= 0. As verl does, ``d`` is clamped to [-20, 20]
      before the exponential and the result to [-10, 10], so one token whose
      probability collapsed under the reference cannot blow up the loss.

    Args:
        logp: log-probs of the sampled tokens under the policy ``# (B, T)``.
        ref_logp: under the reference model ``# (B, T)``.
        kind: which estimator.

    Returns:
        Per-token KL estimates ``# (B, T)`` (unmasked; see ``losses.kl_loss``).
    """
    if kind == "kl":
        return logp - ref_logp
    if kind == "abs":
        return (logp - ref_logp).abs()
    if kind == "mse":
        return 0.5 * (logp - ref_logp).square()
    if kind == "low_var_kl":
        d = (ref_logp - logp).clamp(-20.0, 20.0)
        return (torch.exp(d) - d - 1.0).clamp(-10.0, 10.0)
    raise ValueError(f"kind must be 'kl', 'abs', 'mse' or 'low_var_kl', got {kind!r}")
