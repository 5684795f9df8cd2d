"""The vector env: one batched retriever call, autoreset modes, group resets."""

import numpy as np
import pytest

from search_env.env import SearchQAEnv
from search_env.vector import SearchQAVectorEnv
from tests.conftest import PASSAGES, QUESTIONS, MemoryRetriever
from tests.faults import LONG_QUESTION, FlakyRetriever, plain, vec_state


@pytest.fixture
def make_vec(tokenizer):
    def make(n=4, mode="chunk", autoreset_mode="disabled", retriever=None, **kw):
        retriever = retriever or MemoryRetriever(PASSAGES)
        envs = [
            SearchQAEnv(QUESTIONS, retriever, tokenizer, action_mode=mode, **kw) for _ in range(n)
        ]
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
    assert vec.last_batch.queries == 2 and "batch_queries" not in info
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
    assert vec.last_batch.queries == 4 and vec.last_batch.unique_queries == 2
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
    assert (
        vec.envs[0].context_ids.tolist() == obs2["tokens"][0][: int(obs2["length"][0, 0])].tolist()
    )


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


# ------------------------------------------------------------- failures change nothing
def assert_same_step(got, want):
    """Two vector steps agree: observations, rewards, flags and infos (timings aside)."""
    for key in ("tokens", "mask", "length"):
        assert np.array_equal(got[0][key], want[0][key]), key
    for a, b in zip(got[1:4], want[1:4]):
        assert np.array_equal(a, b)
    assert plain(got[4]) == plain(want[4])


@pytest.mark.parametrize("mode", ["token", "chunk"])
def test_bad_action_in_one_sub_env_changes_nothing(make_vec, tokenizer, mode):
    vec, _ = make_vec(n=4, mode=mode)
    ref, _ = make_vec(n=4, mode=mode)
    for v in (vec, ref):
        v.reset(seed=0, options={"index": np.array([0, 1, 2, 0])})
    if mode == "chunk":
        good = [
            tokenizer.encode(t)
            for t in [
                "<search> capital of Norway </search>",
                "<answer> Zurich </answer>",
                "hmm",
                "<answer> x </answer>",
            ]
        ]
        bad = [
            (good[:2] + [[], good[3]], ValueError, "sub-env 2: chunk mode takes at least one"),
            (good[:3] + [[5, 10**9]], ValueError, "sub-env 3: token id 1000000000"),
            ([good[0], [1.5], *good[2:]], TypeError, "sub-env 1"),
            (good[:3], ValueError, "sequence of 4"),
            ("abcd", ValueError, "sequence of 4"),
        ]
    else:
        good = np.array(tokenizer.encode("<search>")[:1] * 4)
        bad = [
            (np.array([good[0], good[0], 10**9, good[0]]), ValueError, "sub-env 2"),
            (np.array([good[0], -1, good[0], good[0]]), ValueError, "sub-env 1"),
            (good.astype(float), TypeError, "integer"),
            (good[:3], ValueError, r"shape \(4,\)"),
        ]
    before = vec_state(vec)
    for actions, error, match in bad:
        with pytest.raises(error, match=match):
            vec.step(actions)
        assert vec_state(vec) == before
    # Nothing is left pending: the next step goes through, as if the bad ones never came.
    assert_same_step(vec.step(good), ref.step(good))


def _script(tokenizer):
    """Three steps of four sub-envs, each with a search by a sub-env still running."""
    enc = tokenizer.encode
    return [
        [
            enc("<search> capital of Norway </search>"),
            enc("<answer> Zürich </answer>"),
            enc("<search> France </search>"),
            enc("no tags"),
        ],
        [
            enc("<answer> Oslo </answer>"),
            enc("<search> Switzerland city </search>"),
            enc("<search> capital of France </search>"),
            enc("<search> Bergen </search>"),
        ],
        [
            enc("<search> Oslo </search>"),
            enc("<answer> Zürich </answer>"),
            enc("<search> Paris </search>"),
            enc("<answer> Oslo </answer>"),
        ],
    ]


