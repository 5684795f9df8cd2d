"""Reward components through rollouts and training: ``Trajectory.reward_components``,
``rc_<name>`` in the metrics, a shaped reward paid while EM stays the answer's EM."""

from __future__ import annotations

import csv
import json

import gymnasium as gym
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs the [torch] extra")

import search_env  # noqa: F401  (registers the env ids)
from agents.evaluation.greedy import evaluate_greedy
from agents.policy import ScriptedPolicy
from agents.rollout import Trajectory, collect, rollout_stats
from search_env.reward_config import COMPONENTS, EpisodeOutcome, RewardConfig, config_reward
from search_env.rewards import exact_match

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

WELL_FORMED_WRONG = "<think> no idea </think>\n<answer> nobody </answer>"
BAD_FORMAT_WRONG = "<answer> nobody </answer>"


def _vec(**kwargs):
    return gym.make_vec(
        "SearchQA-Synth-v0",
        num_envs=4,
        size="tiny",
        action_mode="chunk",
        autoreset_mode="disabled",
        **kwargs,
    )


@pytest.fixture(scope="module")
def vec():
    """The default env: Search-R1's EM reward."""
    env = _vec()
    yield env
    env.close()


@pytest.fixture(scope="module")
def fmt_vec():
    """The same world paying Search-R1 v0.3's format reward."""
    env = _vec(reward="search_r1_format")
    yield env
    env.close()


def format_reward(components: dict[str, float]) -> float:
    """What ``reward="search_r1_format"`` pays for these components."""
    outcome = EpisodeOutcome(
        answer=None,
        golden_answers=(),
        response="",
        documents=(),
        invalid_turns=int(components["invalid_turns"]),
        searches=int(components["searches"]),
        terminated=True,
        protocol=None,  # type: ignore[arg-type]  # the config's reward reads components only
        components=components,
    )
    return config_reward(RewardConfig(kind="search_r1_format"))(outcome)


def test_trajectories_carry_the_final_steps_components(vec, fmt_vec, tok):
    for env in (vec, fmt_vec):
        policy = ScriptedPolicy(tok, lambda ctx: WELL_FORMED_WRONG)
        for t in collect(env, policy, indices=[0, 1, 2, 3]):
            assert set(t.reward_components) == set(COMPONENTS)
            c = t.reward_components
            assert c["format_valid"] == 1.0 and c["answered"] == 1.0 and c["searches"] == 0.0
            assert c["em"] == t.scores["em"] == 0.0 and c["f1"] == t.scores["f1"]


def test_format_reward_is_paid_while_em_stays_the_answers(vec, fmt_vec, tok):
    # A wrong answer: EM pays 0; the format reward pays 0.2 well formed, 0.1 otherwise.
    for script, paid in ((WELL_FORMED_WRONG, 0.2), (BAD_FORMAT_WRONG, 0.1)):
        em_run = collect(vec, ScriptedPolicy(tok, lambda ctx, s=script: s), indices=[0, 1])
        fmt_run = collect(fmt_vec, ScriptedPolicy(tok, lambda ctx, s=script: s), indices=[0, 1])
        assert [t.reward for t in em_run] == [0.0, 0.0]
        assert [t.reward for t in fmt_run] == pytest.approx([paid, paid])
        for t in fmt_run:
            assert t.scores["em"] == 0.0 and t.reward == pytest.approx(
                format_reward(t.reward_components)
            )
        stats = rollout_stats(fmt_run)
        assert stats["reward"] == pytest.approx(paid) and stats["em"] == 0.0
        assert stats["rc_format_valid"] == float(script == WELL_FORMED_WRONG)
        assert stats["rc_answered"] == 1.0 and stats["rc_em"] == 0.0


