"""Several queries in one turn (``max_queries_per_turn``): one retriever call, one grouped block."""

from __future__ import annotations

import numpy as np
import pytest

from search_env.env import SearchQAEnv
from search_env.protocol import ProtocolConfig
from search_env.vector import SearchQAVectorEnv
from tests.conftest import PASSAGES, QUESTIONS, MemoryRetriever
from tests.faults import plain

TWO = "<think> x </think><search> capital of Norway </search><search> Switzerland city </search>"


def step_turn(env, ids):
    """One turn: the whole chunk, or token by token until the turn ends."""
    if env.action_mode == "chunk":
        return env.step(ids)
    for n, tid in enumerate(ids, start=1):
        out = env.step(tid)
        if out[4]["turn_ended"] or out[2] or out[3]:
            return out
    return out


@pytest.mark.parametrize("mode", ["token", "chunk"])
def test_two_queries_in_one_turn(make_env, tokenizer, retriever, mode):
    env = make_env(action_mode=mode, max_queries_per_turn=2)
    env.reset(options={"index": 0})
    obs, reward, term, trunc, info = step_turn(env, tokenizer.encode(TWO))
    assert info["action"] == "search" and info["turn_queries"] == 2 and info["searches"] == 2
    assert retriever.calls == [["capital of Norway", "Switzerland city"]]  # one call
    text = tokenizer.decode(obs["tokens"][: int(obs["length"][0])].tolist())
    block = text[text.rindex("<information>") :]
    assert block.startswith('<information>Query 1: capital of Norway\nDoc 1(Title: "Oslo")')
    q2 = block.index("Query 2: Switzerland city\nDoc 1(")
    assert block.index("Zürich") > q2 and block.endswith("</information>\n\n")
    obs, reward, term, trunc, info = step_turn(env, tokenizer.encode("<answer> Oslo </answer>"))
    assert term and reward == 1.0 and info["queries"] == ["capital of Norway", "Switzerland city"]
    assert info["reward_components"]["retrieval_hit"] == 1.0


def test_token_and_chunk_modes_agree(make_env, tokenizer):
    turns = [
        TWO + "<|endoftext|> trailing",  # 2 of 3 queries, then EOS ends the turn
        "<search> Paris </search> then <answer> no </answer>",  # first pair decides: search
        "<search> Bergen </search><|endoftext|>",  # one query, ended by EOS
        "<search> a b </search><search>  </search><search> Oslo </search><search> x </search>",
        "<answer> Oslo </answer>",
    ]
    runs = {}
    for mode in ("token", "chunk"):
        retriever = MemoryRetriever(PASSAGES)
        env = make_env(action_mode=mode, retriever=retriever, max_queries_per_turn=3, max_turns=6)
        env.reset(options={"index": 0})
        infos = []
        for text in turns:
            *_, info = step_turn(env, tokenizer.encode(text))
            infos.append((info.get("action"), info.get("end_reason"), info.get("turn_queries")))
        runs[mode] = (env.context_ids.tolist(), env.loss_mask.tolist(), infos, retriever.calls)
    assert runs["token"][:3] == runs["chunk"][:3]
    assert (
        runs["token"][3]
        == runs["chunk"][3]
        == [
            ["capital of Norway", "Switzerland city"],
            ["Paris"],
            ["Bergen"],
            ["a b", "Oslo"],  # the empty block is skipped; the 4th is past the 3rd closing tag
        ]
    )


def test_the_turn_ends_at_the_last_allowed_closing_tag(make_env, tokenizer):
    env = make_env(action_mode="chunk", max_queries_per_turn=2)
    env.reset(options={"index": 0})
    head = tokenizer.encode("<search> a </search><search> b </search>")
    tail = tokenizer.encode("<search> c </search>")
    *_, info = env.step(head + tail)
    assert info["ignored_tokens"] == len(tail) and info["turn_queries"] == 2


def test_budgets_hold(make_env, tokenizer, retriever):
    env = make_env(action_mode="chunk", max_queries_per_turn=2, max_turns=1, max_obs_length=30)
    obs, _ = env.reset(options={"index": 0})
    start = int(obs["length"][0])
    obs, r, term, trunc, info = env.step(tokenizer.encode(TWO))
    length = int(obs["length"][0])
    agent = len(tokenizer.encode(TWO))
    assert length - start - agent == 30  # the block is cut to max_obs_length ...
    assert tokenizer.decode(obs["tokens"][:length].tolist()).endswith("</information>\n\n")
    obs, r, term, trunc, info = env.step(tokenizer.encode("<search> more </search>"))
    assert trunc and info["search_skipped"] and len(retriever.calls) == 1  # ... and max_turns


