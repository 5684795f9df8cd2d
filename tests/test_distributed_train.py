"""The real GRPO loop on 2 gloo ranks (CPU): it equals a 1-rank run on the same global
batch, its resume is exact, and a config that would split a group over ranks is refused.

"The same global batch": the ranks sample with different streams (``rank_seed``), so a
1-rank run cannot draw the same episodes by itself; it replays the episodes the 2 ranks
played (rank 0's block, then rank 1's), through the whole loop otherwise unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)
pytest.importorskip("transformers")

from dist_harness import run_ranks  # noqa: E402

import search_env  # noqa: E402, F401  (registers the env ids)
from agents.config import TINY_WORLD, TrainConfig, apply_overrides, tiny_cpu  # noqa: E402
from agents.distributed import DistContext  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TWO = DistContext(rank=0, world_size=2, backend="gloo")
"""Rank 0 of 2 as a config check sees it (no process group is started)."""


def tiny_config(out_dir: Path, **overrides) -> TrainConfig:
    """The tiny-cpu preset shrunk to seconds: 8 episodes (2 questions x 4) a step, two
    mini-batches of 4, a 1-layer 32-wide model, no warm start."""
    return apply_overrides(
        tiny_cpu(),
        {
            "algo": "grpo",
            "steps": 2,
            "eval_every": 0,
            "checkpoint_every": 0,
            "out_dir": str(out_dir),
            "threads": 1,
            "model.hidden_size": 32,
            "model.intermediate": 64,
            "model.layers": 1,
            **TINY_WORLD,
            "rollout.env_kwargs.max_response_length": 16,
            "rollout.num_envs": 8,
            "rollout.group_size": 4,
            "rollout.eval_questions": 4,
            "rollout.eval_num_envs": 4,
            "grpo.minibatch_size": 4,
            "grpo.lr": 1e-2,
            "sft.steps": 0,
            **overrides,
        },
    )


# ------------------------------------------------------------ on the ranks
def scored(t):
    """``t`` with a reward set by its tokens (deterministic, and varied in a group)."""
    return dataclasses.replace(t, reward=float(int(t.tokens.sum()) % 5))


def _train(ctx, cfg: TrainConfig, resume: bool = False, played: list | None = None):
    """Run the loop of ``cfg.algo`` on this rank; return its records and the final full
    weights (PPO: the value head's too, as ``value_head.*``)."""
    import agents.grpo
    import agents.ppo
    import agents.steps
    from agents.distributed import iter_full_state

    loop = agents.grpo if cfg.algo == "grpo" else agents.ppo
    runs, heads = [], []
    real_setup, real_collect, real_head = loop.setup_run, agents.steps.collect, agents.ppo.ValueHead

    def setup(*args, **kwargs):
        runs.append(real_setup(*args, **kwargs))
        return runs[-1]

    def collect(*args, **kwargs):
        # A reward that varies within a group (the random tiny model never answers
        # right), so that advantages and the policy gradient are not all zero.
        out = [scored(t) for t in real_collect(*args, **kwargs)]
        if played is not None:
            played.append(out)
        return out

    class Head(real_head):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            heads.append(self)

    loop.setup_run, agents.steps.collect, agents.ppo.ValueHead = setup, collect, Head
    try:
        train = agents.grpo.train_grpo if cfg.algo == "grpo" else agents.ppo.train_ppo
        train(cfg, resume=resume, ctx=ctx)
    finally:
        loop.setup_run, agents.steps.collect, agents.ppo.ValueHead = (
            real_setup,
            real_collect,
            real_head,
        )
    state = {k: v.clone() for k, v in iter_full_state(runs[-1].model)}
    for head in heads:
        state.update({f"value_head.{k}": v.clone() for k, v in iter_full_state(head)})
    return runs[-1].metrics.records, state


def _two_rank_runs(ctx, root: str):
    """On each rank: a full 2-step run (checkpoints at 1 and 2, its episodes recorded),
    a 1-step run, and that run resumed to step 2."""
    root_dir = Path(root)
    played: list = []
    full = tiny_config(root_dir / "full", checkpoint_every=1)
    records, state = _train(ctx, full, played=played)
    part = tiny_config(root_dir / "part", steps=1, checkpoint_every=1)
    _, part_state = _train(ctx, part)
    if ctx.is_main:  # a copy for a 1-process resume, before the ranks resume this one
        shutil.copytree(root_dir / "part", root_dir / "part_copy")
    ctx.barrier()
    resumed_records, resumed_state = _train(ctx, apply_overrides(part, {"steps": 2}), resume=True)
    return {
        "records": records,
        "state": state,
        "played": played,
        "resumed_records": resumed_records,
        "resumed_state": resumed_state,
        "part_state": part_state,
    }


def _two_rank_ppo(ctx, root: str):
    """On each rank: a 2-step PPO run, its episodes recorded."""
    played: list = []
    records, state = _train(ctx, ppo_config(Path(root) / "ppo"), played=played)
    return {"records": records, "state": state, "played": played}


def ppo_config(out_dir: Path) -> TrainConfig:
    """PPO with stand-ins and uneven micro-batch counts (see :func:`micro_config`)."""
    return tiny_config(
        out_dir,
        algo="ppo",
        seed=STANDIN_SEED,
        **{"ppo.minibatch_size": 4, "ppo.lr": 1e-2, "ppo.micro_batch_tokens": 1},
    )


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist_train")
    from agents.rollout import make_env

    # Build the tiny world's caches once here, not by two ranks at the same time.
    make_env(tiny_config(root / "warm").rollout, "train", 8)
    results = run_ranks(_two_rank_runs, 2, root / "ranks", str(root), timeout=300)
    return root, results


# ---------------------------------------------------------------- 1 rank
def _replay(cfg: TrainConfig, played: list[list], monkeypatch):
    """A 1-rank run whose step ``s`` plays rank 0's then rank 1's episodes of step ``s``."""
    import agents.grpo
    import agents.ppo
    import agents.steps

    loop = agents.grpo if cfg.algo == "grpo" else agents.ppo
    steps = iter(range(len(played[0])))
    runs, heads = [], []
    real_setup, real_head = loop.setup_run, agents.ppo.ValueHead

    class Head(real_head):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            heads.append(self)

    def setup(*args, **kwargs):
        runs.append(real_setup(*args, **kwargs))
        return runs[-1]

    def collect(*args, **kwargs):
        s = next(steps)
        first, second = played[0][s], played[1][s]
        shift = max(t.group for t in first) + 1  # rank 1's groups follow rank 0's
        return first + [dataclasses.replace(t, group=t.group + shift) for t in second]

    monkeypatch.setattr(loop, "setup_run", setup)
    monkeypatch.setattr(agents.steps, "collect", collect)
    monkeypatch.setattr(agents.ppo, "ValueHead", Head)
    (agents.grpo.train_grpo if cfg.algo == "grpo" else agents.ppo.train_ppo)(cfg)
    state = dict(runs[-1].model.state_dict())
    for head in heads:
        state.update({f"value_head.{k}": v for k, v in head.state_dict().items()})
    return runs[-1], state


UPDATE_KEYS = ("loss", "pg_loss", "kl_loss", "entropy", "pg_clip_frac", "grad_norm", "kl")
ROLLOUT_KEYS = ("reward", "em", "searches", "turns", "response_length", "adv_nonzero")


def test_two_ranks_equal_one_rank_on_the_same_global_batch(two_ranks, monkeypatch):
    root, results = two_ranks
    played = [results[0]["played"], results[1]["played"]]
    assert len(played[0]) == len(played[1]) == 2  # one collect per step and rank
    # Each rank played its own whole groups: 4 episodes, one question.
    for rank_played in played:
        for episodes in rank_played:
            assert len(episodes) == 4 and len({t.group for t in episodes}) == 1
    # Rank 0 and rank 1 played different questions of the same step's draw.
    assert played[0][0][0].index != played[1][0][0].index

    one, final = _replay(tiny_config(root / "one"), played, monkeypatch)
    ranks_records = results[0]["records"]
    assert results[1]["records"] == ranks_records  # every rank holds the same records
    one_records = one.metrics.records
    assert [r["step"] for r in ranks_records] == [r["step"] for r in one_records] == [0, 1, 2]
    for mine, ref in zip(ranks_records[1:], one_records[1:], strict=True):
        for key in ROLLOUT_KEYS:
            assert mine[key] == pytest.approx(ref[key], rel=1e-12), key
        for key in UPDATE_KEYS:
            assert mine[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-6), key
    for mine, ref in zip(ranks_records, one_records, strict=True):  # steps 0 and 2
        for key in ("eval_em", "eval_reward", "eval_searches", "eval_response_length"):
            if key in ref:
                assert mine[key] == pytest.approx(ref[key], rel=1e-12), key
    state = results[0]["state"]
    assert set(state) == set(final)
    for key, value in final.items():
        torch.testing.assert_close(state[key], value, rtol=1e-4, atol=1e-5, msg=key)
        torch.testing.assert_close(results[1]["state"][key], state[key], rtol=0, atol=0)
    # The run moved: the comparison is not of two untouched inits.
    assert all(r["grad_norm"] > 0 and r["adv_nonzero"] > 0 for r in one_records[1:])


STANDIN_SEED = 5
"""A run seed whose step-2 shuffle puts one mini-batch wholly on rank 0 and the other
wholly on rank 1 (each rank runs a stand-in once)."""


def _two_rank_micro(ctx, root: str, packing: bool = False):
    played: list = []
    cfg = micro_config(Path(root) / "micro", packing)
    records, state = _train(ctx, cfg, played=played)
    return {"records": records, "state": state, "played": played}


def micro_config(out_dir: Path, packing: bool = False) -> TrainConfig:
    """One row per micro-batch (a 1-token budget): the ranks' micro-batch counts differ.
    ``packing``: each row run as a packed one (``grpo.packing``)."""
    return tiny_config(
        out_dir,
        seed=STANDIN_SEED,
        **{"grpo.micro_batch_tokens": 1, "grpo.packing": packing},
    )


@pytest.mark.parametrize("packing", [False, True])
def test_two_ranks_with_stand_ins_and_uneven_micro_batches_equal_one_rank(
    tmp_path, monkeypatch, packing
):
    from agents.distributed import rank_minibatches
    from agents.rollout import make_env
    from agents.seeding import step_seed

    gens = [torch.Generator().manual_seed(step_seed(STANDIN_SEED, 2, 1)) for _ in range(2)]
    parts = [rank_minibatches(4, 4, gens[r], DistContext(r, 2, backend="gloo")) for r in (0, 1)]
    assert [[p.live for p in ps] for ps in parts] == [[True, False], [False, True]]
    make_env(micro_config(tmp_path / "warm").rollout, "train", 8)  # caches built once, here
    results = run_ranks(_two_rank_micro, 2, tmp_path / "ranks", str(tmp_path), packing, timeout=200)
    played = [results[0]["played"], results[1]["played"]]
    one, final = _replay(micro_config(tmp_path / "one", packing), played, monkeypatch)
    ranks_records, one_records = results[0]["records"], one.metrics.records
    assert results[1]["records"] == ranks_records
    for mine, ref in zip(ranks_records[1:], one_records[1:], strict=True):
        assert mine["micro_batches"] == ref["micro_batches"] == 4  # one row each
        for key in UPDATE_KEYS:
            assert mine[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-6), key
    for key, value in final.items():
        torch.testing.assert_close(results[0]["state"][key], value, rtol=1e-4, atol=1e-5)
    assert all(r["grad_norm"] > 0 for r in one_records[1:])


PPO_UPDATE_KEYS = (
    "loss",
    "pg_loss",
    "vf_loss",
    "entropy",
    "value_mean",
    "vf_clip_frac",
    "explained_variance",
    "grad_norm",
    "kl",
)
"""``explained_variance`` too: a ratio of variances, reduced from the ranks' sums (the
mean of the ranks' own values would differ)."""


def test_two_rank_ppo_equals_one_rank_on_the_same_global_batch(tmp_path, monkeypatch):
    from agents.rollout import make_env

    make_env(ppo_config(tmp_path / "warm").rollout, "train", 8)  # caches built once, here
    results = run_ranks(_two_rank_ppo, 2, tmp_path / "ranks", str(tmp_path), timeout=200)
    played = [results[0]["played"], results[1]["played"]]
    one, final = _replay(ppo_config(tmp_path / "one"), played, monkeypatch)
    ranks_records, one_records = results[0]["records"], one.metrics.records
    assert results[1]["records"] == ranks_records
    assert [r["step"] for r in ranks_records] == [r["step"] for r in one_records] == [0, 1, 2]
    for mine, ref in zip(ranks_records[1:], one_records[1:], strict=True):
        for key in ROLLOUT_KEYS[:-1]:
            assert mine[key] == pytest.approx(ref[key], rel=1e-12), key
        for key in PPO_UPDATE_KEYS:
            assert mine[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-6), key
        assert mine["micro_batches"] == ref["micro_batches"] == 4
    state = results[0]["state"]
    assert set(state) == set(final) and any(k.startswith("value_head.") for k in state)
    for key, value in final.items():
        torch.testing.assert_close(state[key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert all(r["grad_norm"] > 0 for r in one_records[1:])


def test_rank_zero_alone_writes_the_run_files(two_ranks):
    root, _ = two_ranks
    run = root / "full"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]  # one line per step, not one per rank
    assert json.loads((run / "summary.json").read_text())["steps"] == 2
    assert (run / "config.json").is_file()
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step_00000001", "step_00000002"]
    manifest = json.loads((run / "checkpoints" / "step_00000002" / "checkpoint.json").read_text())
    assert manifest["world_size"] == 2
    # The HF export of the final policy loads as an ordinary model.
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(run / "final_model")
    _, results = two_ranks
    for key, value in exported.state_dict().items():
        torch.testing.assert_close(value, results[0]["state"][key], rtol=0, atol=0, msg=key)


def test_resume_of_a_two_rank_run_is_exact(two_ranks):
    _, results = two_ranks
    full, resumed = results[0]["state"], results[0]["resumed_state"]
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=0, msg=key)
    a, b = results[0]["records"], results[0]["resumed_records"]
    assert [r["step"] for r in b] == [0, 1, 2]
    assert b[-1]["reward"] == a[-1]["reward"]
    assert b[-1]["loss"] == a[-1]["loss"]


def test_a_two_rank_checkpoint_resumes_in_one_process(two_ranks):
    import agents.grpo as grpo
    from agents.optim import warmup_schedule
    from agents.run import setup_run

    root, results = two_ranks
    cfg = tiny_config(root / "part_copy", steps=2, checkpoint_every=1)
    run = setup_run(cfg, resume=True)
    assert run.resume_from is not None and run.resume_from.name == "step_00000001"
    optimizer = torch.optim.AdamW(run.model.parameters(), lr=cfg.grpo.lr)
    scheduler = warmup_schedule(optimizer, cfg.grpo.warmup_ratio, cfg.steps)
    modules = {"model": run.model, "optimizer": optimizer, "scheduler": scheduler}
    assert run.begin(modules) == 1
    for key, value in run.model.state_dict().items():
        torch.testing.assert_close(value, results[0]["part_state"][key], rtol=0, atol=0)
    assert optimizer.state  # the moments came back too
    grpo.train_grpo(cfg, resume=True)  # and the run goes on, in one process
    rows = (root / "part_copy" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [0, 1, 2]


def test_torchrun_refuses_to_resume_single_process_checkpoints(tmp_path, monkeypatch):
    import agents.run
    from agents.checkpoint import save_checkpoint

    cfg = tiny_config(tmp_path / "plain", checkpoint_every=1)
    save_checkpoint(cfg.out_dir, 1, cfg, {"model": torch.nn.Linear(2, 2)})
    # Rank 0 of 2 without a process group: its two collectives run as on one rank.
    monkeypatch.setattr(agents.run, "on_main", lambda ctx, fn: fn())
    monkeypatch.setattr(agents.run, "resume_dist_checkpoint", lambda run_dir, ctx: None)
    with pytest.raises(ValueError, match="single-process run only: resume it without torchrun"):
        agents.run.setup_run(cfg, resume=True, ctx=TWO)


# --------------------------------------------------------------- refusals
def test_a_group_split_over_ranks_is_refused_before_any_work(tmp_path):
    from agents.grpo import train_grpo
    from agents.run import check_distributed

    # 8 episodes over 2 ranks is 4 each: not a whole number of groups of 8.
    cfg = tiny_config(tmp_path / "split", **{"rollout.group_size": 8})
    with pytest.raises(ValueError, match=r"group would span two ranks.*multiple of.*16"):
        check_distributed(cfg, TWO)
    with pytest.raises(ValueError, match="group would span two ranks"):
        train_grpo(cfg, ctx=TWO)
    assert not (tmp_path / "split").exists()  # nothing was made
    odd = tiny_config(tmp_path / "odd", **{"rollout.num_envs": 12, "rollout.group_size": 4})
    with pytest.raises(ValueError, match=r"num_envs \(12\) must be divisible"):
        check_distributed(apply_overrides(odd, {}), DistContext(0, 8, backend="gloo"))
    # One process: the same config is fine (no ranks to split over).
    assert check_distributed(cfg, DistContext()) == 8


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"rollout.backend": "vllm", "model.lora_rank": 4}, "lora_rank > 0 under torchrun"),
        ({"rollout.eval_questions": 1}, r"eval_questions \(1\) must be at least"),
    ],
)
def test_what_is_not_wired_under_torchrun_is_refused(tmp_path, overrides, message):
    from agents.run import check_distributed

    with pytest.raises(ValueError, match=message):
        check_distributed(tiny_config(tmp_path / "x", **overrides), TWO)


