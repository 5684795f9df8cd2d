"""The TRL rollout on TRL's colocated vLLM engine (``use_vllm=True, vllm_mode="colocate"``):
the config mapping, refusals, sleep-mode handling, and two GRPOTrainer steps on CPU whose
log-probs equal the HF model's at the weights of each rollout."""

from __future__ import annotations

import contextlib
import math
import socket
import types

import pytest

pytest.importorskip("trl")
torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402

from agents.trl.rollout import SearchR1Rollout, check_sampling_args  # noqa: E402
from agents.trl.vllm import colocated_policy, engine_awake  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

VLLM_RUN = [
    *("--set", "model.hidden_size=64"),  # head_dim 32: the smallest vLLM's CPU attention has
    *("--set", "model.heads=2"),
    *("--set", "model.kv_heads=1"),
    *("--set", "rollout.backend=vllm"),
    *("--set", "rollout.temperature=0.7"),
    *("--set", "grpo.entropy_coef=0.01"),  # a gradient even when no group has reward variance
]


def tiny_config(tmp_path, *extra: str):
    from test_trl import TINY_RUN

    from agents.trl import train as trl_train

    argv = [*TINY_RUN, *VLLM_RUN, *extra, "--out", str(tmp_path / "run")]
    return trl_train.config_from_args(trl_train.build_parser().parse_args(argv))


# ------------------------------------------------------------------ config, refusals
def test_backend_vllm_maps_onto_trls_colocated_engine(tmp_path):
    from agents.trl.train import grpo_args

    args = grpo_args(tiny_config(tmp_path))
    assert args.use_vllm and args.vllm_mode == "colocate"
    assert not args.vllm_importance_sampling_correction  # rollout.tis_cap=None: off
    capped = grpo_args(tiny_config(tmp_path, "--set", "rollout.tis_cap=2.0"))
    assert capped.vllm_importance_sampling_correction
    assert capped.vllm_importance_sampling_mode == "token_truncate"
    assert capped.vllm_importance_sampling_clip_max == 2.0
    hf = grpo_args(tiny_config(tmp_path, "--set", "rollout.backend=hf"))
    assert not hf.use_vllm
    assert check_sampling_args(args) == 0.7  # colocate is accepted


def test_server_mode_and_structured_outputs_are_refused():
    from trl import GRPOConfig

    server = GRPOConfig(output_dir="unused", use_cpu=True, use_vllm=True, vllm_mode="server")
    with pytest.raises(NotImplementedError, match="vllm_mode='colocate'"):
        check_sampling_args(server)
    regex = types.SimpleNamespace(
        use_vllm=True, vllm_mode="colocate", vllm_structured_outputs_regex="a+", temperature=1.0
    )
    with pytest.raises(ValueError, match="structured_outputs_regex"):
        check_sampling_args(regex)


def test_colocated_policy_needs_the_engine_and_its_processed_logprobs():
    with pytest.raises(RuntimeError, match="no colocated vLLM engine"):
        colocated_policy(types.SimpleNamespace(), tokenizer=None)
    config = types.SimpleNamespace(logprobs_mode="raw_logprobs")
    llm = types.SimpleNamespace(llm_engine=types.SimpleNamespace(model_config=config))
    trainer = types.SimpleNamespace(vllm_generation=types.SimpleNamespace(llm=llm))
    with pytest.raises(RuntimeError, match="raw_logprobs"):
        colocated_policy(trainer, tokenizer=None)


def test_bad_head_size_fails_before_any_work(tmp_path, capsys):
    pytest.importorskip("vllm")
    from vllm.platforms import current_platform

    from agents.trl.train import main

    if not current_platform.is_cpu():
        pytest.skip("the head-size limit is vLLM's CPU attention's")
    out = tmp_path / "never"
    argv = ["--preset", "tiny-cpu", "--set", "rollout.backend=vllm", "--out", str(out)]
    assert main([*argv, "--set", "model.hidden_size=32", "--set", "model.heads=4"]) == 2
    assert "head sizes" in capsys.readouterr().err
    assert not out.exists()


class FakeGeneration:
    """TRL's ``VLLMGeneration`` in sleep mode, recording what is done to its engine."""

    def __init__(self, sleeping: bool) -> None:
        self.enable_sleep_mode = True
        self._llm_weights_sleeping = sleeping
        self.calls: list[str] = []
        self.llm = types.SimpleNamespace(
            wake_up=lambda tags: self.calls.append(f"wake {tags}"),
            sleep=lambda level: self.calls.append(f"sleep {level}"),
        )

    def sync_weights(self) -> None:
        self.calls.append("sync")
        self._llm_weights_sleeping = False


@pytest.mark.parametrize(("sleeping", "first"), [(False, []), (True, ["sync"])])
def test_sleep_mode_wakes_the_kv_cache_for_the_rollout_and_sleeps_after(sleeping, first):
    gen = FakeGeneration(sleeping)
    with engine_awake(gen):
        assert gen.calls == [*first, "wake ['kv_cache']"]
    assert gen.calls[-1] == "sleep 2" and gen._llm_weights_sleeping
    # a failing rollout still puts the engine back to sleep, weights marked discarded
    gen = FakeGeneration(sleeping=False)
    with pytest.raises(KeyError), engine_awake(gen):
        raise KeyError("boom")
    assert gen.calls == ["wake ['kv_cache']", "sleep 2"] and gen._llm_weights_sleeping
    # without sleep mode nothing is touched
    gen = FakeGeneration(sleeping=False)
    gen.enable_sleep_mode = False
    with engine_awake(gen):
        pass
    assert gen.calls == []


