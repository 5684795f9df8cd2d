"""The final policy as an ordinary Hugging Face model directory, from a sharded model.

Every rank takes part in gathering the full state dict (collective); rank 0 alone holds
it (in CPU memory) and writes it with ``save_pretrained`` into a staging sibling of the
target, renamed into place once complete, so a reader never sees half an export.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from agents.distributed.collectives import on_main
from agents.distributed.context import DistContext


def full_state_dict(model: nn.Module, ctx: DistContext) -> dict[str, torch.Tensor]:
    """The whole model's state on rank 0, in CPU memory (collective; empty elsewhere).

    On an unsharded model (one process) it is the model's own ``state_dict()``."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not ctx.is_distributed:
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return cast(dict[str, torch.Tensor], get_model_state_dict(model, options=options))


def export_pretrained(
    model: nn.Module,
    ctx: DistContext,
    path: str | Path,
    tokenizer: Any = None,
    dtype: torch.dtype | None = None,
) -> Path | None:
    """Write the (sharded) ``transformers`` model to ``path`` with ``save_pretrained``.

    Call on every rank. An existing directory at ``path`` is replaced (only once the new
    one is complete).

    Args:
        model: the model (sharded or not).
        ctx: this rank.
        path: the target directory.
        tokenizer: also saved there when given.
        dtype: cast floating-point weights (e.g. ``torch.bfloat16``; default: as trained).

    Returns:
        ``path`` on rank 0, None elsewhere.
    """
    state = full_state_dict(model, ctx)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    target = Path(path)

    def write() -> str:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            cast(Any, model).save_pretrained(tmp, state_dict=state)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
                os.replace(target, old / target.name)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return str(target)

    done = on_main(ctx, write)
    return Path(done) if ctx.is_main else None
