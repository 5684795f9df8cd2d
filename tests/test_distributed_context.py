"""DistContext from torchrun's environment: the single-process default, clear errors for
a wrong environment or a process group that cannot start, and a real torchrun launch."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

from agents.distributed import (  # noqa: E402
    DistContext,
    DistributedInitError,
    context_from_env,
    init_distributed,
)

ROOT = Path(__file__).resolve().parents[1]


def job_env(**over: str) -> dict[str, str]:
    env = {
        "RANK": "0",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29555",
    }
    env.update(over)
    return {k: v for k, v in env.items() if v != "-"}


def test_without_world_size_it_is_the_single_process_context():
    ctx = context_from_env({}, device="cpu")
    assert ctx == DistContext()
    assert ctx.is_main and not ctx.is_distributed and ctx.world_size == 1
    started = init_distributed(device="cpu", env={})
    assert not started.is_distributed and not dist.is_initialized()
    started.barrier()  # no-ops
    started.destroy()


def test_the_environment_gives_rank_world_and_backend():
    ctx = context_from_env(job_env(RANK="1", LOCAL_RANK="1"), device="cpu")
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.local_world_size) == (1, 2, 1, 2)
    assert ctx.backend == "gloo" and ctx.device == torch.device("cpu") and not ctx.is_main


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"RANK": "-"}, "RANK is not"),
        ({"LOCAL_RANK": "-"}, "LOCAL_RANK is not"),
        ({"MASTER_PORT": "-"}, "MASTER_PORT is not"),
        ({"MASTER_ADDR": ""}, "MASTER_ADDR is not"),
        ({"RANK": "two"}, "RANK must be an integer, got 'two'"),
        ({"RANK": "2"}, "RANK=2 is not in a world of WORLD_SIZE=2"),
        ({"WORLD_SIZE": "0"}, "not in a world"),
        ({"LOCAL_RANK": "3"}, "LOCAL_RANK=3 is not in a node of LOCAL_WORLD_SIZE=2"),
    ],
)
def test_a_wrong_environment_is_named(over, match):
    with pytest.raises(DistributedInitError, match=match):
        context_from_env(job_env(**over), device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_says_how_many_processes_fit():
    with pytest.raises(DistributedInitError, match="0 CUDA device"):
        context_from_env(job_env(), device="cuda")


def test_a_bad_device_name_is_refused():
    with pytest.raises(ValueError, match="device must be"):
        context_from_env({}, device="tpu")


def test_a_context_out_of_range_is_refused():
    with pytest.raises(ValueError, match="rank 2 is not in a world of size 2"):
        DistContext(rank=2, world_size=2)


def test_a_mesh_needs_a_process_group():
    with pytest.raises(RuntimeError, match="torchrun"):
        DistContext().mesh()


def test_a_group_whose_other_rank_never_comes_fails_with_the_address():
    """WORLD_SIZE=2 but no rank 1: the start times out with an error naming the job,
    and no half-started group is left behind."""
    from dist_harness import free_port

    port = str(free_port())
    with pytest.raises(
        DistributedInitError, match=rf"rank 0 of 2 .* 127\.0\.0\.1:{port} with gloo"
    ):
        init_distributed(
            device="cpu", timeout=datetime.timedelta(seconds=1), env=job_env(MASTER_PORT=port)
        )
    assert not dist.is_initialized()


def test_a_rank_with_no_master_to_reach_fails_with_the_address():
    from dist_harness import free_port

    port = str(free_port())  # nobody listens there
    with pytest.raises(DistributedInitError, match=rf"rank 1 of 2 .*{port}"):
        init_distributed(
            device="cpu",
            timeout=datetime.timedelta(seconds=1),
            env=job_env(RANK="1", LOCAL_RANK="1", MASTER_PORT=port),
        )
    assert not dist.is_initialized()


@pytest.mark.slow
def test_torchrun_launches_two_gloo_ranks_that_train_one_sharded_step():
    """The real launcher: ``torchrun --nproc-per-node 2 -m agents.distributed.check``."""
    pytest.importorskip("transformers")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", "-m", "agents.distributed.check", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=240, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["ok"] and report["world_size"] == 2 and report["backend"] == "gloo"
    assert report["rank_sum"] == 1.0 and report["weights_agree"]
