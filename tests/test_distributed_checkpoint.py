"""Sharded checkpoints (DCP): exact resume on 2 gloo ranks, fallback past a damaged
checkpoint, errors that reach every rank, loading on another world size, the HF export."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
pytest.importorskip("torch.distributed.checkpoint")
pytest.importorskip("transformers")

from dist_harness import StepConfig, make_batch, run_ranks, tiny_model, train_sharded  # noqa: E402

from agents.checkpoint import CorruptCheckpointError  # noqa: E402
from agents.distributed import (  # noqa: E402
    DistContext,
    load_dist_checkpoint,
    resume_dist_checkpoint,
    save_dist_checkpoint,
    verify_dist_checkpoint,
)
from agents.optim import warmup_schedule  # noqa: E402

needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed + gloo"
)
CFG = StepConfig(epochs=1, minibatch_size=4)


def trainer(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    return opt, warmup_schedule(opt, 0.5, 10)


def local_state(model, opt):
    """This rank's shards of the parameters and of the optimizer state, cloned."""

    def local(t):
        return (t.to_local() if hasattr(t, "to_local") else t).detach().clone()

    params = {k: local(v) for k, v in model.state_dict().items()}
    names = {id(p): n for n, p in model.named_parameters()}
    moments = {
        (names[id(p)], key): local(value)
        for p, state in opt.state.items()
        for key, value in state.items()
    }
    return params, moments


def _save_resume(ctx, run_dir):
    from pathlib import Path

    from agents.config.schema import FSDPConfig
    from agents.distributed import export_pretrained, iter_full_state, shard_model

    run_dir = Path(run_dir)
    out = {}
    batch = make_batch()
    model = shard_model(tiny_model(), ctx, FSDPConfig())
    opt, sched = trainer(model)
    for step in (1, 2, 3):
        train_sharded(ctx, model, batch, CFG, opt)
        sched.step()
        torch.manual_seed(100 + step + 10 * ctx.rank)  # each rank's generator differs
        save_dist_checkpoint(
            run_dir,
            step,
            ctx,
            {"model": model},
            opt,
            scheduler=sched,
            extra={"sampler": step},
            keep=2,
        )
        if step == 2:
            out["state_2"] = dict(iter_full_state(model))
    out["kept"] = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    params, moments = local_state(model, opt)
    rng = torch.get_rng_state()
    out["lr"] = sched.get_last_lr()

    # a fresh job: other weights, empty optimizer; resume must make it the same job again
    torch.manual_seed(999)
    model2 = shard_model(tiny_model(seed=7), ctx, FSDPConfig())
    opt2, sched2 = trainer(model2)
    path = resume_dist_checkpoint(run_dir, ctx)
    step, extra = load_dist_checkpoint(path, ctx, {"model": model2}, opt2, scheduler=sched2)
    params2, moments2 = local_state(model2, opt2)
    out["resumed"] = (path.name, step, extra, sched2.get_last_lr())
    out["params_equal"] = sorted(params) == sorted(params2) and all(
        torch.equal(params[k], params2[k]) for k in params
    )
    out["moments_equal"] = sorted(moments) == sorted(moments2) and all(
        torch.equal(moments[k], moments2[k]) for k in moments
    )
    out["moment_count"] = len(moments)
    out["rng_equal"] = torch.equal(torch.get_rng_state(), rng)
    # and the next step is the same on both
    a, _ = train_sharded(ctx, model, batch, CFG, opt)
    b, _ = train_sharded(ctx, model2, batch, CFG, opt2)
    after, after2 = local_state(model, opt)[0], local_state(model2, opt2)[0]
    out["next_step_equal"] = a == b and all(torch.equal(after[k], after2[k]) for k in after)

    # damage the newest checkpoint: every rank falls back to the older one
    ctx.barrier()
    if ctx.is_main:
        shard = sorted((run_dir / "checkpoints" / "step_00000003" / "dcp").glob("*.distcp"))[-1]
        with open(shard, "r+b") as f:
            f.seek(10)
            f.write(b"\xff\xfe")
    ctx.barrier()
    out["fallback"] = resume_dist_checkpoint(run_dir, ctx).name
    try:
        verify_dist_checkpoint(run_dir / "checkpoints" / "step_00000003", ctx)
    except CorruptCheckpointError as e:
        out["verify_error"] = str(e)

    # a save that cannot start (checkpoints/ is a file) fails on every rank, no hang
    blocked = run_dir / "blocked"
    if ctx.is_main:
        blocked.mkdir()
        (blocked / "checkpoints").write_text("not a directory")
    ctx.barrier()
    try:
        save_dist_checkpoint(blocked, 1, ctx, {"model": model}, opt)
    except Exception as e:  # noqa: BLE001 - recorded for the test
        out["blocked_error"] = f"{type(e).__name__}: {e}"

    out["export"] = str(export_pretrained(model, ctx, run_dir / "hf"))
    out["final"] = dict(iter_full_state(model))
    return out


