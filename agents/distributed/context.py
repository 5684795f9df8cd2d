"""Which process this is in a ``torchrun`` job, and the process group's life cycle.

``torchrun --nproc-per-node N`` starts N processes and tells each who it is through
environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``). :func:`init_distributed` reads them, picks the
device of the local rank (``cuda:LOCAL_RANK`` on a GPU node, else the CPU), starts the
process group (NCCL on CUDA, gloo on CPU) and returns a :class:`DistContext`. Without
``WORLD_SIZE`` (a plain ``python -m agents.train``) it returns the single-process
context, on which every collective of :mod:`agents.distributed` is a no-op.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

logger = logging.getLogger(__name__)

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""What a process needs to join a job (``LOCAL_WORLD_SIZE`` is optional)."""


class DistributedInitError(RuntimeError):
    """The job's environment variables are wrong, or the process group did not start."""


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job: rank, world size and device.

    The default instance is the single-process context (rank 0 of 1, no process group).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    """``"gloo"`` or ``"nccl"``; None when no process group was started."""
    _on_destroy: list[Callable[[], None]] = field(
        default_factory=list, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in a world of size {self.world_size}")
        if self.local_world_size < 1 or not 0 <= self.local_rank < self.local_world_size:
            raise ValueError(
                f"local rank {self.local_rank} is not in a node of {self.local_world_size}"
            )

    @property
    def is_distributed(self) -> bool:
        """Whether a process group runs (even one of a single rank)."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes logs, plots and exports."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (a no-op in a single process)."""
        if self.is_distributed:
            import torch.distributed as dist

            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def mesh(self) -> Any:
        """A 1-D device mesh over all ranks, its device type explicit (``cpu`` with gloo:
        FSDP2 on a gloo group must not guess CUDA, pytorch #132471)."""
        if not self.is_distributed:
            raise RuntimeError("a device mesh needs a process group: launch with torchrun")
        from torch.distributed.device_mesh import init_device_mesh

        return init_device_mesh(self.device.type, (self.world_size,), mesh_dim_names=("dp",))

    def on_destroy(self, fn: Callable[[], None]) -> None:
        """Have :meth:`destroy` call ``fn`` first (the last registered first): for what must
        go while the process group still exists, e.g. a vLLM engine in the job's group,
        whose shutdown destroys that group too (after which :meth:`destroy` has nothing
        left to do)."""
        self._on_destroy.append(fn)

    def destroy(self) -> None:
        """Run the :meth:`on_destroy` calls, then stop the process group unless one of them
        did (call once, at the end of the job, after the last collective). The others and
        the group's teardown still run after a call that raises; the first error is then
        raised again."""
        error: Exception | None = None
        while self._on_destroy:
            fn = self._on_destroy.pop()
            try:
                fn()
            except Exception as e:
                logger.exception("rank %d: %r failed at teardown", self.rank, fn)
                error = error or e
        if self.is_distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        if error is not None:
            raise error


def _int_var(env: Mapping[str, str], name: str) -> int:
    value = env.get(name)
    if value is None:
        raise DistributedInitError(
            f"WORLD_SIZE is set but {name} is not: launch with torchrun, which sets "
            f"{', '.join(TORCHRUN_VARS)}"
        )
    try:
        return int(value)
    except ValueError:
        raise DistributedInitError(f"{name} must be an integer, got {value!r}") from None


def context_from_env(env: Mapping[str, str] | None = None, device: str = "auto") -> DistContext:
    """The rank, world and device that the environment describes (nothing is started).

    Args:
        env: the environment (``os.environ`` by default).
        device: ``"auto"`` (``cuda:LOCAL_RANK`` when CUDA is available, else the CPU),
            ``"cpu"`` or ``"cuda"``.

    Raises:
        DistributedInitError: ``WORLD_SIZE`` is set but another variable is missing or
            not an integer, the ranks are out of range, or the local rank has no GPU.
    """
    env = os.environ if env is None else env
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if "WORLD_SIZE" not in env:
        return DistContext(device=torch.device("cuda", 0) if use_cuda else torch.device("cpu"))
    world = _int_var(env, "WORLD_SIZE")
    rank = _int_var(env, "RANK")
    local_rank = _int_var(env, "LOCAL_RANK")
    local_world = _int_var(env, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else world
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not env.get(name):
            raise DistributedInitError(f"WORLD_SIZE is set but {name} is not (use torchrun)")
    if world < 1 or not 0 <= rank < world:
        raise DistributedInitError(f"RANK={rank} is not in a world of WORLD_SIZE={world}")
    if not 0 <= local_rank < local_world:
        raise DistributedInitError(
            f"LOCAL_RANK={local_rank} is not in a node of LOCAL_WORLD_SIZE={local_world}"
        )
    if use_cuda:
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise DistributedInitError(
                f"LOCAL_RANK={local_rank} but this node has {count} CUDA device(s): start "
                f"at most {count} processes per node (--nproc-per-node)"
            )
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    return DistContext(
        rank=rank,
        world_size=world,
        local_rank=local_rank,
        local_world_size=local_world,
        device=dev,
        backend="nccl" if dev.type == "cuda" else "gloo",
    )


def init_distributed(
    device: str = "auto",
    timeout: datetime.timedelta = datetime.timedelta(minutes=30),
    env: Mapping[str, str] | None = None,
) -> DistContext:
    """Join the job ``torchrun`` started, or return the single-process context.

    Args:
        device: see :func:`context_from_env`.
        timeout: how long a collective (and the start itself) may wait for other ranks.
        env: the environment (``os.environ`` by default).

    Raises:
        DistributedInitError: the environment is wrong (see :func:`context_from_env`),
            torch.distributed or the backend is missing, or the process group could not
            start (another rank never came, the address is unreachable): the message
            names the rank, the world size and ``MASTER_ADDR:MASTER_PORT``.
    """
    ctx = context_from_env(env, device)
    if not ctx.is_distributed:
        return ctx
    import torch.distributed as dist

    if not dist.is_available():
        raise DistributedInitError("this torch build has no torch.distributed")
    if ctx.backend == "gloo" and not dist.is_gloo_available():
        raise DistributedInitError("this torch build has no gloo backend (needed on CPU)")
    if ctx.backend == "nccl" and not dist.is_nccl_available():
        raise DistributedInitError("this torch build has no NCCL backend (needed on CUDA)")
    if dist.is_initialized():
        raise DistributedInitError("the process group is already started in this process")
    env = os.environ if env is None else env
    where = f"{env.get('MASTER_ADDR')}:{env.get('MASTER_PORT')}"
    if ctx.device.type == "cuda":
        torch.cuda.set_device(ctx.device)
    try:
        dist.init_process_group(
            backend=ctx.backend,
            init_method=f"tcp://{where}",
            rank=ctx.rank,
            world_size=ctx.world_size,
            timeout=timeout,
            device_id=ctx.device if ctx.device.type == "cuda" else None,
        )
    except Exception as e:  # torch raises several types (DistStoreError, RuntimeError)
        raise DistributedInitError(
            f"rank {ctx.rank} of {ctx.world_size} could not join the process group at "
            f"{where} with {ctx.backend}: {e}"
        ) from e
    logger.info(
        "rank %d of %d (local %d) on %s with %s",
        ctx.rank,
        ctx.world_size,
        ctx.local_rank,
        ctx.device,
        ctx.backend,
    )
    return ctx
