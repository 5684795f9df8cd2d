"""FSDP2 sharding of the policy, the critic's head and the frozen reference model.

:func:`shard_model` applies ``fully_shard`` to every decoder layer, then to the root
(which holds the embeddings, the final norm and a tied LM head together, so tying is
kept). Parameters are sharded over the ranks; each layer's full parameters exist only
while it runs (``reshard_after_forward=True``, ZeRO-3) or until its backward (False).

On CUDA, layers compute in bf16 with fp32 gradient reduction (the sharded fp32
parameters stay the optimizer's master weights); on CPU everything stays fp32.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from agents.config.schema import FSDPConfig
from agents.distributed.context import DistContext

logger = logging.getLogger(__name__)

_RESHARD_ATTR = "_dist_reshard_after_forward"
"""A unit's ``reshard_after_forward``, kept on it (FSDP2 does not expose it) so that
:func:`gathered` can restore it."""


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks: modules of the classes a ``transformers`` model lists
    in ``_no_split_modules`` (e.g. ``Qwen2DecoderLayer``), in order.

    Raises:
        ValueError: the model names no such class, or none of its modules is one.
    """
    names = set(getattr(model, "_no_split_modules", None) or [])
    if not names:
        raise ValueError(
            f"{type(model).__name__} does not name its decoder layer class "
            "(_no_split_modules): cannot shard it layer by layer"
        )
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no module of class {sorted(names)}")
    return layers