def test_rollout_stats_logs_each_component_as_its_mean(tok):
    def traj(reward: float, **components: float) -> Trajectory:
        z = np.zeros(3)
        return Trajectory(
            tokens=z.astype(np.int64),
            loss_mask=z.astype(np.int8),
            logprobs=z.astype(np.float32),
            prompt_length=1,
            reward=reward,
            scores={"em": components.get("em", 0.0)},
            reward_components=components,
        )

    stats = rollout_stats(
        [traj(1.0, em=1.0, format_valid=1.0), traj(0.2, em=0.0, format_valid=1.0, extra=4.0)],
        prefix="eval_",
    )
    assert stats["eval_rc_em"] == 0.5 and stats["eval_rc_format_valid"] == 1.0
    assert stats["eval_rc_extra"] == 4.0  # over the episodes that report it
    assert stats["eval_reward"] == pytest.approx(0.6) and stats["eval_em"] == 0.5
    # An env without components (or no episodes) adds no rc_ keys.
    assert not [k for k in rollout_stats([traj(0.0)]) if "rc_" in k]
    assert not [k for k in rollout_stats([]) if "rc_" in k]


def test_held_out_em_is_the_answers_under_a_shaped_reward(vec, fmt_vec, tok):
    """eval_em counts right answers whatever the env pays; eval_reward is what it pays."""
    truth = {i: vec.dataset[i].golden_answers[0] for i in range(4)}

    def half_right(ctx: str) -> str:  # questions 0 and 2 right (bad format), 1 and 3 wrong
        i = next(j for j in truth if fmt_vec.dataset[j].question.rstrip("?") in ctx)
        return f"<answer> {truth[i] if i % 2 == 0 else 'nobody'} </answer>"

    em_stats = evaluate_greedy(ScriptedPolicy(tok, half_right), vec, range(4))
    fmt_stats = evaluate_greedy(ScriptedPolicy(tok, half_right), fmt_vec, range(4))
    assert exact_match(truth[0], vec.dataset[0].golden_answers) == 1.0
    assert em_stats["eval_em"] == fmt_stats["eval_em"] == 0.5 == fmt_stats["eval_rc_em"]
    assert em_stats["eval_reward"] == 0.5
    # Right answers in a bad format: 1 - 0.2; wrong ones: the final-format score 0.1.
    assert fmt_stats["eval_reward"] == pytest.approx((0.8 + 0.1) / 2)


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_training_logs_reward_components(tmp_path, algo, monkeypatch):
    """A 2-step run with reward="search_r1_format" in env_kwargs: rc_* per step in
    metrics.jsonl and metrics.csv, each the mean over the step's episodes, whose
    rewards are the format reward of their components."""
    import agents.steps
    from agents.grpo import train_grpo
    from agents.ppo import train_ppo
    from tests.test_agents_train import small_config

    seen: list[list[Trajectory]] = []

    def spy(*args, **kwargs):
        trajectories = collect(*args, **kwargs)
        seen.append(trajectories)
        return trajectories

    monkeypatch.setattr(agents.steps, "collect", spy)  # the loops' rollouts go through it
    cfg = small_config(tmp_path, algo, **{"rollout.env_kwargs.reward": "search_r1_format"})
    (train_grpo if algo == "grpo" else train_ppo)(cfg)

    run_dir = tmp_path / algo
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "reward" in r and r.get("step", 0) > 0]
    assert len(steps) == len(seen) == 2
    for record, trajectories in zip(steps, seen):
        for t in trajectories:
            assert t.reward == pytest.approx(format_reward(t.reward_components))
            assert t.scores["em"] == t.reward_components["em"]
        for name in COMPONENTS:
            mean = np.mean([t.reward_components[name] for t in trajectories])
            assert record[f"rc_{name}"] == pytest.approx(mean)
        assert record["reward"] == pytest.approx(np.mean([t.reward for t in trajectories]))
    evals = [r for r in records if "eval_em" in r]
    assert evals and all("eval_rc_format_valid" in r for r in evals)
    with open(run_dir / "metrics.csv", newline="") as f:
        columns = next(csv.reader(f))
    assert {f"rc_{name}" for name in COMPONENTS} <= set(columns)
