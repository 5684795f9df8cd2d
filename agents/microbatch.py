"""Memory-bounded passes: a mini-batch cut into micro-batches under a token budget.

A mini-batch (one optimizer step) is split into micro-batches of at most
``micro_batch_tokens`` padded tokens (rows x the longest row's length); each is run
forward and backward on its own and the gradients add up (gradient accumulation). The
loss of each micro-batch is normalised by the **whole mini-batch's** counts
(:class:`Normaliser`: tokens for ``token-mean``, sequences for the ``seq-mean`` modes),
so the accumulated gradient equals the unsplit mini-batch's in every aggregation mode.

With ``packing`` a micro-batch is one packed row instead (:mod:`agents.packing`):
whole trajectories back to back, at most ``micro_batch_tokens`` real tokens in all, no
padding, positions restarting at every trajectory (first-fit decreasing), run by
:func:`forward_micro`; the losses, gradients and stats are the padded plan's.

The pieces are plain functions so that a multi-rank loop can reuse them: there the
normaliser holds the counts of the global mini-batch (reduced over ranks) and each rank
runs :func:`accumulate` over its own micro-batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from agents.model import TokenOutputs, forward_tokens
from agents.packing import forward_tokens_packed, pack_rows


@dataclass(frozen=True)
class MicroBatch:
    """Rows of a mini-batch run in one forward/backward pass.

    Attributes:
        rows: indices into the mini-batch ``# (b,)``, ascending; ``None``: every row, in
            order, at full width (the unsplit pass, untouched).
        width: columns kept: the longest row's length (right padding beyond it is cut).
        oversize: a single row longer than the budget (it gets a micro-batch of its own).
        packed: the rows run as one packed row (their real tokens back to back) rather
            than as a padded ``(b, width)`` batch; the tensors taken stay padded.
    """

    rows: torch.Tensor | None
    width: int
    oversize: bool = False
    packed: bool = False

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """This micro-batch's part of a mini-batch tensor ``# (B, T) -> (b, width)``."""
        if self.rows is None:
            return x
        return x[self.rows.to(x.device), : self.width]

    def put(self, full: torch.Tensor, part: torch.Tensor) -> None:
        """Write this micro-batch's ``part`` ``# (b, width)`` into ``full`` ``# (B, T)``."""
        if self.rows is None:
            full.copy_(part)
        else:
            full[self.rows.to(full.device), : self.width] = part


WHOLE = MicroBatch(rows=None, width=-1)
"""The unsplit pass: every row, padded, at full width."""


@dataclass(frozen=True)
class Normaliser:
    """The whole mini-batch's counts that every micro-batch's loss is divided by.

    Attributes:
        tokens: mask-1 tokens (``token-mean``).
        seqs: sequences (``seq-mean-token-sum``).
        seqs_with_tokens: sequences with at least one mask-1 token (``seq-mean-token-mean``).
    """

    tokens: int
    seqs: int
    seqs_with_tokens: int

    @classmethod
    def of(cls, mask: torch.Tensor) -> Normaliser:
        """The counts of a mini-batch's loss mask ``# (B, T)``."""
        keep = mask != 0
        return cls(int(keep.sum()), int(mask.shape[0]), int(keep.any(-1).sum()))


def _cost(count: int, longest: int) -> int:
    return count * longest


def _greedy(lengths: Sequence[int], cap: int) -> list[list[int]]:
    """Cut rows sorted by length (longest first) into consecutive groups of padded cost
    ``<= cap``; a row longer than ``cap`` is a group alone. Fewest groups for ``cap``."""
    groups: list[list[int]] = []
    for i in range(len(lengths)):
        if groups and _cost(len(groups[-1]) + 1, lengths[groups[-1][0]]) <= cap:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def plan_micro_batches(
    lengths: torch.Tensor, budget: int | None, packing: bool = False
) -> list[MicroBatch]:
    """Split a mini-batch's rows into micro-batches of at most ``budget`` padded tokens.

    Rows are sorted by length, so each micro-batch holds rows of similar length (little
    padding), and cut into as few micro-batches as the budget allows; among the cuts into
    that many, the one whose largest micro-batch is smallest is taken (balanced: a binary
    search on the cap). A row longer than ``budget`` gets a micro-batch of its own,
    flagged ``oversize``.

    Args:
        lengths: real tokens of each row ``# (B,)`` (right-padded rows).
        budget: padded tokens per micro-batch; ``None``: one micro-batch, the whole
            mini-batch untouched.
        packing: micro-batches of at most ``budget`` *real* tokens, each run as one
            packed row (:func:`agents.packing.pack_rows`, first-fit decreasing);
            ``budget`` is then required.

    Returns:
        The micro-batches, longest rows first; every row is in exactly one.
    """
    n_rows = int(lengths.shape[0])
    if n_rows == 0:
        raise ValueError("an empty mini-batch has no micro-batches")
    if budget is None:
        if packing:
            raise ValueError("packing needs micro_batch_tokens (a packed row's length), got None")
        return [WHOLE]
    if budget < 1:
        raise ValueError(f"micro_batch_tokens must be >= 1 or None, got {budget}")
    if packing:
        return _packed_plan([int(n) for n in lengths.tolist()], budget)
    order = sorted(range(n_rows), key=lambda i: (-int(lengths[i]), i))
    sorted_lengths = [int(lengths[i]) for i in order]
    count = len(_greedy(sorted_lengths, budget))
    lo, hi = 1, budget  # smallest cap that still needs no more than `count` groups
    while lo < hi:
        mid = (lo + hi) // 2
        if len(_greedy(sorted_lengths, mid)) <= count:
            hi = mid
        else:
            lo = mid + 1
    plan = []
    for group in _greedy(sorted_lengths, lo):
        rows = sorted(order[j] for j in group)
        width = sorted_lengths[group[0]]
        plan.append(
            MicroBatch(
                rows=torch.tensor(rows, dtype=torch.long),
                width=width,
                oversize=len(group) == 1 and width > budget,
            )
        )
    return plan


