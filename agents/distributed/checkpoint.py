"""Sharded, atomic, checksummed checkpoints of a multi-rank run (``torch.distributed.checkpoint``).

The same layout and guarantees as :mod:`agents.checkpoint`, for FSDP2-sharded state::

    {run_dir}/checkpoints/step_{N:08d}/
        dcp/            model and optimizer state, one shard file per rank (DCP)
        trainer.pt      scheduler, step, extra state (rank 0; the same on every rank)
        rng_rank{r}.pt  each rank's generator states
        config.json     the run's config
        checkpoint.json format, step, world size, and size + sha256 of every file above

Every rank writes its shards into one staging directory (made by rank 0, named after it,
so a later save removes one a killed job left); once all files are written and hashed
(the hashing shared out over the ranks), rank 0 writes the manifest and renames the
directory into place. A job killed mid-save never leaves a half checkpoint under a
``step_*`` name, and resuming verifies every file, falling back to an older intact
checkpoint. The run directory must be on a file system all ranks see (one node, or a
shared file system across nodes).

DCP reshards on load: a checkpoint of W ranks loads on any number of ranks, a single
process included (only the RNG states are per rank; a rank without one keeps its own).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from agents.checkpoint import (
    CHECKPOINT_DIR,
    MANIFEST_NAME,
    STAGING_PREFIX,
    CorruptCheckpointError,
    _prune,
    publish_dir,
    rng_state,
    set_rng_state,
    step_of,
)
from agents.distributed.collectives import all_succeed, gather_objects, on_main
from agents.distributed.context import DistContext
from search_env.files import atomic_write_text, fsync, make_staging_dir, sha256_of

logger = logging.getLogger(__name__)

FORMAT_NAME = "agents.distributed.checkpoint"
DCP_DIR = "dcp"
TRAINER_NAME = "trainer.pt"


def rng_name(rank: int) -> str:
    """The file of one rank's generator states."""
    return f"rng_rank{rank}.pt"