@pytest.mark.parametrize("autoreset_mode", ["disabled", "next_step", "same_step"])
@pytest.mark.parametrize("failing_step", [0, 1, 2])
def test_retrieval_failure_rolls_back_and_a_retry_continues(
    make_vec, tokenizer, autoreset_mode, failing_step
):
    from search_env.retrievers.base import RetrievalError

    flaky = FlakyRetriever()
    vec, _ = make_vec(n=4, autoreset_mode=autoreset_mode, retriever=flaky)
    ref, reliable = make_vec(n=4, autoreset_mode=autoreset_mode)
    for v in (vec, ref):
        v.reset(seed=11, options={"index": np.array([0, 1, 2, 0])})
    for n, actions in enumerate(_script(tokenizer)):
        if autoreset_mode == "disabled":
            actions = [a if vec.active[i] else None for i, a in enumerate(actions)]
        if n == failing_step:
            flaky.failures = 1  # the server is down for one call
            before = vec_state(vec)
            with pytest.raises(RetrievalError, match="is down"):
                vec.step(actions)
            assert vec_state(vec) == before
        assert_same_step(vec.step(actions), ref.step(actions))  # the same actions, retried
        assert vec.last_batch.queries == ref.last_batch.queries
    assert flaky.failed == 1 and flaky.calls == reliable.calls


def test_retriever_with_the_wrong_result_count_rolls_back(make_vec, tokenizer):
    class Short:
        def search(self, queries, k):
            return []

    vec, _ = make_vec(n=2, retriever=Short())
    vec.reset(seed=0, options={"index": np.array([0, 1])})
    before = vec_state(vec)
    with pytest.raises(RuntimeError, match="0 result lists for 1 queries"):
        vec.step([tokenizer.encode("<search> Oslo </search>"), tokenizer.encode("hmm")])
    assert vec_state(vec) == before


def test_retrieval_failure_with_observe_is_shown_not_raised(make_vec, tokenizer):
    flaky = FlakyRetriever(failures=1)
    vec, _ = make_vec(n=2, retriever=flaky, on_retrieval_error="observe")
    vec.reset(seed=0, options={"index": np.array([0, 1])})
    obs, rewards, term, trunc, info = vec.step(
        [tokenizer.encode("<search> Oslo </search>"), tokenizer.encode("hmm")]
    )
    assert (
        info["_retrieval_error"].tolist() == [True, False]
        and "is down" in info["retrieval_error"][0]
    )
    assert "Retrieval failed" in tokenizer.decode(obs["tokens"][0, : obs["length"][0, 0]].tolist())


@pytest.fixture
def make_long_vec(tokenizer):
    """Sub-envs over QUESTIONS plus, at index 3, a question whose prompt does not fit."""

    def make(n=4, autoreset_mode="disabled"):
        retriever = MemoryRetriever(PASSAGES)
        data = [*QUESTIONS, LONG_QUESTION]
        envs = [SearchQAEnv(data, retriever, tokenizer, action_mode="chunk") for _ in range(n)]
        return SearchQAVectorEnv(n, envs=envs, autoreset_mode=autoreset_mode)

    return make


