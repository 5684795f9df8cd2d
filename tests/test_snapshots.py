"""Episode snapshots: ``get_state`` / ``set_state`` on the env and the vector env.

One episode is branched into two continuations; each must equal a fresh replay of the
same actions from reset, and setting the same state again must not share buffers.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from search_env.env import SearchQAEnv
from search_env.episode import EnvState
from search_env.retrievers.base import RetrievalError
from search_env.vector import SearchQAVectorEnv, VectorState
from tests.conftest import PASSAGES, QUESTIONS, MemoryRetriever
from tests.faults import FlakyRetriever, env_state, plain, vec_state

PREFIX = ["<think> look </think><search> capital of Norway </search>"]
BRANCH_A = ["<answer> Oslo </answer>"]
BRANCH_B = ["no tags", "<search> Bergen city </search>", "<answer> Bergen </answer>"]


def play(env, tokenizer, turns):
    """Play text turns; return every step's (obs, reward, terminated, truncated, info)."""
    out = []
    for text in turns:
        ids = tokenizer.encode(text)
        if env.action_mode == "chunk":
            out.append(plain(env.step(ids)))
            continue
        for tid in ids:
            step = env.step(tid)
            if step[4]["turn_ended"]:
                break
        out.append(plain(step))
    return out


def fresh(make_env, mode, tokenizer, turns):
    env = make_env(action_mode=mode)
    env.reset(seed=5, options={"index": 0})
    return play(env, tokenizer, turns), env


@pytest.mark.parametrize("mode", ["token", "chunk"])
def test_branches_equal_fresh_replays(make_env, tokenizer, mode):
    env = make_env(action_mode=mode)
    env.reset(seed=5, options={"index": 0})
    play(env, tokenizer, PREFIX)
    state = env.get_state()
    tokens_before = state.tokens.copy()
    a = play(env, tokenizer, BRANCH_A)
    env.set_state(state)
    b = play(env, tokenizer, BRANCH_B)
    env.set_state(state)  # the same state a second time: no buffer shared with branch b
    a_again = play(env, tokenizer, BRANCH_A)
    ref_a, env_a = fresh(make_env, mode, tokenizer, PREFIX + BRANCH_A)
    ref_b, env_b = fresh(make_env, mode, tokenizer, PREFIX + BRANCH_B)
    assert a == ref_a[1:] == a_again
    assert b == ref_b[1:]
    assert a[-1][1] == 1.0 and a[-1][2] and b[-1][4]["searches"] == 2
    assert np.array_equal(state.tokens, tokens_before)  # the state itself never changed
    mine, theirs = env_state(env), env_state(env_a)
    assert mine.pop("rng")[1:] == theirs.pop("rng")[1:]  # same RNG state, own generator
    assert mine == theirs


def test_state_is_read_only_and_self_contained(make_env, tokenizer):
    env = make_env(action_mode="chunk")
    env.reset(options={"index": 0})
    play(env, tokenizer, PREFIX)
    state = env.get_state()
    with pytest.raises(ValueError):
        state.tokens[0] = 1  # read-only: a caller cannot corrupt later branches
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.done = True  # type: ignore[misc]
    other = make_env(action_mode="chunk")  # a twin env takes the state too
    other.set_state(state)
    assert plain(play(other, tokenizer, BRANCH_A)) == plain(play(env, tokenizer, BRANCH_A))


def test_rng_is_part_of_the_state(make_env):
    env = make_env()
    env.reset(seed=3)
    state = env.get_state()
    draws = [env.reset()[1]["index"] for _ in range(6)]
    env.set_state(state)
    assert [env.reset()[1]["index"] for _ in range(6)] == draws
    env.set_state(state)
    first = env.np_random.integers(1 << 30)
    env.set_state(state)
    assert env.np_random.integers(1 << 30) == first


