"""The vector env: one batched retriever call, autoreset modes, group resets."""

import numpy as np
import pytest

from search_env.env import SearchQAEnv
from search_env.vector import SearchQAVectorEnv
from tests.conftest import PASSAGES, QUESTIONS, MemoryRetriever


@pytest.fixture
def make_vec(tokenizer):
    def make(n=4, mode="chunk", autoreset_mode="disabled", retriever=None, **kw):
        retriever = retriever or MemoryRetriever(PASSAGES)
        envs = [SearchQAEnv(QUESTIONS, retriever, tokenizer, action_mode=mode, **kw) for _ in range(n)]
        return SearchQAVectorEnv(n, envs=envs, autoreset_mode=autoreset_mode), retriever

    return make


def test_searches_are_batched_in_one_call(make_vec, tokenizer):
    vec, retriever = make_vec(n=4)
    obs, info = vec.reset(seed=0, options={"index": np.array([0, 1, 2, 0])})
    assert obs["tokens"].shape == (4, 4096) and obs["length"].shape == (4, 1)
    turns = [
        tokenizer.encode("<search> capital of Norway </search>"),
        tokenizer.encode("<search> Switzerland city </search>"),
        tokenizer.encode("<answer> Paris </answer>"),
        tokenizer.encode("nothing"),
    ]
    obs, rewards, term, trunc, info = vec.step(turns)
    assert retriever.calls == [["capital of Norway", "Switzerland city"]]
    assert term.tolist() == [False, False, True, False] and rewards[2] == 1.0
    assert info["batch_queries"] == 2
    assert vec.active.tolist() == [True, True, False, True]
    # Disabled autoreset: the finished sub-env ignores its action.
    obs2, rewards, term, trunc, info = vec.step([turns[3], turns[3], None, turns[3]])
    assert rewards[2] == 0 and not term[2] and np.array_equal(obs2["tokens"][2], obs["tokens"][2])
    obs3, _ = vec.reset(options={"reset_mask": np.array([False, False, True, False])})
    assert vec.active.all() and obs3["mask"][2].sum() == 0


def test_repeated_queries_are_searched_once(make_vec, tokenizer):
    vec, retriever = make_vec(n=4)
    vec.reset(options={"index": np.array([0, 0, 1, 0])})
    same = tokenizer.encode("<search> capital of Norway </search>")
    other = tokenizer.encode("<search> Switzerland city </search>")
    obs, *_, info = vec.step([same, same, other, same])
    assert retriever.calls == [["capital of Norway", "Switzerland city"]]
    assert info["batch_queries"] == 4 and info["batch_unique_queries"] == 2
    length = obs["length"][:, 0]
    for i in (1, 3):  # every asker gets the shared results
        assert np.array_equal(obs["tokens"][i, : length[i]], obs["tokens"][0, : length[0]])
    assert not np.array_equal(obs["tokens"][2, : length[2]], obs["tokens"][0, : length[2]])


def test_vector_matches_single_env(make_vec, tokenizer):
    script = [
        tokenizer.encode("<search> capital of France </search>"),
        tokenizer.encode("<answer> Paris </answer>"),
    ]
    vec, _ = make_vec(n=2)
    vec.reset(options={"index": np.array([2, 2])})
    for turn in script:
        vobs, vr, vt, *_ = vec.step([turn, turn])
    single = SearchQAEnv(QUESTIONS, MemoryRetriever(PASSAGES), tokenizer, action_mode="chunk")
    single.reset(options={"index": 2})
    for turn in script:
        sobs, sr, st, *_ = single.step(turn)
    for i in range(2):
        assert np.array_equal(vobs["tokens"][i], sobs["tokens"]) and vr[i] == sr and vt[i] == st


def test_group_reset_shares_questions(make_vec):
    vec, _ = make_vec(n=6)
    _, info = vec.reset(seed=3, options={"group_size": 3})
    idx = info["index"]
    assert idx[0] == idx[1] == idx[2] and idx[3] == idx[4] == idx[5]
    with pytest.raises(ValueError, match="group_size"):
        vec.reset(options={"group_size": 4})


def test_same_step_autoreset(make_vec, tokenizer):
    vec, _ = make_vec(n=2, autoreset_mode="same_step")
    vec.reset(seed=1, options={"index": np.array([2, 2])})
    ans = tokenizer.encode("<answer> Paris </answer>")
    obs, rewards, term, trunc, info = vec.step([ans, tokenizer.encode("hmm")])
    assert term[0] and rewards[0] == 1.0
    assert info["_final_info"][0] and info["final_info"]["answer"][0] == "Paris"
    assert obs["mask"][0].sum() == 0  # already a fresh episode
    assert vec.active.all()


def test_next_step_autoreset_token_mode(make_vec, tokenizer):
    vec, _ = make_vec(n=2, mode="token", autoreset_mode="next_step")
    vec.reset(seed=1, options={"index": np.array([2, 2])})
    eos = tokenizer.eos_token_id
    ids = tokenizer.encode("<answer> Paris </answer>")
    for tid in ids:
        obs, rewards, term, trunc, info = vec.step(np.array([tid, eos]))
    assert term[0] and rewards[0] == 1.0
    obs, rewards, term, trunc, info = vec.step(np.array([ids[0], eos]))
    assert obs["mask"][0].sum() == 0 and not term[0] and rewards[0] == 0


def test_bad_vector_actions(make_vec):
    vec, _ = make_vec(n=2, mode="token")
    vec.reset(seed=0)
    with pytest.raises(ValueError):
        vec.step(np.array([1, 2, 3]))
    with pytest.raises(ValueError):
        make_vec(n=2, autoreset_mode="sometimes")


def test_vector_observations_are_copies(make_vec, tokenizer):
    vec, _ = make_vec(n=2)
    obs, _ = vec.reset(seed=0, options={"index": np.array([0, 1])})
    before = obs["tokens"].copy()
    obs["tokens"][:] = 7
    obs2, *_ = vec.step([tokenizer.encode("hi"), tokenizer.encode("hi")])
    n = int(before[0].nonzero()[0].max()) + 1
    assert np.array_equal(obs2["tokens"][0][:n], before[0][:n])
    assert vec.envs[0].context_ids.tolist() == obs2["tokens"][0][: int(obs2["length"][0, 0])].tolist()


def test_step_before_reset_raises(make_vec):
    vec, _ = make_vec(n=2)
    with pytest.raises(RuntimeError, match="reset"):
        vec.step([[1], [1]])


def test_merge_infos_matches_gymnasium_layout():
    from gymnasium.vector import VectorEnv

    from search_env.vector import merge_infos

    infos = [
        {"a": 1, "b": "x", "s": {"em": 1.0}, "flag": True},
        None,
        {"a": 3, "c": None, "s": {"em": 0.0}, "flag": False},
    ]
    ours = merge_infos(infos)
    ref: dict = {}
    helper = VectorEnv.__new__(VectorEnv)
    helper.num_envs = 3
    for i, info in enumerate(infos):
        if info is not None:
            ref = helper._add_info(ref, info, i)
    assert set(ours) == set(ref)
    for key in ref:
        if isinstance(ref[key], dict):
            for sub in ref[key]:
                assert ours[key][sub].tolist() == ref[key][sub].tolist()
        else:
            assert ours[key].tolist() == ref[key].tolist(), key
            assert ours[key].dtype == ref[key].dtype, key
