"""The oracle (search_env.synth.oracle) and no-search (search_env.baselines) agents on
strings alone."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from search_env.baselines import NoSearchAgent, TextAgent
from search_env.protocol import ProtocolConfig, clean_question, format_documents, parse_turn
from search_env.rewards import exact_match
from search_env.synth.config import SynthConfig
from search_env.synth.oracle import OracleAgent
from search_env.synth.relations import FACT_TEMPLATES
from search_env.synth.world import generate_world
from search_env.types import Passage, QAExample

PROTOCOL = ProtocolConfig()
Search = Callable[[str, QAExample], Sequence[Passage]]


@pytest.fixture(scope="module")
def world():
    return generate_world(SynthConfig())


def play(agent: TextAgent, example: QAExample, search: Search) -> tuple[str | None, list[str]]:
    """One episode of the protocol, without the env: returns the answer and the queries."""
    agent.reset(example)
    observation = PROTOCOL.template.format(question=clean_question(example.question))
    queries: list[str] = []
    for turn in range(PROTOCOL.max_turns + 1):
        action = parse_turn(agent.act(observation))
        if action.kind == "answer":
            return action.content, queries
        if action.kind == "search" and turn < PROTOCOL.max_turns:
            queries.append(action.content or "")
            docs = format_documents(search(action.content or "", example), PROTOCOL)
            observation = PROTOCOL.information_format.format(docs=docs)
        else:
            observation = PROTOCOL.invalid_message
    return None, queries


def gold_search(world) -> Search:
    by_id = {p.id: p for p in world.passages}
    return lambda query, example: [by_id[h["passage_id"]] for h in example.metadata["hops"]]


def test_agents_satisfy_the_protocol():
    assert isinstance(OracleAgent(), TextAgent)
    assert isinstance(NoSearchAgent(), TextAgent)


def test_oracle_on_gold_passages_is_near_perfect(world):
    search = gold_search(world)
    test = world.questions["test"]
    scores = [exact_match(play(OracleAgent(), q, search)[0], q.golden_answers) for q in test]
    assert sum(scores) / len(scores) >= 0.99


def test_oracle_searches_hop_by_hop_with_the_entity_it_read(world):
    search = gold_search(world)
    bridges = [q for q in world.questions["train"] if len(q.metadata["hops"]) == 3]
    assert bridges
    for q in bridges[:10]:
        answer, queries = play(OracleAgent(), q, search)
        assert queries == [h["query"] for h in q.metadata["hops"]]
        assert exact_match(answer, q.golden_answers) == 1.0


def test_oracle_quotes_the_evidence_it_read(world):
    search = gold_search(world)
    by_id = {p.id: p for p in world.passages}
    for q in [q for q in world.questions["train"] if len(q.metadata["hops"]) == 2][:10]:
        plain, quoting = OracleAgent(), OracleAgent(quote_evidence=True)
        turns = []
        quoting.reset(q)
        observation = PROTOCOL.template.format(question=q.question)
        for hop in q.metadata["hops"]:
            turns.append(quoting.act(observation))
            docs = format_documents([by_id[hop["passage_id"]]], PROTOCOL)
            observation = PROTOCOL.information_format.format(docs=docs)
        turns.append(quoting.act(observation))
        # each turn after a search opens with the sentence that states the hop's fact
        for hop, turn in zip(q.metadata["hops"], turns[1:]):
            template = FACT_TEMPLATES[hop["relation"]]
            sentence = template.split("{O}")[0].replace("{S}", hop["subject"])
            if "{" not in sentence:  # templates with {a}/{kind} are checked by the object
                assert turn.startswith(f"<think> {sentence}{hop['object']}")
            assert hop["object"] in turn.split("</think>")[0]
            assert hop["object"] in by_id[hop["passage_id"]].contents
        assert "I need" not in turns[-1] and parse_turn(turns[-1]).kind == "answer"
        assert play(quoting, q, search) == play(plain, q, search)  # same searches and answer
    with_nothing = OracleAgent(quote_evidence=True)
    q = world.questions["train"][0]
    with_nothing.reset(q)
    with_nothing.act(q.question)
    assert "</think>" in with_nothing.act("<information>nothing here</information>")
    assert q.metadata["hops"][0]["object"] not in with_nothing.act("<information></information>")


def test_oracle_reads_the_bridge_from_the_results_not_the_metadata(world):
    q = next(q for q in world.questions["train"] if q.metadata["type"] == "bridge")
    first = q.metadata["hops"][0]
    wrong_bridge = "Zzyzx Qwol"
    sentence = FACT_TEMPLATES[first["relation"]].format(
        S=first["subject"], O=wrong_bridge, a="a", kind="novel"
    )
    planted = Passage("y", f'"{first["subject"]}"\n{sentence}')
    results = iter([[planted]])

    def search(query: str, example: QAExample) -> list[Passage]:
        return next(results, [])

    answer, queries = play(OracleAgent(), q, search)
    assert wrong_bridge in queries[1]
    assert exact_match(answer, q.golden_answers) == 0.0


def test_oracle_retries_then_guesses_when_nothing_is_found(world):
    q = next(q for q in world.questions["test"] if q.metadata["type"] == "single")
    answer, queries = play(OracleAgent(retries=1), q, lambda query, ex: [])
    subject = q.metadata["hops"][0]["subject"]
    assert queries == [q.metadata["hops"][0]["query"], subject]
    assert answer == subject  # best guess: the last entity it knew


def test_oracle_respects_its_search_budget(world):
    q = next(q for q in world.questions["test"] if len(q.metadata["hops"]) == 3)
    answer, queries = play(OracleAgent(max_searches=2, retries=5), q, lambda query, ex: [])
    assert len(queries) == 2 and answer is not None


def test_oracle_comparison_with_one_year_missing(world):
    q = next(q for q in world.questions["test"] if q.metadata["type"] == "comparison")
    by_id = {p.id: p for p in world.passages}
    second = q.metadata["hops"][1]

    def search(query: str, example: QAExample) -> list[Passage]:
        return [by_id[second["passage_id"]]] if second["subject"] in query else []

    answer, queries = play(OracleAgent(), q, search)
    assert len(queries) == 3  # first entity, its retry, second entity
    assert answer == second["subject"]


def test_oracle_needs_hops():
    with pytest.raises(ValueError, match="hops"):
        OracleAgent().reset(QAExample("q", "Who?", ("x",)))


def test_oracle_with_bm25_finds_nearly_everything(world):
    bm25s = pytest.importorskip("bm25s")
    passages = world.passages
    index = bm25s.BM25()
    index.index(
        bm25s.tokenize([p.contents for p in passages], stopwords="en", show_progress=False),
        show_progress=False,
    )

    def search(query: str, example: QAExample) -> list[Passage]:
        tokens = bm25s.tokenize([query], stopwords="en", show_progress=False)
        docs, _ = index.retrieve(tokens, k=PROTOCOL.topk, show_progress=False)
        return [passages[int(i)] for i in docs[0]]

    test = world.questions["test"]
    scores = [exact_match(play(OracleAgent(), q, search)[0], q.golden_answers) for q in test]
    assert sum(scores) / len(scores) >= 0.95


def test_no_search_agent_scores_about_zero(world):
    search_calls = []

    def search(query: str, example: QAExample) -> list[Passage]:
        search_calls.append(query)
        return []

    questions = world.questions["train"] + world.questions["test"]
    scores = [exact_match(play(NoSearchAgent(), q, search)[0], q.golden_answers) for q in questions]
    assert not search_calls
    assert sum(scores) / len(scores) <= 0.02


def test_no_search_agent_is_seeded(world):
    q = world.questions["test"][0]
    year_q = next(q for q in world.questions["test"] if q.question.startswith("In what year"))
    a, b, c = NoSearchAgent(seed=1), NoSearchAgent(seed=1), NoSearchAgent(seed=2)
    for agent in (a, b, c):
        agent.reset(q)
    turn = a.act("prompt")
    assert turn == b.act("prompt") and turn != c.act("prompt")
    assert parse_turn(turn).kind == "answer"
    a.reset(year_q)
    assert parse_turn(a.act("prompt")).content.isdigit()