@needs_gloo
def test_two_rank_resume_is_exact_and_falls_back_past_damage(tmp_path):
    results = run_ranks(_save_resume, 2, tmp_path / "ranks", str(tmp_path / "run"), timeout=150)
    for rank, got in enumerate(results):
        assert got["kept"] == ["step_00000002", "step_00000003"]  # keep=2
        name, step, extra, lr = got["resumed"]
        assert (name, step, extra) == ("step_00000003", 3, {"sampler": 3})
        assert lr == got["lr"]
        assert got["params_equal"] and got["moments_equal"] and got["moment_count"] > 0
        assert got["rng_equal"]  # each rank's own generator state came back
        assert got["next_step_equal"]
        assert got["fallback"] == "step_00000002"
        assert "sha256 differs" in got["verify_error"] and ".distcp" in got["verify_error"]
        assert (
            "File exists" in got["blocked_error"] and "blocked/checkpoints" in got["blocked_error"]
        )
        if rank == 1:  # rank 0's failure, reported on the rank that was waiting for it
            assert got["blocked_error"].startswith("RuntimeError: rank 0 failed")
    assert results[0]["export"].endswith("hf") and results[1]["export"] == "None"

    run = tmp_path / "run"
    manifest = json.loads((run / "checkpoints" / "step_00000002" / "checkpoint.json").read_text())
    assert manifest["world_size"] == 2 and "trainer.pt" in manifest["files"]
    assert {"rng_rank0.pt", "rng_rank1.pt", "dcp/.metadata"} <= set(manifest["files"])
    assert not [
        p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")
    ]  # no staging left

    # the HF export loads as an ordinary model, equal to the gathered weights
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(run / "hf")
    assert exported.config.architectures == ["Qwen2ForCausalLM"]
    for k, v in exported.state_dict().items():
        assert torch.equal(v, results[0]["final"][k]), k

    # DCP reshards: the 2-rank checkpoint loads into one plain process
    plain = tiny_model(seed=3)
    opt, sched = trainer(plain)
    step, _ = load_dist_checkpoint(
        run / "checkpoints" / "step_00000002", DistContext(), {"model": plain}, opt, scheduler=sched
    )
    assert step == 2
    for k, v in plain.state_dict().items():
        assert torch.equal(v, results[0]["state_2"][k]), k
    assert len(opt.state) == len(list(plain.parameters()))


# ------------------------------------------------------------- one process
def _one_process_checkpoint(run_dir, step=1):
    model = tiny_model()
    opt, sched = trainer(model)
    model(input_ids=make_batch().input_ids).logits.sum().backward()
    opt.step()
    return (
        model,
        opt,
        save_dist_checkpoint(run_dir, step, DistContext(), {"model": model}, opt, scheduler=sched),
    )


def test_one_process_round_trip_is_bit_exact(tmp_path):
    model, opt, path = _one_process_checkpoint(tmp_path)
    other = tiny_model(seed=4)
    opt2, _ = trainer(other)
    step, extra = load_dist_checkpoint(path, DistContext(), {"model": other}, opt2)
    assert (step, extra) == (1, {})
    a, b = local_state(model, opt), local_state(other, opt2)
    assert all(torch.equal(a[0][k], b[0][k]) for k in a[0])
    assert all(torch.equal(a[1][k], b[1][k]) for k in a[1])


@pytest.mark.parametrize("damage", ["truncate", "manifest", "missing", "format"])
def test_damaged_checkpoints_are_named_and_skipped(tmp_path, damage):
    _one_process_checkpoint(tmp_path, step=1)
    _, _, newest = _one_process_checkpoint(tmp_path, step=2)
    manifest = newest / "checkpoint.json"
    if damage == "truncate":
        shard = next((newest / "dcp").glob("*.distcp"))
        shard.write_bytes(shard.read_bytes()[:-5])
        match = "bytes, checkpoint.json says"
    elif damage == "manifest":
        manifest.write_text("{not json")
        match = "unreadable checkpoint manifest"
    elif damage == "missing":
        (newest / "trainer.pt").unlink()
        match = "trainer.pt is missing"
    else:
        data = json.loads(manifest.read_text())
        data["format"] = "agents.checkpoint"
        manifest.write_text(json.dumps(data))
        match = "format 'agents.checkpoint'"
    with pytest.raises(CorruptCheckpointError, match=match):
        verify_dist_checkpoint(newest, DistContext())
    assert resume_dist_checkpoint(tmp_path, DistContext()).name == "step_00000001"


def test_every_checkpoint_damaged_is_an_error_and_none_is_none(tmp_path):
    assert resume_dist_checkpoint(tmp_path, DistContext()) is None
    _, _, path = _one_process_checkpoint(tmp_path)
    (path / "trainer.pt").write_bytes(b"junk")
    with pytest.raises(CorruptCheckpointError, match="no intact checkpoint"):
        resume_dist_checkpoint(tmp_path, DistContext())


def test_loading_what_was_not_saved_is_a_key_error(tmp_path):
    model = tiny_model()
    path = save_dist_checkpoint(tmp_path, 1, DistContext(), {"model": model})
    opt, _ = trainer(model)
    with pytest.raises(KeyError, match="'optimizer'"):
        load_dist_checkpoint(path, DistContext(), {"model": model}, opt)
    with pytest.raises(KeyError, match="'value_head'"):
        load_dist_checkpoint(
            path, DistContext(), {"model": model, "value_head": torch.nn.Linear(2, 1)}
        )


def test_keep_must_be_positive_and_a_failed_save_leaves_no_staging(tmp_path, monkeypatch):
    model = tiny_model()
    with pytest.raises(ValueError, match="keep must be >= 1"):
        save_dist_checkpoint(tmp_path, 1, DistContext(), {"model": model}, keep=0)
    import errno

    import agents.distributed.checkpoint as ckpt

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "_save_file", full)
    with pytest.raises(OSError, match="no space left on device while saving checkpoint"):
        save_dist_checkpoint(tmp_path, 1, DistContext(), {"model": model})
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_the_same_step_saved_again_replaces_the_old_one(tmp_path):
    _one_process_checkpoint(tmp_path, step=1)
    model, opt, path = _one_process_checkpoint(tmp_path, step=1)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000001"]
    verify_dist_checkpoint(path, DistContext())
