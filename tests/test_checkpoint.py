"""Checkpoints and metrics files at the edges: damage, full disks, kills, reused run dirs."""

from __future__ import annotations

import builtins
import errno
import json
import logging
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="needs the [torch] extra")

from agents import checkpoint as checkpoint_module
from agents.checkpoint import (
    CorruptCheckpointError,
    latest_checkpoint,
    load_checkpoint,
    resume_checkpoint,
    save_checkpoint,
)
from agents.config import tiny_cpu
from agents.metrics import MetricsLogger

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def make_module(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(16, 8)


def save(run: Path, step: int, seed: int = 0, **kwargs) -> Path:
    return save_checkpoint(run, step, tiny_cpu(), {"model": make_module(seed)}, **kwargs)


def steps_in(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


# ------------------------------------------------------------------ pruning
def test_pruning_never_removes_the_checkpoint_just_written(tmp_path):
    save(tmp_path, 40, seed=1)  # another run's, later step
    path = save(tmp_path, 10, seed=2, keep=1)
    assert path.is_dir()
    assert steps_in(tmp_path) == ["step_00000010"]  # the other run's step 40 would be resumed
    module = make_module(0)
    load_checkpoint(path, {"model": module})
    torch.testing.assert_close(module.weight, make_module(2).weight)


def test_keep_counts_the_new_checkpoint(tmp_path):
    for step in (1, 2, 3, 4):
        save(tmp_path, step, keep=2)
    assert steps_in(tmp_path) == ["step_00000003", "step_00000004"]
    with pytest.raises(ValueError, match="keep must be >= 1"):
        save(tmp_path, 5, keep=0)
    assert steps_in(tmp_path) == ["step_00000003", "step_00000004"]


def test_keep_checkpoints_defaults_to_two_and_is_validated():
    from agents.config import apply_overrides

    assert tiny_cpu().keep_checkpoints == 2
    with pytest.raises(ValueError, match="keep_checkpoints"):
        apply_overrides(tiny_cpu(), {"keep_checkpoints": 0})


def test_same_step_again_replaces_the_old_one(tmp_path):
    save(tmp_path, 3, seed=1)
    path = save(tmp_path, 3, seed=2)
    module = make_module(0)
    load_checkpoint(path, {"model": module})
    torch.testing.assert_close(module.weight, make_module(2).weight)
    assert steps_in(tmp_path) == ["step_00000003"]  # no staging or trash dir left


# ------------------------------------------------------------------ checksums
def test_every_single_bit_flip_is_refused(tmp_path):
    path = save(tmp_path, 1)
    state = path / "state.pt"
    clean = state.read_bytes()
    rng = random.Random(0)
    for _ in range(40):
        data = bytearray(clean)
        bit = rng.randrange(len(data) * 8)
        data[bit // 8] ^= 1 << (bit % 8)
        state.write_bytes(bytes(data))
        with pytest.raises(CorruptCheckpointError, match="damaged checkpoint") as err:
            load_checkpoint(path, {"model": make_module(0)})
        assert str(state) in str(err.value)
    state.write_bytes(clean)
    load_checkpoint(path, {"model": make_module(0)})


def test_truncated_state_and_bad_manifest_are_refused(tmp_path):
    path = save(tmp_path, 1)
    state = path / "state.pt"
    state.write_bytes(state.read_bytes()[:-100])
    with pytest.raises(CorruptCheckpointError, match=r"bytes, checkpoint.json says"):
        load_checkpoint(path, {"model": make_module(0)})
    (path / "checkpoint.json").write_text("{cut")
    with pytest.raises(CorruptCheckpointError, match="unreadable checkpoint manifest"):
        load_checkpoint(path, {"model": make_module(0)})


def test_a_checkpoint_without_checksum_loads_with_a_warning(tmp_path, caplog):
    path = save(tmp_path, 1, seed=3)
    (path / "checkpoint.json").unlink()  # as written before checksums were recorded
    module = make_module(0)
    with caplog.at_level(logging.WARNING):
        load_checkpoint(path, {"model": module})
    assert "records no checksum" in caplog.text
    torch.testing.assert_close(module.weight, make_module(3).weight)


def test_resume_falls_back_to_the_previous_intact_checkpoint(tmp_path, caplog):
    save(tmp_path, 1)
    newest = save(tmp_path, 2)
    data = bytearray((newest / "state.pt").read_bytes())
    data[len(data) // 2] ^= 0x10
    (newest / "state.pt").write_bytes(bytes(data))
    assert latest_checkpoint(tmp_path) == newest
    with caplog.at_level(logging.WARNING):
        assert resume_checkpoint(tmp_path).name == "step_00000001"
    assert str(newest / "state.pt") in caplog.text
    older = tmp_path / "checkpoints" / "step_00000001" / "state.pt"
    older.write_bytes(older.read_bytes()[:10])
    with pytest.raises(CorruptCheckpointError, match="no intact checkpoint") as err:
        resume_checkpoint(tmp_path)
    assert str(older) in str(err.value) and str(newest / "state.pt") in str(err.value)
    assert resume_checkpoint(tmp_path / "elsewhere") is None  # nothing to resume: a fresh start


# ------------------------------------------------------------------ full disk, kills
def test_full_disk_during_a_save_says_so(tmp_path, monkeypatch):
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full (Linux)")
    save(tmp_path, 1)

    def full_disk_open(path, mode="r", *args, **kwargs):  # state.pt lands on a full disk
        return builtins.open("/dev/full", mode, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "open", full_disk_open, raising=False)
    with pytest.raises(OSError) as err:
        save(tmp_path, 2)
    assert err.value.errno == errno.ENOSPC
    assert "no space left on device" in str(err.value) and "step_00000002" in str(err.value)
    assert "unexpected pos" not in str(err.value)
    monkeypatch.undo()
    assert steps_in(tmp_path) == ["step_00000001"]  # no staging dir, the old one intact
    load_checkpoint(tmp_path / "checkpoints" / "step_00000001", {"model": make_module(0)})


def test_a_killed_saves_staging_dir_is_removed_by_the_next_save(tmp_path):
    root = tmp_path / "checkpoints"
    host = socket.gethostname()
    stale = root / f".tmp_step_{host}-{dead_pid()}-x1"
    live = root / f".tmp_step_{host}-{os.getpid()}-x2"  # another save in progress
    for d in (stale, live):
        d.mkdir(parents=True)
        (d / "state.pt").write_bytes(b"half")
    save(tmp_path, 1)
    assert not stale.exists() and live.exists()
    assert latest_checkpoint(tmp_path).name == "step_00000001"


# ------------------------------------------------------------------ metrics
def records_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_resume_drops_a_cut_last_metrics_line(tmp_path):
    jsonl = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "reward": s / 10}) for s in range(4)]
    jsonl.write_text("\n".join(lines) + '\n{"step": 4, "rew')  # killed during the append
    metrics = MetricsLogger(tmp_path, resume_step=4)
    assert [r["step"] for r in metrics.records] == [0, 1, 2, 3]
    metrics.log({"step": 4, "reward": 0.4})
    assert [r["step"] for r in records_of(jsonl)] == [0, 1, 2, 3, 4]
    assert (tmp_path / "metrics.csv").read_text().splitlines()[-1] == "4,0.4"


def test_a_bad_line_inside_metrics_is_an_error_naming_it(tmp_path):
    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text('{"step": 0}\nnot json\n{"step": 1}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2 is not a metrics record"):
        MetricsLogger(tmp_path, resume_step=1)


def test_metrics_files_are_untouched_until_the_first_record(tmp_path):
    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text('{"step": 0}\n{"step": 1}\n{"step": 2}\n')
    MetricsLogger(tmp_path, resume_step=1)  # a resume that then fails to start
    assert jsonl.read_text() == '{"step": 0}\n{"step": 1}\n{"step": 2}\n'


def test_a_failed_csv_rewrite_leaves_the_old_csv(tmp_path, monkeypatch):
    import csv

    metrics = MetricsLogger(tmp_path)
    metrics.log({"step": 0, "reward": 0.0})
    metrics.log({"step": 1, "reward": 0.5})
    before = (tmp_path / "metrics.csv").read_text()

    def disk_full(self, rows):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(csv.DictWriter, "writerows", disk_full)
    with pytest.raises(OSError):
        metrics.log({"step": 2, "reward": 1.0})
    assert (tmp_path / "metrics.csv").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv", "metrics.jsonl"]


def test_full_disk_while_saving_the_warm_start_says_so(tmp_path, monkeypatch):
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full (Linux)")
    from agents.checkpoint import atomic_torch_save

    target = tmp_path / "init_model.pt"
    atomic_torch_save({"w": torch.ones(3)}, target)
    monkeypatch.setattr(
        checkpoint_module,
        "open",
        lambda path, mode="r", *a, **k: builtins.open("/dev/full", mode, *a, **k),
        raising=False,
    )
    with pytest.raises(OSError, match="no space left on device while saving") as err:
        atomic_torch_save({"w": torch.zeros(1000)}, target)
    assert err.value.errno == errno.ENOSPC and str(target) in str(err.value)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["init_model.pt"]
    torch.testing.assert_close(torch.load(target)["w"], torch.ones(3))
