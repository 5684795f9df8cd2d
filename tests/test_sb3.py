"""Stable-Baselines3: the token env passes SB3's check_env, the token features extractor,
the vocabulary wrapper, and a short PPO learn() on the tiny synthetic task."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("stable_baselines3")
torch = pytest.importorskip("torch")

from stable_baselines3.common.env_checker import check_env as sb3_check_env  # noqa: E402

from agents.sb3.features import TokenFeaturesExtractor  # noqa: E402
from agents.sb3.train import SB3RunConfig, build_model, train_sb3  # noqa: E402
from agents.sb3.wrappers import TokenSubset  # noqa: E402
from agents.tokenlevel.env import make_search_env  # noqa: E402
from agents.tokenlevel.task import TASK_ENV_CONFIG, TASK_ENV_ID, task_token_ids  # noqa: E402


def test_sb3_check_env_token_mode():
    env = gym.make("SearchQA-Synth-v0", size="tiny", max_prompt_length=512, max_start_length=400)
    sb3_check_env(env.unwrapped, warn=True)


def test_sb3_check_env_on_the_restricted_task_env():
    env = make_search_env(TASK_ENV_ID, TASK_ENV_CONFIG)
    sb3_check_env(TokenSubset(env, task_token_ids()), warn=True)


def test_token_subset_writes_exactly_the_chosen_token():
    env = TokenSubset(make_search_env(TASK_ENV_ID, TASK_ENV_CONFIG), task_token_ids())
    obs, _ = env.reset(seed=0)
    for k in (2, 6, 3):  # <answer> ' a' </answer>
        n = int(obs["length"][0])
        obs, _, terminated, _, info = env.step(k)
        assert obs["tokens"][n] == task_token_ids()[k] and obs["mask"][n] == 1
    assert terminated and info["answer"] == "a"
    with pytest.raises(ValueError, match="distinct ids"):
        TokenSubset(env.env, [1, 1])


def test_features_extractor_reads_sb3_float_observations():
    env = make_search_env(TASK_ENV_ID, TASK_ENV_CONFIG)
    extractor = TokenFeaturesExtractor(
        env.observation_space, d_model=16, layers=1, heads=2, ff=32, window=16
    ).eval()
    obs = [env.reset(seed=i)[0] for i in range(3)]
    as_long = {k: torch.as_tensor(np.stack([o[k] for o in obs])) for k in obs[0]}
    as_float = {k: v.float() for k, v in as_long.items()}  # what SB3's preprocessing hands over
    features = extractor(as_float)
    assert features.shape == (3, 16)
    direct = extractor.encoder(as_long["tokens"], as_long["mask"], as_long["length"])
    assert torch.allclose(features, direct)


@pytest.mark.slow
def test_short_ppo_learn_updates_the_policy_and_writes_the_run(tmp_path):
    cfg = SB3RunConfig(
        d_model=16,
        layers=1,
        heads=2,
        ff=32,
        window=16,
        n_envs=2,
        n_steps=64,
        batch_size=64,
        n_epochs=1,
        timesteps=256,
        out_dir=str(tmp_path / "sb3"),
    )
    model = build_model(cfg)
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(total_timesteps=128)
    assert model.num_timesteps >= 128
    assert any(not torch.equal(a, b) for a, b in zip(before, model.policy.parameters()))

    summary = train_sb3(cfg)
    assert summary["timesteps"] >= cfg.timesteps
    records = [
        json.loads(line) for line in (tmp_path / "sb3" / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(records) == summary["rollouts"] >= 2
    assert all(0.0 <= r["answered"] <= 1.0 for r in records if "answered" in r)
    assert (tmp_path / "sb3" / "model.zip").exists()