def test_colocated_engine_adds_its_arguments_and_restores_trls_constructor(monkeypatch):
    pytest.importorskip("vllm")
    import trl.generation.vllm_generation as generation

    from agents.trl.vllm import colocated_engine

    seen = []
    monkeypatch.setattr(generation, "LLM", lambda **kw: seen.append(kw))
    recorder = generation.LLM
    with colocated_engine(enable_chunked_prefill=False, enforce_eager=True):
        generation.LLM(model="m", enforce_eager=False)
    assert seen == [{"model": "m", "enable_chunked_prefill": False, "enforce_eager": True}]
    with pytest.raises(RuntimeError), colocated_engine(x=1):
        raise RuntimeError("TRL failed")
    assert generation.LLM is recorder


# ----------------------------------------------------------------- the engine, on CPU
def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_grpotrainer_steps_on_trls_colocated_vllm(tmp_path, monkeypatch):
    """2 GRPOTrainer steps with use_vllm=True, vllm_mode="colocate" on the tiny recipe:
    finite loss, changed weights, env_mask equal to a fresh env's replay, and each rollout's
    log-probs equal to the HF model's at the weights TRL synced before it (at T=0.7)."""
    pytest.importorskip("vllm")
    from safetensors.torch import load_file
    from test_trl import replay_mask
    from transformers import AutoModelForCausalLM

    from agents.policy.hf import HFPolicy
    from agents.trl import train as trl_train

    # TRL sets these for vLLM's external launcher; monkeypatch removes them afterwards.
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    weights_at_rollout = []
    original = SearchR1Rollout.__call__

    def call(self, prompts, trainer):
        out = original(self, prompts, trainer)
        model = trainer.accelerator.unwrap_model(trainer.model)
        weights_at_rollout.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return out

    monkeypatch.setattr(SearchR1Rollout, "__call__", call)
    run = trl_train.train_trl(tiny_config(tmp_path), keep_outputs=True)
    summary = run.summary
    assert summary["generation"] == "vllm-colocate"
    assert summary["optimizer_steps"] == 2 and summary["loss_finite"]
    assert run.trainer.vllm_generation.llm is None  # shut down at the end
    initial = load_file(str(run.init_model / "model.safetensors"))
    final = run.trainer.accelerator.unwrap_model(run.trainer.model).state_dict()
    assert [k for k, v in initial.items() if not torch.equal(v, final[k].detach())]
    vec = run.rollout.vec_env

    def load():
        return AutoModelForCausalLM.from_pretrained(str(run.init_model), dtype=torch.float32)

    hf_model = load()
    scorer = HFPolicy(hf_model, vec.envs[0].tokenizer)
    start_scorer = HFPolicy(load(), vec.envs[0].tokenizer)
    outputs = run.rollout.outputs
    assert len(outputs) == len(weights_at_rollout) == 2
    moved = 0.0
    for out, weights in zip(outputs, weights_at_rollout):
        for i, index in enumerate(out["env_index"]):
            p, ids, mask = out["prompt_ids"][i], out["completion_ids"][i], out["env_mask"][i]
            assert replay_mask(vec, index, p, ids, mask)[len(p) :].tolist() == mask
            full = torch.tensor([p + ids])
            agent = torch.tensor(mask) == 1
            got = torch.tensor(out["logprobs"][i])[agent]
            with torch.no_grad():
                hf_model.load_state_dict(weights)
                lp = scorer.logprobs(full, torch.ones_like(full), temperature=0.7)[0, len(p) :]
                torch.testing.assert_close(got, lp[agent], atol=1e-4, rtol=0)
                start = start_scorer.logprobs(full, torch.ones_like(full), temperature=0.7)[
                    0, len(p) :
                ]
            moved = max(moved, float((got - start[agent]).abs().max()))
    # the second rollout sampled from the updated weights, far from the initial ones
    assert moved > 1e-2
    assert math.isfinite(summary["eval_em_end"])
    assert np.mean([sum(m) for m in outputs[1]["env_mask"]]) > 0


def test_cpu_weight_sync_loads_every_tensor_with_the_tied_lm_head():
    """vLLM's reload_weights does not re-tie lm_head to the embeddings: the CPU sync loads
    it under its own name, and drops the engine's prefix cache."""
    from agents.tiny_model import make_tiny_qwen2
    from agents.trl.vllm import reload_weights, tied_aliases
    from search_env.registration import load_tokenizer

    model = make_tiny_qwen2(load_tokenizer("synth"), hidden_size=32, layers=1, heads=4, kv_heads=2)
    assert model.config.tie_word_embeddings
    params = [(n, p.data) for n, p in model.named_parameters()]
    aliases = tied_aliases(model, params)
    assert [n for n, _ in aliases] == ["lm_head.weight"]
    assert aliases[0][1] is dict(params)["model.embed_tokens.weight"]
    calls = []
    llm = types.SimpleNamespace(
        collective_rpc=lambda method, kwargs: calls.append((method, kwargs)),
        reset_prefix_cache=lambda: calls.append("reset"),
    )
    gen = types.SimpleNamespace(
        model=model, llm=llm, enable_sleep_mode=False, _iter_named_params=lambda: iter(params)
    )
    reload_weights(gen)
    (method, kwargs), reset = calls
    assert method == "reload_weights" and reset == "reset" and kwargs["is_checkpoint_format"]
    names = [n for n, _ in kwargs["weights_iterator"]]
    assert names == [n for n, _ in params] + ["lm_head.weight"]
