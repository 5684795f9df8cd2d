"""The one loop that plays text and token agents through the chunk-mode vector env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from search_env.baselines import NoSearchAgent, RandomTokenAgent, play_episodes
from search_env.synth.oracle import OracleAgent


@pytest.fixture(scope="module")
def vec():
    vec = gym.make_vec(
        "SearchQA-Synth-v0", num_envs=3, size="tiny", action_mode="chunk", autoreset_mode="disabled"
    )
    yield vec
    vec.close()


def test_every_position_is_played_by_one_agent_per_sub_env(vec):
    made = []

    def make():
        made.append(OracleAgent())
        return made[-1]

    stats = []
    indices = [4, 1, 4, 7, 2]  # a repeated question, and a last chunk of two
    episodes = list(play_episodes(vec, indices, make, on_step=stats.append))
    assert len(made) == 3
    assert sorted(e.position for e in episodes) == [0, 1, 2, 3, 4]
    by_position = sorted(episodes, key=lambda e: e.position)
    assert [e.index for e in by_position] == indices
    assert np.array_equal(by_position[0].tokens, by_position[2].tokens)  # same question
    first_chunk = [e for e in episodes if e.position < 3]
    assert len(stats) == max(e.steps for e in first_chunk) + max(
        e.steps for e in episodes if e.position >= 3
    )
    assert sum(s.queries for s in stats) == sum(e.searches for e in episodes)
    tok = vec.envs[0].tokenizer
    for e in episodes:
        assert e.terminated and set(e.scores) >= {"em", "f1", "cover_em"}
        assert len(e.tokens) == len(e.loss_mask)
        assert not e.loss_mask[: e.prompt_length].any()
        assert int(e.loss_mask.sum()) == e.agent_tokens
        answer = tok.decode(e.tokens[e.loss_mask == 1].tolist())
        assert f"<answer> {e.answer} </answer>" in answer


def test_a_closed_book_agent_takes_one_step(vec):
    episodes = list(play_episodes(vec, [0, 1], lambda: NoSearchAgent(seed=1)))
    assert [e.steps for e in episodes] == [1, 1] and [e.searches for e in episodes] == [0, 0]


def test_token_agents_ids_are_sent_as_they_are(vec):
    vocab = vec.envs[0].codec.vocab_size
    episodes = list(play_episodes(vec, [3], lambda: RandomTokenAgent(vocab, seed=5)))
    (ep,) = episodes
    replay = RandomTokenAgent(vocab, seed=5)
    first = replay.act_tokens(np.zeros(0, np.int64))
    assert ep.tokens[ep.loss_mask == 1][: len(first)].tolist() == first


@pytest.mark.parametrize(
    "kwargs", [{"action_mode": "token", "autoreset_mode": "disabled"}, {"action_mode": "chunk"}]
)
def test_needs_chunk_mode_without_autoreset(kwargs):
    vec = gym.make_vec("SearchQA-Synth-v0", num_envs=1, size="tiny", **kwargs)
    with pytest.raises(ValueError, match="chunk-mode vector env with autoreset disabled"):
        next(play_episodes(vec, [0], OracleAgent))
    vec.close()
