"""RLlib back end: env registry, RLModule, the agent-token audit, and one short PPO run
(new API stack) on the tiny synthetic world (the shared env builder and token encoder:
tests/test_tokenlevel.py).

The audit is the point: in the token env each RLlib action is one agent token, so the
env's own tokens never enter the loss. The tests check it on recorded episodes, show the
audit catches the failures it exists for, and check it inside a real RLlib update (loss
rows == agent tokens written, with environment tokens present in the same episodes).
"""

from __future__ import annotations

import json
import tempfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from agents.rllib.audit import TokenAuditError, audit_chunk  # noqa: E402
from agents.tokenlevel.env import make_search_env, tagged_tokenizer  # noqa: E402
from agents.tokenlevel.task import TASK_ENV_CONFIG, TASK_ENV_ID, task_token_ids  # noqa: E402

TINY = {**TASK_ENV_CONFIG}


def play(env, actions_fn, episodes: int, seed: int = 0):
    """Episodes as (observations dict of stacked arrays, actions, final info)."""
    out = []
    for e in range(episodes):
        obs, info = env.reset(seed=seed + e)
        observations, actions, done = [obs], [], False
        while not done:
            action = actions_fn(obs)
            obs, _, term, trunc, info = env.step(action)
            observations.append(obs)
            actions.append(action)
            done = term or trunc
        stacked = {k: np.stack([o[k] for o in observations]) for k in ("tokens", "mask", "length")}
        out.append((stacked, np.array(actions), info))
    return out


# --------------------------------------------------------------------------- audit
def test_audit_counts_agent_and_env_tokens_of_real_episodes():
    env = make_search_env(TASK_ENV_ID, TINY)
    ids = task_token_ids(env.unwrapped.tokenizer)
    rng = np.random.default_rng(0)
    episodes = play(env, lambda obs: int(rng.choice(ids)), episodes=30)
    total_env = 0
    for obs, actions, _ in episodes:
        audit = audit_chunk(obs["tokens"], obs["mask"], obs["length"], actions)
        assert audit.agent_tokens == audit.steps == len(actions)
        assert audit.agent_tokens + audit.env_tokens == obs["length"][-1, 0] - obs["length"][0, 0]
        total_env += audit.env_tokens
    assert total_env > 0  # invalid-action messages / information blocks were appended


def test_audit_rejects_an_action_that_is_not_the_written_agent_token():
    # context [9 9] (prompt), the agent writes 4, the env appends [7 7] (mask 0), agent 5.
    tokens = np.array([[9, 9, 0, 0, 0, 0], [9, 9, 4, 7, 7, 0], [9, 9, 4, 7, 7, 5]])
    mask = np.array([[0, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 1, 0, 0, 1]])
    length = np.array([2, 5, 6])
    audit = audit_chunk(tokens, mask, length, np.array([4, 5]))
    assert (audit.agent_tokens, audit.env_tokens, audit.steps) == (2, 2, 2)
    with pytest.raises(TokenAuditError, match="not appended as an agent token"):
        audit_chunk(tokens, mask, length, np.array([4, 7]))  # an env token as an action
    env_mask = mask.copy()
    env_mask[2, 5] = 0
    with pytest.raises(TokenAuditError, match="mask 0"):
        audit_chunk(tokens, env_mask, length, np.array([4, 5]))
    with pytest.raises(ValueError, match="actions \\+ 1"):
        audit_chunk(tokens, mask, length, np.array([4]))


# ------------------------------------------------------------------- Ray / RLlib
@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.rllib")
    # AF_UNIX socket paths must stay under 107 characters: a short temp dir.
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_every_id_is_in_rays_registry(ray_session):
    from ray.tune.registry import ENV_CREATOR, _global_registry

    from agents.rllib.env import register_search_envs
    from search_env.registration import ENV_IDS

    assert register_search_envs() == ENV_IDS
    for env_id in ENV_IDS:
        assert _global_registry.contains(ENV_CREATOR, env_id)
    creator = _global_registry.get(ENV_CREATOR, TASK_ENV_ID)
    env = creator(dict(TINY))
    assert env.action_space.n == len(tagged_tokenizer("synth"))


