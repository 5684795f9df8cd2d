"""Small pieces the GRPO and PPO loops share under ``torchrun`` (global mini-batch
counts, scalars of sharded tensors)."""

from __future__ import annotations

import torch

from agents.distributed.collectives import all_reduce_sum
from agents.distributed.context import DistContext
from agents.microbatch import Normaliser


def global_normaliser(mask: torch.Tensor, live: bool, ctx: DistContext) -> Normaliser:
    """The counts of one global mini-batch: every rank's rows of ``mask`` ``# (b, T)``
    added up (a stand-in, ``live=False``, adds none)."""
    local = Normaliser.of(mask) if live else Normaliser(0, 0, 0)
    total = all_reduce_sum(torch.tensor([local.tokens, local.seqs, local.seqs_with_tokens]), ctx)
    return Normaliser(*(int(v) for v in total.tolist()))


def scalar(x: torch.Tensor) -> float:
    """A 0-d tensor as a float, gathering it first when it is a DTensor (e.g. the
    gradient norm of a sharded model)."""
    full = getattr(x, "full_tensor", None)
    return float(full() if callable(full) else x)