def mixed_precision(ctx: DistContext, param_dtype: torch.dtype | None = None) -> Any:
    """bf16 compute with fp32 gradient reduction on CUDA; fp32 throughout on CPU (its
    bf16 matmuls are slow, and the CPU tests compare to fp32 1-rank runs)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if param_dtype is None:
        param_dtype = torch.bfloat16 if ctx.device.type == "cuda" else None
    return MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)


def _offload(enabled: bool, ctx: DistContext) -> Any:
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy

    # Pinned memory speeds host<->GPU copies; on a CPU-only run there is nothing to pin.
    return CPUOffloadPolicy(pin_memory=ctx.device.type == "cuda") if enabled else OffloadPolicy()


def _check(ctx: DistContext) -> None:
    if not ctx.is_distributed:
        raise ValueError(
            "sharding needs a process group: launch with torchrun (init_distributed), or "
            "skip shard_model in a single process"
        )


def shard_model(
    model: nn.Module,
    ctx: DistContext,
    cfg: FSDPConfig,
    *,
    param_dtype: torch.dtype | None = None,
    mesh: Any = None,
    root_reshard: bool = False,
) -> nn.Module:
    """Shard a ``transformers`` causal LM in place with FSDP2 (per decoder layer, then the
    root) and return it (its class becomes ``FSDP<Name>``; names of parameters and of
    ``state_dict()`` keys stay the same).

    Call the model itself (``model(input_ids=..., output_hidden_states=True)``), never
    ``model.base_model(...)``: FSDP2 gathers the root's parameters (the embeddings) in
    the root's forward hook, and a bypassing call fails on a sharded embedding. Applying
    ``model.get_output_embeddings()`` to chunks of the last hidden state after the
    forward works while the root stays gathered (the default, ``root_reshard=False``).

    Build the optimizer *after* this call: it must hold the sharded parameters.

    Args:
        model: the model, on the CPU or on ``ctx.device``.
        ctx: this rank (a started process group).
        cfg: ``cpu_offload`` (parameters, gradients and optimizer state in CPU memory
            between uses; the optimizer step then runs on the CPU) and
            ``reshard_after_forward``.
        param_dtype: compute dtype of the gathered parameters (default: see
            :func:`mixed_precision`).
        mesh: a device mesh (default: all ranks, :meth:`DistContext.mesh`).
        root_reshard: free the root's gathered parameters after the forward too.

    Raises:
        ValueError: no process group, or the model's layers cannot be found.
    """
    from torch.distributed.fsdp import fully_shard

    _check(ctx)
    mesh = ctx.mesh() if mesh is None else mesh
    layers = decoder_layers(model)
    kwargs = {
        "mesh": mesh,
        "mp_policy": mixed_precision(ctx, param_dtype),
        "offload_policy": _offload(cfg.cpu_offload, ctx),
    }
    if not cfg.cpu_offload and ctx.device.type == "cuda":
        model.to(ctx.device)
    for layer in layers:
        fully_shard(layer, reshard_after_forward=cfg.reshard_after_forward, **kwargs)
        setattr(layer, _RESHARD_ATTR, cfg.reshard_after_forward)
    # The root (embeddings, final norm, LM head) runs first in the backward, so by
    # default it is kept after the forward rather than gathered again at once (FSDP2's
    # own heuristic). It also lets a loop apply the LM head to chunks of the hidden
    # states after the forward (the logits are never whole); root_reshard=True frees it.
    fully_shard(model, reshard_after_forward=root_reshard, **kwargs)
    setattr(model, _RESHARD_ATTR, root_reshard)
    logger.info(
        "sharded %s over %d ranks: %d layers + root (reshard_after_forward=%s, cpu_offload=%s)",
        type(model).__name__,
        ctx.world_size,
        len(layers),
        cfg.reshard_after_forward,
        cfg.cpu_offload,
    )
    return model


def shard_reference(
    ref_model: nn.Module,
    ctx: DistContext,
    cfg: FSDPConfig,
    *,
    param_dtype: torch.dtype | None = None,
    mesh: Any = None,
) -> nn.Module:
    """Shard the frozen reference model (no gradients, eval mode), offloading its shards
    to CPU memory when ``cfg.ref_offload``. Its layers are resharded after every forward;
    its root stays gathered (so an LM head applied to chunks after the forward works, as
    for the policy) until :func:`reshard` frees it after the pass."""
    for p in ref_model.parameters():
        p.requires_grad_(False)
    ref_cfg = FSDPConfig(
        cpu_offload=cfg.ref_offload, reshard_after_forward=True, ref_offload=cfg.ref_offload
    )
    return shard_model(ref_model.eval(), ctx, ref_cfg, param_dtype=param_dtype, mesh=mesh)


def reshard(model: nn.Module) -> None:
    """Free every gathered parameter of a sharded model now (e.g. the root after a no-grad
    pass, which has no backward to free it); a no-op on a model that is not sharded."""
    for unit in _fsdp_modules(model):
        unit.reshard()


def shard_module(
    module: nn.Module, ctx: DistContext, cfg: FSDPConfig, *, mesh: Any = None
) -> nn.Module:
    """Shard a small extra module (PPO's value head) as its own FSDP2 unit, fp32."""
    from torch.distributed.fsdp import fully_shard

    _check(ctx)
    fully_shard(
        module,
        mesh=ctx.mesh() if mesh is None else mesh,
        reshard_after_forward=cfg.reshard_after_forward,
        mp_policy=mixed_precision(ctx, torch.float32),
        offload_policy=_offload(cfg.cpu_offload, ctx),
    )
    setattr(module, _RESHARD_ATTR, cfg.reshard_after_forward)
    return module


def _fsdp_modules(model: nn.Module) -> list[Any]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[nn.Module]:
    """Keep every layer's full parameters gathered inside the block.

    Generation with the HF back end runs one forward per token, and ranks generate
    different numbers of tokens; sharded, each forward is a collective and a rank that
    stops early would leave the others waiting. Inside this block the parameters are
    gathered once, forwards run without communication, so ranks may call the model a
    different number of times (evaluation may even run on some ranks only). It costs
    the memory of the full model in the compute dtype; gradients must not be taken.
    A no-op for a model that is not sharded.
    """
    units = _fsdp_modules(model)
    if not units:
        yield model
        return
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        for unit in units:
            unit.unshard()
        with torch.no_grad():
            yield model
    finally:
        for unit in units:
            unit.reshard()
        for unit in units:  # back to what each unit was sharded with
            unit.set_reshard_after_forward(getattr(unit, _RESHARD_ATTR, True), recurse=False)


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` (or a module in it) is sharded with FSDP2."""
    return bool(_fsdp_modules(model))