def _packed_plan(lengths: list[int], budget: int) -> list[MicroBatch]:
    plan = []
    for group in pack_rows(lengths, budget):
        width = max(lengths[i] for i in group)
        plan.append(
            MicroBatch(
                rows=torch.tensor(sorted(group), dtype=torch.long),
                width=width,
                oversize=len(group) == 1 and width > budget,
                packed=True,
            )
        )
    return plan


def forward_micro(
    model: nn.Module,
    mb: MicroBatch,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    **kwargs: Any,
) -> TokenOutputs:
    """:func:`~agents.model.forward_tokens` of one micro-batch's rows, already taken
    (``# (b, width)``): padded, or packed into one row when ``mb.packed`` (same outputs,
    in the padded layout)."""
    if not mb.packed:
        return forward_tokens(model, input_ids, attention_mask, **kwargs)
    row = max(int(attention_mask.sum()), 1)  # exactly one packed row: all of them
    return forward_tokens_packed(model, input_ids, attention_mask, row_tokens=row, **kwargs)


def plan_stats(plan: Sequence[MicroBatch]) -> dict[str, float]:
    """Log lines of a plan: ``micro_batches`` and ``oversize_rows`` (rows over budget)."""
    return {
        "micro_batches": float(len(plan)),
        "oversize_rows": float(sum(mb.oversize for mb in plan)),
    }


def _stitch(
    plan: Sequence[MicroBatch], parts: Sequence[TokenOutputs], shape: torch.Size
) -> TokenOutputs:
    """The micro-batches' detached outputs put back into mini-batch tensors ``# (B, T)``."""
    if len(plan) == 1 and plan[0].rows is None:
        only = parts[0]
        return TokenOutputs(
            *(None if x is None else x.detach() for x in (only.logprobs, only.entropy, only.values))
        )
    fields: dict[str, torch.Tensor | None] = {}
    for name in ("logprobs", "entropy", "values"):
        first = getattr(parts[0], name)
        if first is None:
            fields[name] = None
            continue
        full = torch.zeros(shape, dtype=first.dtype, device=first.device)
        for mb, part in zip(plan, parts):
            mb.put(full, getattr(part, name).detach())
        fields[name] = full
    return TokenOutputs(**fields)  # type: ignore[arg-type]


def accumulate(
    plan: Sequence[MicroBatch],
    step: Callable[[MicroBatch], tuple[torch.Tensor, TokenOutputs]],
    shape: torch.Size,
) -> TokenOutputs:
    """Forward and backward every micro-batch; the gradients add up in ``.grad``.

    Args:
        plan: from :func:`plan_micro_batches`.
        step: runs one micro-batch's forward and returns its loss (already normalised by
            the whole mini-batch's :class:`Normaliser`) and its per-token outputs.
        shape: the mini-batch's ``(B, T)``.

    Returns:
        The whole mini-batch's per-token outputs, detached (for its stats): one graph
        at a time is alive, so peak memory is one micro-batch's.
    """
    parts = []
    for mb in plan:
        loss, out = step(mb)
        loss.backward()
        parts.append(
            TokenOutputs(
                *(
                    None if x is None else x.detach()
                    for x in (out.logprobs, out.entropy, out.values)
                )
            )
        )
    return _stitch(plan, parts, shape)


@torch.no_grad()
def forward_in_micro_batches(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    budget: int | None,
    *,
    only: torch.Tensor | None = None,
    packing: bool = False,
    **kwargs: Any,
) -> TokenOutputs:
    """:func:`~agents.model.forward_tokens` without gradients, micro-batch by micro-batch.

    The old-policy / reference passes: the same budget (and ``packing``) as the update,
    outputs on the CPU ``# (B, T)`` (0 at padding, as ``forward_tokens``).
    """
    plan = plan_micro_batches(attention_mask.sum(-1), budget, packing)
    parts = []
    for mb in plan:
        out = forward_micro(
            model,
            mb,
            mb.take(input_ids),
            mb.take(attention_mask),
            only=None if only is None else mb.take(only),
            **kwargs,
        )
        parts.append(
            TokenOutputs(
                *(None if x is None else x.cpu() for x in (out.logprobs, out.entropy, out.values))
            )
        )
    return _stitch(plan, parts, input_ids.shape)
