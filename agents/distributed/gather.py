"""Full weights out of an FSDP2-sharded model, one tensor at a time (for a colocated vLLM).

A vLLM engine on each GPU samples from its own full copy of the policy. After an update,
:func:`iter_full_state` all-gathers the sharded model's tensors one by one, in
``state_dict()`` order and naming, optionally cast to the engine's dtype *before* the
gather (half the traffic, and never an fp32 copy of more than one tensor): the consumer
(``reload_weights`` of a vLLM engine) copies each into place before the next is made.
Every rank must iterate to the end (each gather is a collective); every rank receives
the full tensors, for its own engine.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn


def _is_dtensor(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


@torch.no_grad()
def iter_full_state(
    model: nn.Module,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, full tensor)`` for every entry of ``model.state_dict()``, lazily.

    Works on an unsharded model too (its tensors are yielded as they are, cast/moved as
    asked), so the caller needs no special case for one process.

    Args:
        model: the (sharded) model.
        dtype: cast floating-point tensors to this dtype (before gathering).
        device: where the full tensors go (default: where the gather happens, the
            rank's device).
    """
    for name, tensor in model.state_dict().items():
        t = tensor.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        if _is_dtensor(t):
            t = t.full_tensor()  # the collective: one tensor's all-gather
        if device is not None:
            t = t.to(device)
        yield name, t