def test_failed_reset_changes_nothing(make_long_vec, tokenizer):
    vec = make_long_vec()
    vec.reset(seed=0, options={"index": np.array([0, 1, 2, 0])})
    vec.step([tokenizer.encode("<search> Oslo </search>")] * 4)
    before = vec_state(vec)
    half = np.array([True, False, True, True])
    cases = [
        (
            None,
            {"index": np.array([0, 1, 3, 2])},
            ValueError,
            "no room",
        ),  # sub-envs 0, 1 reset first
        (7, {"index": np.array([0, 3, 1, 2])}, ValueError, "no room"),
        (None, {"example": LONG_QUESTION}, ValueError, "no room"),
        (None, {"group_size": 2, "reset_mask": half}, ValueError, "part of group 0"),
        (None, {"group_size": True}, ValueError, "group_size"),
        (None, {"group_size": 3}, ValueError, "group_size"),
        (None, {"index": True}, ValueError, "one int per sub-env"),
        (None, {"index": np.array([0, 1, 2, 4])}, ValueError, r"\[0, 4\)"),
        (None, {"index": np.array([0, 1, 2, 0]), "group_size": 2}, ValueError, "at most one"),
        (None, {"idx": [1]}, ValueError, r"'idx'.*accepted.*'reset_mask'"),
        (None, [("index", 1)], TypeError, "mapping"),
        (None, {"reset_mask": [1, 0, 1, 1]}, ValueError, "reset_mask"),
        (-1, None, ValueError, "seeds must be ints >= 0"),
        ([0, 1], None, ValueError, "2 seeds for 4 envs"),
        ("0", None, TypeError, "seed"),
    ]
    for seed, options, error, match in cases:
        with pytest.raises(error, match=match):
            vec.reset(seed=seed, options=options)
        assert vec_state(vec) == before, (seed, options)
    # The episodes go on, each scored against its own question.
    *_, info = vec.step([tokenizer.encode("<answer> Oslo </answer>")] * 4)
    assert info["index"].tolist() == [0, 1, 2, 0] and info["scores"]["em"].tolist() == [1, 0, 0, 1]


def test_failed_group_reset_does_not_advance_any_rng(make_long_vec):
    vec = make_long_vec()
    vec.reset(seed=0, options={"index": np.array([0, 1, 2, 0])})
    before = vec_state(vec)
    failed = 0
    for seed in range(12):  # each group of 2 draws the long question with p = 1/4
        probe = make_long_vec()
        probe.reset(seed=seed, options={"index": np.array([0, 1, 2, 0])})
        picks = probe.np_random.integers(4, size=2)  # what a seeded group reset draws
        if 3 not in picks:
            continue
        with pytest.raises(ValueError, match="no room"):
            vec.reset(seed=seed, options={"group_size": 2})
        failed += 1
        assert vec_state(vec) == before  # sub-envs reseeded before the failure are restored
    assert failed >= 2


def test_vector_rng_is_its_own_stream(make_vec):
    vec, _ = make_vec(n=8)
    _, info = vec.reset(seed=5, options={"group_size": 1})
    sub_env_0_stream = np.random.default_rng(5).integers(3, size=8)
    assert info["index"].tolist() != sub_env_0_stream.tolist()
    assert vec.np_random_seed != vec.envs[0].np_random_seed
    twin, _ = make_vec(n=8)
    _, twin_info = twin.reset(seed=5, options={"group_size": 1})
    assert twin_info["index"].tolist() == info["index"].tolist()
    assert vec.np_random.bit_generator.state == twin.np_random.bit_generator.state
    for _ in range(3):  # unseeded resets continue the same streams
        assert (
            vec.reset(options={"group_size": 2})[1]["index"].tolist()
            == twin.reset(options={"group_size": 2})[1]["index"].tolist()
        )


def test_constructor_errors(tokenizer):
    retriever = MemoryRetriever(PASSAGES)

    def env():
        return SearchQAEnv(QUESTIONS, retriever, tokenizer, action_mode="chunk")

    with pytest.raises(ValueError, match="num_envs must be an int >= 1"):
        SearchQAVectorEnv(0, envs=[])
    with pytest.raises(ValueError, match="num_envs must be an int >= 1"):
        SearchQAVectorEnv(0, env)
    with pytest.raises(ValueError, match="num_envs must be an int >= 1"):
        SearchQAVectorEnv(True, env)
    one = env()
    with pytest.raises(ValueError, match="distinct"):
        SearchQAVectorEnv(2, envs=[one, one])
    with pytest.raises(TypeError, match="SearchQAEnv"):
        SearchQAVectorEnv(1, envs=[object()])


def test_make_vec_with_zero_envs_is_a_clear_error(tokenizer):
    import gymnasium as gym

    import search_env  # noqa: F401  (registers the ids)

    with pytest.raises(ValueError, match="num_envs"):
        gym.make_vec(
            "SearchQA-v0",
            num_envs=0,
            dataset=QUESTIONS,
            retriever=MemoryRetriever(PASSAGES),
            tokenizer=tokenizer,
        )


