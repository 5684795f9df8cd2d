"""Scripted episodes through the token-level env: masks, turns, rewards, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from search_env.env import EpisodeOverError
from search_env.protocol import INVALID_ACTION_MESSAGE
from search_env.retrievers.base import RetrievalError
from tests.faults import env_state, plain


def feed_tokens(env, ids):
    """Step token by token; return the step results of the last step and the count."""
    out = None
    for n, tid in enumerate(ids, start=1):
        out = env.step(tid)
        if out[1] != 0 or out[2] or out[3] or out[4].get("turn_ended"):
            return out, n
    return out, len(ids)


def agent_ids(obs):
    length = int(obs["length"][0])
    tokens, mask = obs["tokens"][:length], obs["mask"][:length]
    return tokens[mask == 1].tolist()


def test_search_then_answer_episode(make_env, tokenizer, retriever):
    env = make_env()
    obs, info = env.reset(options={"index": 0})
    prompt_len = int(obs["length"][0])
    assert obs["mask"][:prompt_len].sum() == 0
    assert info["question"].startswith("What is the capital")
    turn1 = tokenizer.encode("<think> look it up </think>\n<search> capital of Norway </search>")
    (obs, reward, term, trunc, info), used = feed_tokens(env, turn1)
    assert used == len(turn1)
    assert info["action"] == "search" and info["query"] == "capital of Norway"
    assert retriever.calls == [["capital of Norway"]]
    assert (reward, term, trunc) == (0.0, False, False)
    length = int(obs["length"][0])
    text = tokenizer.decode(obs["tokens"][:length].tolist())
    assert '<information>Doc 1(Title: "Oslo") Oslo is the capital of Norway.\n' in text
    assert text.endswith("</information>\n\n")
    turn2 = tokenizer.encode("<answer> oslo </answer>")
    (obs, reward, term, trunc, info), _ = feed_tokens(env, turn2)
    assert term and not trunc and reward == 1.0
    assert info["answer"] == "oslo" and info["searches"] == 1
    assert info["scores"]["em"] == 1.0 and info["queries"] == ["capital of Norway"]
    assert agent_ids(obs) == turn1 + turn2
    with pytest.raises(EpisodeOverError):
        env.step(turn2[0])


def test_mask_and_length_invariants(make_env, tokenizer):
    env = make_env(action_mode="chunk")
    obs, _ = env.reset(options={"index": 1})
    turns = [
        "<search> largest city Switzerland </search>",
        "no tags here",
        "<answer> Zürich </answer>",
    ]
    sent = []
    for t in turns:
        ids = tokenizer.encode(t)
        sent += ids
        obs, reward, term, trunc, info = env.step(ids)
    assert term and reward == 1.0
    length = int(obs["length"][0])
    assert obs["tokens"][length:].sum() == 0 and obs["mask"][length:].sum() == 0
    assert agent_ids(obs) == sent
    assert env.context_ids.shape == env.loss_mask.shape == (length,)
    full = tokenizer.decode(obs["tokens"][:length].tolist())
    assert INVALID_ACTION_MESSAGE in full


def test_token_and_chunk_modes_agree(make_env, tokenizer):
    turns = [
        "<think> a </think><search> capital of France </search>",
        "<search>   </search>",
        "hmm<|endoftext|>",
        "<answer> Paris </answer>",
    ]
    results = {}
    for mode in ("token", "chunk"):
        env = make_env(action_mode=mode)
        env.reset(options={"index": 2})
        for t in turns:
            ids = tokenizer.encode(t)
            if mode == "chunk":
                out = env.step(ids)
            else:
                out, used = feed_tokens(env, ids)
                assert used == len(ids)
        obs, reward, term, trunc, info = out
        length = int(obs["length"][0])
        results[mode] = (
            obs["tokens"][:length].tolist(),
            obs["mask"][:length].tolist(),
            reward,
            term,
            info["searches"],
        )
    assert results["token"] == results["chunk"]
    assert results["token"][2] == 1.0


def test_tag_split_across_tokens_and_merged(make_env, tokenizer):
    env = make_env()
    env.reset(options={"index": 0})
    # Closing tag spelled one character per token.
    ids = tokenizer.encode("<search> capital of Norway ")
    for ch in "</search>":
        ids += tokenizer.encode(ch)
    (obs, *_rest), used = feed_tokens(env, ids)
    info = _rest[-1]
    assert used == len(ids) and info["action"] == "search"
    assert info["query"] == "capital of Norway"


def test_tag_merged_with_neighbouring_text(retriever):
    """A BPE without regex pre-splitting learns tokens like 'y</search>\n\n'."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from search_env.env import SearchQAEnv
    from tests.conftest import QUESTIONS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(["<search> Norway</search>\n\nDoc"] * 50, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    ids = hf.encode("<search> Norway</search>\n\nDoc")
    pieces = [hf.decode([t]) for t in ids]
    assert any("</search>" in p and p.strip() != "</search>" for p in pieces), pieces
    env = SearchQAEnv(QUESTIONS, retriever, hf)
    env.reset(options={"index": 0})
    for n, tid in enumerate(ids, start=1):
        *_, info = env.step(tid)
        if info["turn_ended"]:
            break
    assert info["action"] == "search" and info["query"] == "Norway"
    assert retriever.calls == [["Norway"]]


def test_text_after_closing_tag_is_ignored_in_chunk_mode(make_env, tokenizer):
    env = make_env(action_mode="chunk")
    env.reset(options={"index": 0})
    head = tokenizer.encode("<search> capital of Norway </search>")
    tail = tokenizer.encode(" more text <answer> x </answer>")
    obs, reward, term, trunc, info = env.step(head + tail)
    assert info["action"] == "search" and info["ignored_tokens"] == len(tail)
    assert agent_ids(obs) == head and not term


def test_utf8_character_split_across_tokens(make_env, tokenizer):
    env = make_env(action_mode="chunk")
    env.reset(options={"index": 1})
    # "ü" is two bytes; spell each byte as its own byte-level token.
    byte_tokens = tokenizer.convert_tokens_to_ids(["Ã", "¼"])
    ids = tokenizer.encode("<answer> Z") + byte_tokens + tokenizer.encode("rich </answer>")
    assert tokenizer.decode(byte_tokens) == "ü"
    obs, reward, term, trunc, info = env.step(ids)
    assert term and info["answer"] == "Zürich" and reward == 1.0


def test_turn_budget_and_final_turn(make_env, tokenizer, retriever):
    env = make_env(action_mode="chunk", max_turns=1, max_response_length=8)
    env.reset(options={"index": 0})
    long_turn = tokenizer.encode("blah " * 20)
    obs, r, term, trunc, info = env.step(long_turn)
    assert info["end_reason"] == "budget" and info["action"] == "invalid"
    assert info["ignored_tokens"] == len(long_turn) - 8
    # max_turns=1 was spent by the invalid turn: the next search is not executed.
    obs, r, term, trunc, info = env.step(tokenizer.encode("<search> Oslo </search>"))
    assert trunc and not term and r == 0.0
    assert info.get("search_skipped") and retriever.calls == []
    assert info["answer"] is None and info["searches"] == 0


def test_max_turns_allows_that_many_searches(make_env, tokenizer, retriever):
    env = make_env(action_mode="chunk", max_turns=2)
    env.reset(options={"index": 0})
    for _ in range(2):
        obs, r, term, trunc, info = env.step(tokenizer.encode("<search> Oslo </search>"))
        assert not (term or trunc)
    obs, r, term, trunc, info = env.step(tokenizer.encode("<answer> Oslo </answer>"))
    assert term and r == 1.0 and len(retriever.calls) == 2 and info["turn"] == 3


def test_observation_cut_keeps_closing_tag(make_env, tokenizer):
    env = make_env(action_mode="chunk", max_obs_length=12, topk=4)
    obs, _ = env.reset(options={"index": 0})
    start = int(obs["length"][0])
    ids = tokenizer.encode("<search> city </search>")
    obs, *_ = env.step(ids)
    length = int(obs["length"][0])
    block = obs["tokens"][start + len(ids) : length].tolist()
    assert len(block) == 12
    assert tokenizer.decode(block).endswith("</information>\n\n")


def test_context_limit_truncates(make_env, tokenizer):
    env = make_env(action_mode="token", max_prompt_length=300, max_start_length=200)
    obs, _ = env.reset(options={"index": 0})
    room = 300 - int(obs["length"][0])
    filler = tokenizer.encode(" a")[0]
    for i in range(room):
        obs, r, term, trunc, info = env.step(filler)
        if trunc:
            break
    assert trunc and not term and int(obs["length"][0]) == 300


def test_answer_without_search_and_several_tags(make_env, tokenizer):
    env = make_env(action_mode="chunk")
    env.reset(options={"index": 2})
    text = "<answer> Paris </answer>"
    obs, r, term, trunc, info = env.step(tokenizer.encode(text))
    assert term and r == 1.0 and info["searches"] == 0
    env.reset(options={"index": 2})
    obs, r, term, trunc, info = env.step(tokenizer.encode("<answer> Rome <search> x </search>"))
    # The first complete pair decides: this is a search for "x", the answer is unclosed.
    assert info["action"] == "search" and info["query"] == "x" and info["tag_count"] == 3


def test_query_limits(make_env, tokenizer, retriever):
    env = make_env(action_mode="chunk", max_query_chars=10)
    env.reset(options={"index": 0})
    obs, r, term, trunc, info = env.step(tokenizer.encode("<search> capital of Norway </search>"))
    assert info["query_truncated"] and info["query"] == "capital of"
    assert retriever.calls[-1] == ["capital of"]
    obs, r, term, trunc, info = env.step(tokenizer.encode("<search> \n </search>"))
    assert info["action"] == "invalid" and len(retriever.calls) == 1


@pytest.mark.parametrize(
    "action, error",
    [(-1, ValueError), (10**9, ValueError), (1.5, TypeError), (True, TypeError), ("a", TypeError)],
)
def test_bad_token_actions(make_env, action, error):
    env = make_env()
    obs, _ = env.reset(options={"index": 0})
    with pytest.raises(error):
        env.step(action)
    # Nothing was consumed by the bad action.
    assert env.loss_mask.sum() == 0


@pytest.mark.parametrize(
    "action, error",
    [([], ValueError), ([[1, 2]], ValueError), ([1.0, 2.0], TypeError), ([5, 10**9], ValueError)],
)
def test_bad_chunk_actions(make_env, action, error):
    env = make_env(action_mode="chunk")
    env.reset(options={"index": 0})
    with pytest.raises(error):
        env.step(action)
    assert env.loss_mask.sum() == 0


def test_numpy_token_ids_are_accepted(make_env, tokenizer):
    env = make_env()
    env.reset(options={"index": 0})
    env.step(np.int32(tokenizer.encode("a")[0]))
    env.step(np.array(tokenizer.encode("b")[0]))
    assert env.loss_mask.sum() == 2


def test_step_before_reset_raises(make_env):
    with pytest.raises(EpisodeOverError):
        make_env().step(0)


def test_constructor_validation(make_env, tokenizer, retriever):
    with pytest.raises(ValueError):
        make_env(action_mode="words")
    with pytest.raises(TypeError, match="unknown SearchQAEnv arguments"):
        make_env(topkk=3)
    with pytest.raises(ValueError):
        make_env(max_obs_length=0)
    with pytest.raises(TypeError, match="search"):
        make_env(retriever=object())
    with pytest.raises(ValueError, match="index"):
        make_env().reset(options={"index": 99})


def test_seeded_reset_is_reproducible(make_env):
    picks = []
    for _ in range(2):
        env = make_env()
        picks.append([env.reset(seed=7)[1]["index"]] + [env.reset()[1]["index"] for _ in range(8)])
    assert picks[0] == picks[1]
    assert len(set(picks[0])) > 1


class _Failing:
    def search(self, queries, k):
        raise RetrievalError("server at http://127.0.0.1:9 is down")


def test_retrieval_error_raise_and_observe(make_env, tokenizer):
    ids = tokenizer.encode("<search> Oslo </search>")
    env = make_env(action_mode="chunk", retriever=_Failing())
    env.reset(options={"index": 0})
    with pytest.raises(RetrievalError):
        env.step(ids)
    env = make_env(action_mode="chunk", retriever=_Failing(), on_retrieval_error="observe")
    env.reset(options={"index": 0})
    obs, r, term, trunc, info = env.step(ids)
    assert "is down" in info["retrieval_error"] and not (term or trunc)
    length = int(obs["length"][0])
    assert "Retrieval failed" in tokenizer.decode(obs["tokens"][:length].tolist())


def test_f1_reward_and_format_score(make_env, tokenizer):
    env = make_env(action_mode="chunk", reward_metric="f1")
    env.reset(options={"index": 1})
    *_, info = env.step(tokenizer.encode("<answer> Zurich city </answer>"))
    assert info["scores"]["f1"] == pytest.approx(2 / 3)
    env = make_env(action_mode="chunk", format_score=0.1)
    env.reset(options={"index": 1})
    _, r, *_ = env.step(tokenizer.encode("<answer> Geneva </answer>"))
    assert r == pytest.approx(0.1)


def test_eos_ends_turn_and_counts_as_agent_token(make_env, tokenizer):
    env = make_env()
    env.reset(options={"index": 0})
    eos = tokenizer.eos_token_id
    obs, r, term, trunc, info = env.step(eos)
    assert info["turn_ended"] and info["end_reason"] == "eos" and info["action"] == "invalid"
    assert env.loss_mask.sum() == 1


def test_chat_template_is_used_when_present(make_env, tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = "{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}<|assistant|>"
    from search_env.env import SearchQAEnv
    from tests.conftest import PASSAGES, QUESTIONS, MemoryRetriever

    env = SearchQAEnv(QUESTIONS, MemoryRetriever(PASSAGES), tok)
    obs, _ = env.reset(options={"index": 0})
    text = tok.decode(obs["tokens"][: int(obs["length"][0])].tolist())
    assert text.startswith("<|user|>Answer the given question.") and text.endswith("<|assistant|>")
    env = SearchQAEnv(QUESTIONS, MemoryRetriever(PASSAGES), tok, use_chat_template=False)
    obs, _ = env.reset(options={"index": 0})
    text = tok.decode(obs["tokens"][: int(obs["length"][0])].tolist())
    assert text.startswith("Answer the given question.") and text.endswith("Norway?\n")


def test_gymnasium_check_env(make_env):
    from gymnasium.utils.env_checker import check_env

    for mode in ("token", "chunk"):
        check_env(make_env(action_mode=mode), skip_render_check=True)


def test_render_ansi(make_env):
    env = make_env(render_mode="ansi")
    env.reset(options={"index": 0})
    assert "Question: What is the capital of Norway?" in env.render()


@pytest.mark.parametrize("seed", range(6))
def test_chunk_turn_ends_match_token_mode_on_random_streams(make_env, tokenizer, seed):
    """Chunk mode finds every turn end (tag, EOS, budget, context) where token mode does."""
    rng = np.random.default_rng(seed)
    answer = (
        "<answer> Oslo </answer>" if seed % 2 else "<search> Paris </search>"
    )  # even: run to the context limit
    pieces = (
        [
            tokenizer.encode(t)
            for t in [
                "<search> Oslo </search>",
                answer,
                "</sea",
                "rch>",
                "</",
                "answer>",
                "Zürich",
                "hello world",
                "<search>",
                " 東京 ",
            ]
        ]
        + [[tokenizer.eos_token_id]]
        + [[int(t)] for t in rng.integers(2, len(tokenizer), 20)]
    )
    stream: list[int] = []
    while len(stream) < 3000:
        stream += pieces[int(rng.integers(len(pieces)))]
    kw = dict(
        max_turns=10_000,
        max_response_length=int(rng.integers(5, 40)),
        max_prompt_length=900,
        max_start_length=300,
        max_obs_length=60,
    )
    token_env, chunk_env = make_env(action_mode="token", **kw), make_env(action_mode="chunk", **kw)
    token_env.reset(options={"index": 0})
    chunk_env.reset(options={"index": 0})
    pos = 0
    reasons: set[str] = set()
    while True:
        start = pos
        while True:
            t_out = token_env.step(stream[pos])
            pos += 1
            if t_out[4]["turn_ended"] or t_out[2] or t_out[3]:
                break
        c_out = chunk_env.step(stream[start:])
        assert c_out[4]["ignored_tokens"] == len(stream) - pos
        for key in ("action", "end_reason", "query", "answer"):
            assert t_out[4].get(key) == c_out[4].get(key), key
        assert np.array_equal(t_out[0]["tokens"], c_out[0]["tokens"])
        assert np.array_equal(t_out[0]["mask"], c_out[0]["mask"])
        assert t_out[1:4] == c_out[1:4]
        reasons.add(c_out[4]["end_reason"])
        if t_out[2] or t_out[3]:
            break
    if seed % 2 == 0:  # no answers: the context limit ends it
        assert t_out[3] and int(t_out[0]["length"][0]) == 900


def test_search_closing_at_the_context_limit_is_not_run(make_env, tokenizer, retriever):
    probe = make_env(action_mode="chunk")
    obs, _ = probe.reset(options={"index": 0})
    prompt = int(obs["length"][0])
    ids = tokenizer.encode("<search> Oslo </search>")
    env = make_env(
        action_mode="chunk", max_prompt_length=prompt + len(ids), max_start_length=prompt
    )
    env.reset(options={"index": 0})
    obs, r, term, trunc, info = env.step(ids)
    assert info["end_reason"] == "tag" and info["search_skipped"] and trunc
    assert retriever.calls == [] and int(obs["length"][0]) == prompt + len(ids)


# ------------------------------------------------------------- failures change nothing
def test_failed_reset_leaves_the_running_episode_untouched(make_env, tokenizer):
    import gymnasium

    from tests.faults import LONG_QUESTION

    env = make_env(action_mode="chunk")
    env.reset(seed=3, options={"index": 0})
    env.step(tokenizer.encode("<search> capital of Norway </search>"))
    before = env_state(env)
    cases = [
        (None, {"index": 99}, ValueError, "index"),
        (5, {"index": 99}, ValueError, "index"),
        (None, {"index": True}, ValueError, "index"),
        (None, {"index": 1.0}, ValueError, "index"),
        (5, {"example": LONG_QUESTION}, ValueError, "no room"),
        (None, {"example": "What is it?"}, TypeError, "QAExample"),
        (None, {"idx": 1}, ValueError, r"'idx'.*accepted.*'example', 'index'"),
        (None, [("index", 1)], TypeError, "mapping"),
        (-1, None, gymnasium.error.Error, "greater or equal to zero"),
    ]
    for seed, options, error, match in cases:
        with pytest.raises(error, match=match):
            env.reset(seed=seed, options=options)
        assert env_state(env) == before, (seed, options)
    # The episode goes on, scored against its own question's answers.
    obs, reward, term, trunc, info = env.step(tokenizer.encode("<answer> Oslo </answer>"))
    assert term and reward == 1.0 and info["golden_answers"] == ["Oslo"] and info["index"] == 0


def test_failed_reset_does_not_advance_the_rng(tokenizer, retriever):
    from search_env.env import SearchQAEnv
    from tests.conftest import QUESTIONS
    from tests.faults import LONG_QUESTION

    def draws_long(seed):  # what the first unseeded reset after reset(seed=seed) draws
        return np.random.default_rng(seed).integers(2) == 1

    env = SearchQAEnv([QUESTIONS[0], LONG_QUESTION], retriever, tokenizer)
    env.reset(seed=0, options={"index": 0})
    state, seed_before = env.np_random.bit_generator.state, env.np_random_seed
    long_seeds = [s for s in range(20) if draws_long(s)]
    assert len(long_seeds) > 3
    for seed in long_seeds:
        with pytest.raises(ValueError, match="no room"):
            env.reset(seed=seed)
        assert env.np_random.bit_generator.state == state and env.np_random_seed == seed_before
    # Unseeded: the failing draw is not consumed, so the same draw fails again.
    env.reset(seed=long_seeds[0], options={"index": 0})
    state = env.np_random.bit_generator.state
    for _ in range(2):
        with pytest.raises(ValueError, match="no room"):
            env.reset()
        assert env.np_random.bit_generator.state == state
    env.reset(options={"index": 0})  # the fixed call goes through


@pytest.mark.parametrize("mode", ["token", "chunk"])
def test_retrieval_failure_can_be_retried_as_if_it_never_happened(make_env, tokenizer, mode):
    from tests.conftest import PASSAGES, MemoryRetriever
    from tests.faults import FlakyRetriever

    flaky = FlakyRetriever(failures=1)
    env = make_env(action_mode=mode, retriever=flaky)
    ref = make_env(action_mode=mode, retriever=MemoryRetriever(PASSAGES))
    for e in (env, ref):
        e.reset(seed=1, options={"index": 0})
    turns = [
        tokenizer.encode("<search> capital of Norway </search>"),
        tokenizer.encode("<answer> Oslo </answer>"),
    ]
    steps = turns if mode == "chunk" else turns[0] + turns[1]
    search_step = 0 if mode == "chunk" else len(turns[0]) - 1  # the step that closes </search>
    for n, action in enumerate(steps):
        if n == search_step:
            before = env_state(env)
            with pytest.raises(RetrievalError, match="is down"):
                env.step(action)
            assert env_state(env) == before
        got, want = env.step(action), ref.step(action)
        for key in ("tokens", "mask", "length"):
            assert np.array_equal(got[0][key], want[0][key]), key
        assert got[1:4] == want[1:4] and plain(got[4]) == plain(want[4])
    assert flaky.failed == 1 and got[2] and got[1] == 1.0
    assert flaky.calls == [["capital of Norway"]]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"doc_format": "Doc {i} {bogus}\n"}, ValueError, "doc_format"),
        ({"doc_format": "Doc {0}\n"}, ValueError, "doc_format"),
        ({"doc_format": "Doc {i\n"}, ValueError, "doc_format"),
        ({"template": "{question} in {context}"}, ValueError, "template"),
        ({"template": "{question} or {0}"}, ValueError, "template"),
        ({"invalid_message": None}, TypeError, "invalid_message"),
        ({"use_chat_template": "no"}, TypeError, "use_chat_template"),
        ({"topk": 1.5}, TypeError, "topk"),
        ({"topk": True}, TypeError, "topk"),
        ({"max_turns": 1.5}, TypeError, "max_turns"),
        ({"max_obs_length": "500"}, TypeError, "max_obs_length"),
        ({"vocab_size": 10}, ValueError, "vocab_size"),
        ({"vocab_size": 600.0}, TypeError, "vocab_size"),
        ({"vocab_size": True}, TypeError, "vocab_size"),
        ({"tokenizer": 123}, TypeError, "tokenizer"),
        ({"tokenizer": "gpt2"}, TypeError, "tokenizer"),
    ],
)
def test_constructor_rejects_bad_arguments(tokenizer, retriever, kwargs, error, match):
    from search_env.env import SearchQAEnv
    from tests.conftest import QUESTIONS

    tok = kwargs.pop("tokenizer", tokenizer)
    with pytest.raises(error, match=match):
        SearchQAEnv(QUESTIONS, retriever, tok, action_mode="chunk", **kwargs)


def test_vocab_size_at_least_the_tokenizers_is_accepted(make_env, tokenizer):
    env = make_env(vocab_size=len(tokenizer) + 64)
    assert env.action_space.n == len(tokenizer) + 64
    assert make_env(vocab_size=len(tokenizer)).action_space.n == len(tokenizer)


def test_chunk_action_space_agrees_with_step(make_env):
    env = make_env(action_mode="chunk")
    space = env.action_space
    assert () not in space and (5,) in space and (5, 7) in space
    assert (10**9,) not in space
    space.seed(0)
    for _ in range(30):
        env.reset(options={"index": 0})
        action = space.sample()
        assert action in space
        env.step(action)  # every sample is a valid action
    with pytest.raises(ValueError, match="at least one"):
        space.sample(mask=(0, None))
    assert len(space.sample(mask=(3, None))) == 3