def test_vector_env_batches_every_query_of_every_sub_env(tokenizer):
    retriever = MemoryRetriever(PASSAGES)
    envs = [
        SearchQAEnv(QUESTIONS, retriever, tokenizer, action_mode="chunk", max_queries_per_turn=2)
        for _ in range(3)
    ]
    vec = SearchQAVectorEnv(3, envs=envs, autoreset_mode="disabled")
    vec.reset(options={"index": np.array([0, 1, 2])})
    actions = [
        tokenizer.encode(TWO),
        tokenizer.encode("<search> capital of Norway </search><|endoftext|>"),
        tokenizer.encode("<answer> Paris </answer>"),
    ]
    out = plain(vec.step(actions))
    assert retriever.calls == [["capital of Norway", "Switzerland city"]]  # one call, deduped
    assert vec.last_batch.queries == 3 and vec.last_batch.unique_queries == 2
    assert out[1] == [0.0, 0.0, 1.0]
    for i, ids in enumerate(actions[:2]):
        single = SearchQAEnv(
            QUESTIONS,
            MemoryRetriever(PASSAGES),
            tokenizer,
            action_mode="chunk",
            max_queries_per_turn=2,
        )
        single.reset(options={"index": i})
        single.step(ids)
        assert vec.envs[i].context_ids.tolist() == single.context_ids.tolist()


def test_default_is_one_query_and_bad_values_are_refused(make_env, tokenizer, retriever):
    assert ProtocolConfig().max_queries_per_turn == 1
    env = make_env(action_mode="chunk")
    env.reset(options={"index": 0})
    *_, info = env.step(tokenizer.encode(TWO))
    assert retriever.calls == [["capital of Norway"]] and "turn_queries" not in info
    for bad, error in ((0, ValueError), (True, TypeError), (1.5, TypeError)):
        with pytest.raises(error, match="max_queries_per_turn"):
            ProtocolConfig(max_queries_per_turn=bad)
    with pytest.raises(ValueError, match="query_header"):
        ProtocolConfig(query_header="{nope}")


@pytest.mark.parametrize("seed", range(4))
def test_chunk_turn_ends_match_token_mode_on_random_streams(make_env, tokenizer, seed):
    """With several queries a turn, chunk mode still ends every turn where token mode does."""
    rng = np.random.default_rng(seed)
    texts = [
        "<search> Oslo </search>",
        "<answer> Oslo </answer>" if seed % 2 else "<search> Bergen </search>",  # even: no end
        "</sea",
        "rch>",
        "</",
        "answer>",
        "hello world",
        "<search>",
        "<search> Paris </search>",
        " 東京 ",
    ]
    pieces = [tokenizer.encode(t) for t in texts] + [[tokenizer.eos_token_id]]
    pieces += [[int(t)] for t in rng.integers(2, len(tokenizer), 20)]
    stream: list[int] = []
    while len(stream) < 3000:
        stream += pieces[int(rng.integers(len(pieces)))]
    kw = dict(
        max_turns=10_000,
        max_response_length=int(rng.integers(10, 60)),
        max_prompt_length=900,
        max_start_length=300,
        max_obs_length=60,
        max_queries_per_turn=int(rng.integers(2, 4)),
    )
    token_env, chunk_env = make_env(action_mode="token", **kw), make_env(action_mode="chunk", **kw)
    token_env.reset(options={"index": 0})
    chunk_env.reset(options={"index": 0})
    pos, several = 0, 0
    while True:
        start = pos
        while True:
            t_out = token_env.step(stream[pos])
            pos += 1
            if t_out[4]["turn_ended"] or t_out[2] or t_out[3]:
                break
        c_out = chunk_env.step(stream[start:])
        assert c_out[4]["ignored_tokens"] == len(stream) - pos
        for key in ("action", "end_reason", "query", "turn_queries", "answer"):
            assert t_out[4].get(key) == c_out[4].get(key), key
        assert np.array_equal(t_out[0]["tokens"], c_out[0]["tokens"])
        assert np.array_equal(t_out[0]["mask"], c_out[0]["mask"])
        assert t_out[1:4] == c_out[1:4]
        several += (c_out[4].get("turn_queries") or 0) > 1
        if t_out[2] or t_out[3]:
            break
    if seed % 2 == 0:  # run to the context limit: turns of several queries did occur
        assert t_out[3] and several > 0