def _module(allowed=None):
    from agents.rllib.module import TokenPolicyModule

    env = make_search_env(TASK_ENV_ID, TINY)
    config = {
        "d_model": 16,
        "layers": 1,
        "heads": 2,
        "ff": 32,
        "window": 16,
        "vf_share_layers": False,
    }  # an RLlib default key: ignored
    if allowed is not None:
        config["allowed_token_ids"] = allowed
    module = TokenPolicyModule(
        observation_space=env.observation_space, action_space=env.action_space, model_config=config
    )
    return env, module


def _batch(env, n=6):
    from ray.rllib.core.columns import Columns

    obs = [env.reset(seed=i)[0] for i in range(n)]
    return {Columns.OBS: {k: torch.as_tensor(np.stack([o[k] for o in obs])) for k in obs[0]}}


def test_module_gives_logits_over_the_vocabulary_and_a_value(ray_session):
    from ray.rllib.core.columns import Columns

    env, module = _module()
    batch = _batch(env)
    out = module.forward_train(batch)
    assert out[Columns.ACTION_DIST_INPUTS].shape == (6, env.action_space.n)
    assert module.compute_values(batch, out[Columns.EMBEDDINGS]).shape == (6,)


def test_module_only_writes_allowed_tokens(ray_session):
    from ray.rllib.core.columns import Columns

    allowed = task_token_ids()
    env, module = _module(allowed)
    logits = module.forward_exploration(_batch(env, n=64))[Columns.ACTION_DIST_INPUTS]
    dist = module.get_exploration_action_dist_cls().from_logits(logits)
    actions = dist.sample()
    assert set(actions.tolist()) <= set(allowed)
    assert torch.isfinite(dist.entropy()).all()
    assert dist.entropy().max() <= np.log(len(allowed)) + 1e-4
    with pytest.raises(ValueError, match="unknown TokenPolicyModule"):
        from agents.rllib.module import TokenPolicyModule

        TokenPolicyModule(
            observation_space=env.observation_space,
            action_space=env.action_space,
            model_config={"d_modle": 8},
        )


def test_loss_row_audit_catches_bootstrap_rows_in_the_loss(ray_session):
    from ray.rllib.core.columns import Columns

    from agents.rllib.audit import TokenAudit
    from agents.rllib.learner import AUDIT_KEY, AuditLossRows

    audit = TokenAudit(agent_tokens=3, env_tokens=5, steps=3)
    ok = {
        "default_policy": {
            Columns.ACTIONS: torch.zeros(4),
            Columns.LOSS_MASK: torch.tensor([1, 1, 1, 0]).bool(),
        }
    }
    AuditLossRows()(rl_module=None, batch=ok, episodes=[], shared_data={AUDIT_KEY: audit})
    bad = {
        "default_policy": {Columns.ACTIONS: torch.zeros(4), Columns.LOSS_MASK: torch.ones(4).bool()}
    }
    with pytest.raises(TokenAuditError, match="4 loss rows for 3 agent tokens"):
        AuditLossRows()(rl_module=None, batch=bad, episodes=[], shared_data={AUDIT_KEY: audit})


@pytest.mark.slow
def test_ppo_trains_two_iterations_and_the_loss_sees_only_agent_tokens(ray_session, tmp_path):
    from agents.rllib.config import apply_overrides, preset
    from agents.rllib.train import train_rllib

    cfg = apply_overrides(preset("test"), {"out_dir": str(tmp_path / "run"), "iterations": 2})
    summary = train_rllib(cfg, progress=False)
    assert summary["iterations"] == 2
    records = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        # Every row of the PPO loss is one agent token the policy wrote: the audit inside
        # the learner also verified each action against the context it was appended to.
        assert r["loss_rows"] == r["agent_tokens"] == r["env_steps"] >= cfg.ppo.train_batch_size
        assert r["env_tokens"] > 0  # the same episodes held environment tokens
        assert np.isfinite(r["policy_loss"]) and 0 < r["entropy"] <= np.log(8) + 1e-4
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["ppo"]["train_batch_size"] == cfg.ppo.train_batch_size
    assert (tmp_path / "run" / "summary.json").exists()