def test_state_before_any_reset_round_trips(make_env, tokenizer):
    env = make_env()
    state = env.get_state()
    assert state.done and state.rng is None and state.length == 0
    env.reset(seed=1, options={"index": 0})
    env.set_state(state)
    assert env.done and env.context_length == 0


def test_bad_states_change_nothing(make_env, tokenizer):
    env = make_env(action_mode="chunk")
    env.reset(seed=2, options={"index": 0})
    play(env, tokenizer, PREFIX)
    before = env_state(env)
    with pytest.raises(TypeError, match="EnvState"):
        env.set_state({"tokens": []})  # type: ignore[arg-type]
    other = make_env(action_mode="chunk", topk=2)
    other.reset(options={"index": 1})
    with pytest.raises(ValueError, match="ProtocolConfig"):
        env.set_state(other.get_state())
    wrong_vocab = make_env(action_mode="chunk", vocab_size=len(tokenizer) + 8)
    with pytest.raises(ValueError, match="vocab_size"):
        env.set_state(wrong_vocab.get_state())
    assert env_state(env) == before


def test_state_is_refused_while_a_step_is_pending(make_env, tokenizer):
    env = make_env(action_mode="chunk")
    env.reset(options={"index": 0})
    state = env.get_state()
    assert env.begin_step(tokenizer.encode(PREFIX[0])) == ("capital of Norway",)
    with pytest.raises(RuntimeError, match="pending"):
        env.get_state()
    with pytest.raises(RuntimeError, match="pending"):
        env.set_state(state)


def _vec(tokenizer, retriever, n=3):
    envs = [SearchQAEnv(QUESTIONS, retriever, tokenizer, action_mode="chunk") for _ in range(n)]
    return SearchQAVectorEnv(n, envs=envs, autoreset_mode="disabled")


def test_vector_branches_and_stays_atomic(tokenizer):
    flaky = FlakyRetriever()
    vec = _vec(tokenizer, flaky)
    vec.reset(seed=4, options={"index": np.array([0, 1, 2])})
    search = tokenizer.encode("<search> capital of Norway </search>")
    vec.step([search, search, None])
    state = vec.get_state()
    assert isinstance(state, VectorState) and all(isinstance(s, EnvState) for s in state.envs)
    answer = tokenizer.encode("<answer> Oslo </answer>")
    first = plain(vec.step([answer, None, answer]))
    vec.set_state(state)
    obs = vec._batch_obs()  # the batch rows follow the sub-envs' restored buffers
    assert obs["length"][:, 0].tolist() == [e.context_length for e in vec.envs]
    flaky.failures = 1
    before = vec_state(vec)
    with pytest.raises(RetrievalError):
        vec.step([search, search, search])
    assert vec_state(vec) == before  # a failed step after set_state still undoes everything
    assert plain(vec.step([answer, None, answer])) == first
    vec.set_state(state)
    assert plain(vec.step([answer, None, answer])) == first


def test_vector_bad_state_changes_nothing(tokenizer):
    vec = _vec(tokenizer, MemoryRetriever(PASSAGES))
    vec.reset(seed=4, options={"index": np.array([0, 1, 2])})
    before = vec_state(vec)
    small = _vec(tokenizer, MemoryRetriever(PASSAGES), n=2)
    with pytest.raises(ValueError, match="2 sub-envs"):
        vec.set_state(small.get_state())
    state = vec.get_state()
    odd = SearchQAEnv(QUESTIONS, vec.retriever, tokenizer, action_mode="chunk", topk=1)
    bad = dataclasses.replace(state, envs=(state.envs[0], state.envs[1], odd.get_state()))
    vec.step([tokenizer.encode("<search> Oslo </search>")] * 3)
    moved = vec_state(vec)
    with pytest.raises(ValueError, match="ProtocolConfig"):
        vec.set_state(bad)  # sub-envs 0 and 1 were set, then 2 failed: all rolled back
    assert vec_state(vec) == moved != before