def _torchrun(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    cmd += ["--master-addr", "127.0.0.1", "--master-port", str(_port())]
    return subprocess.run(
        cmd + ["-m", "agents.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _port() -> int:
    from dist_harness import free_port

    return free_port()


TORCHRUN_SETS = [
    "--set", "model.hidden_size=32", "--set", "model.intermediate=64", "--set", "model.layers=1",
    "--set", "rollout.env_kwargs.size=tiny", "--set", "rollout.env_kwargs.num_entities=null",
    "--set", "rollout.env_kwargs.tokenizer=synth", "--set", "rollout.env_kwargs.max_response_length=16",
    "--set", "rollout.num_envs=8", "--set", "rollout.group_size=4",
    "--set", "rollout.eval_questions=4", "--set", "rollout.eval_num_envs=4",
    "--set", "grpo.minibatch_size=4", "--set", "sft.steps=0", "--set", "eval_every=0",
    "--set", "threads=1",
]  # fmt: skip


def test_torchrun_refuses_a_split_group_with_status_2(tmp_path):
    if shutil.which(sys.executable) is None:
        pytest.skip("no python executable")
    out = tmp_path / "run"
    args = ["--preset", "tiny-cpu", *TORCHRUN_SETS, "--set", "rollout.group_size=8"]
    done = _torchrun([*args, "--out", str(out), "--steps", "1"], tmp_path, timeout=120)
    assert done.returncode != 0
    assert "group would span two ranks" in done.stderr
    assert not out.exists()


@pytest.mark.slow
def test_torchrun_two_ranks_train_end_to_end(tmp_path):
    out = tmp_path / "run"
    args = ["--preset", "tiny-cpu", *TORCHRUN_SETS, "--out", str(out), "--steps", "2"]
    done = _torchrun(args, tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{") :])
    assert summary["steps"] == 2
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [0, 1, 2]
    assert (out / "final_model" / "config.json").is_file()