def _state_dicts(
    modules: Mapping[str, nn.Module], optimizer: torch.optim.Optimizer | None
) -> tuple[nn.Module, dict[str, Any]]:
    """The sharded state of ``modules`` (and ``optimizer``), keyed as DCP saves it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    container = nn.ModuleDict(dict(modules))
    if optimizer is None:
        return container, {"model": get_model_state_dict(container)}
    model_sd, optim_sd = get_state_dict(container, optimizer)
    return container, {"model": model_sd, "optim": optim_sd}


def _hash_share(directory: Path, ctx: DistContext) -> dict[str, dict[str, Any]]:
    """Size and sha256 of this rank's share of the files under ``directory`` (rank ``r``
    hashes every W-th file, so no rank reads the whole checkpoint)."""
    names = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
    return {
        name: {"size": (directory / name).stat().st_size, "sha256": sha256_of(directory / name)}
        for name in names[ctx.rank :: ctx.world_size]
    }


# ----------------------------------------------------------------------- saving
def save_dist_checkpoint(
    run_dir: str | Path,
    step: int,
    ctx: DistContext,
    modules: Mapping[str, nn.Module],
    optimizer: torch.optim.Optimizer | None = None,
    *,
    scheduler: Any = None,
    extra: dict[str, Any] | None = None,
    config: Any = None,
    keep: int = 2,
) -> Path:
    """Write ``{run_dir}/checkpoints/step_{step}`` from every rank; keep the newest ``keep``.

    Call on every rank at the same point (it is collective).

    Args:
        run_dir: the run directory (seen by every rank).
        step: RL steps completed.
        ctx: this rank.
        modules: the (sharded) models by name, e.g. ``{"model": policy}`` or, for PPO,
            ``{"model": policy, "value_head": head}``.
        optimizer: one optimizer over their parameters.
        scheduler: saved by rank 0 (its state is the same on every rank).
        extra: more picklable state, the same on every rank (rank 0's is saved).
        config: a :class:`~agents.config.TrainConfig` to save beside the state.
        keep: checkpoints to keep, this one included (see :func:`agents.checkpoint.save_checkpoint`).

    Returns:
        The published checkpoint directory.

    Raises:
        ValueError: ``keep`` < 1.
        OSError: the disk is full (``errno.ENOSPC``, naming the checkpoint) or another
            write error; the checkpoints already saved are left as they were.
        RuntimeError: a write failed on another rank (named).
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    root = Path(run_dir) / CHECKPOINT_DIR
    final = root / f"step_{step:08d}"
    tmp = Path(on_main(ctx, lambda: str(make_staging_dir(root, STAGING_PREFIX))))
    try:
        _write(tmp, step, ctx, modules, optimizer, scheduler, extra, config)
        mine = all_succeed(ctx, lambda: _hash_share(tmp, ctx))
        records = {k: v for part in gather_objects(mine, ctx) for k, v in part.items()}
        on_main(ctx, lambda: _publish(tmp, final, root, step, ctx, records, keep))
    except BaseException as e:
        # No collective here: the ranks may have failed at different points.
        if ctx.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise OSError(
                errno.ENOSPC,
                f"no space left on device while saving checkpoint {final} "
                f"(free space, or lower keep_checkpoints)",
                str(final),
            ) from e
        raise
    return final


def _write(
    tmp: Path,
    step: int,
    ctx: DistContext,
    modules: Mapping[str, nn.Module],
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any,
    extra: dict[str, Any] | None,
    config: Any,
) -> None:
    """Every rank's files into the staging directory ``tmp``."""
    import torch.distributed.checkpoint as dcp

    _, state = _state_dicts(modules, optimizer)
    # collective; raises on every rank (no_dist: one process without a group)
    dcp.save(state, checkpoint_id=str(tmp / DCP_DIR), no_dist=not ctx.is_distributed)

    def own_files() -> None:
        _save_file({"rng": rng_state(), "rank": ctx.rank}, tmp / rng_name(ctx.rank))
        if ctx.is_main:
            trainer = {
                "step": step,
                "world_size": ctx.world_size,
                "modules": sorted(modules),
                "has_optimizer": optimizer is not None,
                "scheduler": None if scheduler is None else scheduler.state_dict(),
                "extra": extra or {},
            }
            _save_file(trainer, tmp / TRAINER_NAME)
            if config is not None:
                from agents.config import to_dict

                text = json.dumps(to_dict(config), indent=2, sort_keys=True) + "\n"
                atomic_write_text(tmp / "config.json", text)

    all_succeed(ctx, own_files)


def _save_file(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _publish(
    tmp: Path,
    final: Path,
    root: Path,
    step: int,
    ctx: DistContext,
    records: dict[str, dict[str, Any]],
    keep: int,
) -> None:
    """Rank 0: the manifest, then the rename into place, then pruning."""
    manifest = {
        "format": FORMAT_NAME,
        "step": step,
        "world_size": ctx.world_size,
        "files": records,
    }
    atomic_write_text(tmp / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    for sub in [tmp / DCP_DIR, tmp]:
        fsync(sub)
    publish_dir(tmp, final)
    _prune(root, step, keep)


# ---------------------------------------------------------------------- finding
def dist_checkpoints(run_dir: str | Path) -> list[Path]:
    """Sharded checkpoint directories (holding a ``dcp`` directory), oldest first."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [
        (s, p) for p in root.iterdir() if (s := step_of(p)) is not None and (p / DCP_DIR).is_dir()
    ]
    return [p for _, p in sorted(found)]


def _problems(path: Path, ctx: DistContext) -> list[str]:
    """What is wrong with a checkpoint (empty: intact); every rank checks a share of the
    files, and every rank gets the whole list."""
    manifest_path = path / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT_NAME:
            raise ValueError(f"format {manifest.get('format')!r}, not {FORMAT_NAME!r}")
        records = {str(k): (int(v["size"]), str(v["sha256"])) for k, v in manifest["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        local = [f"unreadable checkpoint manifest {manifest_path}: {e}"]
        return sorted({m for part in gather_objects(local, ctx) for m in part})
    local = []
    names = sorted(records)
    if TRAINER_NAME not in records or not any(n.startswith(DCP_DIR + "/") for n in names):
        local.append(f"checkpoint {path}: its manifest lists no {TRAINER_NAME} or {DCP_DIR} files")
    for name in names[ctx.rank :: ctx.world_size]:
        file, (size, sha) = path / name, records[name]
        try:
            if not file.is_file():
                local.append(f"damaged checkpoint {path}: {name} is missing")
            elif file.stat().st_size != size:
                local.append(
                    f"damaged checkpoint {file}: {file.stat().st_size} bytes, "
                    f"{MANIFEST_NAME} says {size}"
                )
            elif sha256_of(file) != sha:
                local.append(f"damaged checkpoint {file}: sha256 differs from {MANIFEST_NAME}")
        except OSError as e:  # reported like a damaged file, never left to one rank
            local.append(f"cannot read {file}: {e}")
    return [m for part in gather_objects(local, ctx) for m in part]


def verify_dist_checkpoint(path: str | Path, ctx: DistContext) -> None:
    """Check every file of a sharded checkpoint against its manifest (collective).

    Raises:
        CorruptCheckpointError: naming each damaged or missing file.
    """
    problems = _problems(Path(path), ctx)
    if problems:
        raise CorruptCheckpointError("; ".join(problems))


def resume_dist_checkpoint(run_dir: str | Path, ctx: DistContext) -> Path | None:
    """The newest intact sharded checkpoint, falling back past damaged ones (collective:
    the same answer on every rank); None if there is none.

    Raises:
        CorruptCheckpointError: checkpoints exist but every one of them is damaged.
    """
    found = [Path(p) for p in on_main(ctx, lambda: [str(p) for p in dist_checkpoints(run_dir)])]
    seen: list[str] = []
    for path in reversed(found):
        problems = _problems(path, ctx)
        if not problems:
            if seen:
                logger.warning("resuming from %s, the newest intact checkpoint", path)
            return path
        logger.warning("%s; trying the previous checkpoint", "; ".join(problems))
        seen += problems
    if seen:
        raise CorruptCheckpointError(
            f"no intact checkpoint in {Path(run_dir) / CHECKPOINT_DIR}: " + "; ".join(seen)
        )
    return None


# ---------------------------------------------------------------------- loading
def load_dist_checkpoint(
    path: str | Path,
    ctx: DistContext,
    modules: Mapping[str, nn.Module],
    optimizer: torch.optim.Optimizer | None = None,
    *,
    scheduler: Any = None,
    verify: bool = True,
) -> tuple[int, dict[str, Any]]:
    """Load a sharded checkpoint into ``modules`` (and ``optimizer``, ``scheduler``) in
    place, on every rank (collective), and this rank's generator states.

    The modules must be sharded (or not) as they will be trained, and ``optimizer``
    built over their parameters, before the call.

    Returns:
        ``(step, extra)``.

    Raises:
        CorruptCheckpointError: a file is damaged (``verify``) or cannot be read.
        KeyError: the checkpoint lacks one of ``modules`` or the optimizer.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    path = Path(path)
    if verify:
        verify_dist_checkpoint(path, ctx)

    def read_trainer() -> dict[str, Any]:
        try:
            return torch.load(path / TRAINER_NAME, map_location="cpu", weights_only=False)
        except (RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError) as e:
            raise CorruptCheckpointError(f"cannot read {path / TRAINER_NAME}: {e}") from e

    trainer = all_succeed(ctx, read_trainer)
    missing = sorted(set(modules) - set(trainer["modules"]))
    if missing or (optimizer is not None and not trainer["has_optimizer"]):
        what = missing or ["optimizer"]
        raise KeyError(f"checkpoint {path} has no {', '.join(map(repr, what))} state")
    container, state = _state_dicts(modules, optimizer)
    try:
        dcp.load(state, checkpoint_id=str(path / DCP_DIR), no_dist=not ctx.is_distributed)
    except Exception as e:  # DCP wraps every rank's failure in its CheckpointException
        raise CorruptCheckpointError(f"cannot load {path / DCP_DIR}: {e}") from e
    set_state_dict(
        container,
        [] if optimizer is None else optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state.get("optim", {}),
    )
    if scheduler is not None and trainer["scheduler"] is not None:
        scheduler.load_state_dict(trainer["scheduler"])
    own = path / rng_name(ctx.rank)
    if own.is_file():
        set_rng_state(torch.load(own, map_location="cpu", weights_only=False)["rng"])
    else:
        logger.warning(
            "%s has no generator states for rank %d (saved by %d ranks): keeping this rank's own",
            path,
            ctx.rank,
            trainer["world_size"],
        )
    return int(trainer["step"]), trainer["extra"]