# ------------------------------------------------------------- Gymnasium's vector wrappers
def _wrappers():
    """Every wrapper of gymnasium.wrappers.vector that applies to a Dict observation.

    Not here: Box-only observation wrappers (Dtype, Normalize, Reshape, Rescale,
    Grayscale, Resize), Box-action ones (ClipAction, RescaleAction), rendering ones
    (RecordVideo, HumanRendering), and the array converters (NumpyToTorch, JaxTo*,
    ArrayConversion), which turn every info array into a tensor and so cannot carry
    the string infos (question, query, answer) of this env.
    """
    import gymnasium as gym
    from gymnasium.wrappers import vector as W

    return {
        "DictInfoToList": lambda v: W.DictInfoToList(v),
        "RecordEpisodeStatistics": lambda v: W.RecordEpisodeStatistics(v),
        "TransformObservation": lambda v: W.TransformObservation(
            v, lambda o: o, v.observation_space
        ),
        "FilterObservation": lambda v: W.FilterObservation(v, ["tokens", "length"]),
        "FlattenObservation": lambda v: W.FlattenObservation(v),
        "VectorizeTransformObservation": lambda v: W.VectorizeTransformObservation(
            v, gym.wrappers.FilterObservation, filter_keys=["tokens", "length"]
        ),
        "TransformReward": lambda v: W.TransformReward(v, lambda r: 2 * r),
        "VectorizeTransformReward": lambda v: W.VectorizeTransformReward(
            v, gym.wrappers.TransformReward, func=lambda r: 2 * r
        ),
        "ClipReward": lambda v: W.ClipReward(v, 0.0, 0.5),
        "NormalizeReward": lambda v: W.NormalizeReward(v),
        "TransformAction": lambda v: W.TransformAction(v, lambda a: a, v.action_space),
        "VectorizeTransformAction": lambda v: W.VectorizeTransformAction(
            v, gym.wrappers.TransformAction, func=lambda a: a, action_space=v.single_action_space
        ),
    }


@pytest.mark.parametrize("mode", ["chunk", "token"])
@pytest.mark.parametrize("name", sorted(_wrappers()))
def test_gymnasium_vector_wrappers(make_vec, tokenizer, name, mode):
    vec, _ = make_vec(n=2, mode=mode, autoreset_mode="next_step")
    wrapped = _wrappers()[name](vec)
    wrapped.reset(seed=0, options={"index": np.array([0, 2])})
    turns = [
        ("<search> capital of Norway </search>", "hmm"),
        ("<answer> Oslo </answer>", "<answer> Paris </answer>"),
    ]
    for first, second in turns:
        a, b = tokenizer.encode(first), tokenizer.encode(second)
        if mode == "chunk":
            obs, rewards, term, trunc, info = wrapped.step([a, b])
        else:
            for t in range(max(len(a), len(b))):
                pair = np.array([a[min(t, len(a) - 1)], b[min(t, len(b) - 1)]])
                obs, rewards, term, trunc, info = wrapped.step(pair)
                if t == len(a) - 1 and first.startswith("<search>"):
                    break  # the search closed: one retriever call, infos with query keys
                if term.any():
                    break
    assert term[0]
    if name == "DictInfoToList":
        assert isinstance(info, list) and info[0]["answer"] == "Oslo"
    else:
        assert info["answer"][0] == "Oslo" and info["_answer"][0]
    if name == "RecordEpisodeStatistics":
        assert info["_episode"][0] and info["episode"]["r"][0] == 1.0


def test_chunk_actions_may_be_a_2d_array(make_vec, tokenizer):
    vec, retriever = make_vec(n=2)
    vec.reset(seed=0, options={"index": np.array([0, 2])})
    ids = tokenizer.encode("<search> capital of Norway </search>")
    vec.step(np.array([ids, ids]))
    assert retriever.calls == [["capital of Norway"]] and vec.last_batch.unique_queries == 1
