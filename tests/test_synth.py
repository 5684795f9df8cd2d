"""Tests for search_env.synth: determinism, gold paths, splits, files, cache."""

from __future__ import annotations

import gzip
import json
import math
from collections import defaultdict
from pathlib import Path

import pytest

from search_env.rewards import normalize
from search_env.synth import files
from search_env.synth.config import QUESTION_MIX, QUESTION_TYPES, SynthConfig
from search_env.synth.files import build_cached, write_corpus, write_qa
from search_env.synth.relations import RELATIONS, extract_fact
from search_env.synth.world import SynthWorld, generate_world


@pytest.fixture(scope="module")
def world() -> SynthWorld:
    return generate_world(SynthConfig())


def _all_questions(world):
    return world.questions["train"] + world.questions["test"]


def _rows(world):
    return [(q.id, q.question, q.golden_answers, q.metadata) for q in _all_questions(world)]


def test_same_seed_same_world_and_different_seed_differs():
    a = generate_world(SynthConfig(seed=3, num_entities=120))
    b = generate_world(SynthConfig(seed=3, num_entities=120))
    c = generate_world(SynthConfig(seed=4, num_entities=120))
    assert a.passages == b.passages
    assert [p.contents for p in a.passages] == [p.contents for p in b.passages]
    assert _rows(a) == _rows(b)
    assert [p.contents for p in a.passages] != [p.contents for p in c.passages]
    assert [q.question for q in _all_questions(a)] != [q.question for q in _all_questions(c)]


def test_default_sizes(world):
    assert world.num_passages == len(world.passages)
    assert 900 <= len(world.passages) <= 1200
    total = len(_all_questions(world))
    assert 380 <= total <= 400  # one per entity, minus dropped duplicates


def test_sizes_scale_with_num_entities(world):
    small = generate_world(SynthConfig(num_entities=100))
    ratio_p = len(world.passages) / len(small.passages)
    ratio_q = len(_all_questions(world)) / len(_all_questions(small))
    assert 3.3 < ratio_p < 4.7
    assert 3.3 < ratio_q < 4.7
    more = generate_world(
        SynthConfig(num_entities=100, distractors_per_entity=3.0, questions_per_entity=2.0)
    )
    assert len(more.passages) > len(small.passages) + 150
    assert len(_all_questions(more)) > 1.8 * len(_all_questions(small))


def test_passages_are_wiki18_style(world):
    ids = [p.id for p in world.passages]
    assert len(set(ids)) == len(ids)
    assert all(isinstance(i, str) for i in ids)
    for p in world.passages:
        assert p.title.startswith('"') and p.title.endswith('"') and len(p.title) > 2
        assert 30 <= len(p.text.split()) <= 100, p.contents


def test_names_and_aliases_are_unique(world):
    keys = [normalize(n) for n in world.names] + [normalize(a) for a in world.aliases if a]
    assert len(set(keys)) == len(keys)
    kinds = {world.kind(i) for i in range(len(world.names))}
    assert kinds == {"person", "city", "country", "organisation", "work"}
    assert sum(bool(a) for a in world.aliases) > len(world.names) // 2


def test_every_hop_is_stated_in_its_gold_passage(world):
    by_id = {p.id: p for p in world.passages}
    for q in _all_questions(world):
        meta = q.metadata
        assert meta["type"] in {"single", "bridge", "comparison"}
        hops = meta["hops"]
        assert 1 <= len(hops) <= 3
        for hop in hops:
            assert set(hop) == {"subject", "relation", "object", "passage_id", "query"}
            passage = by_id[hop["passage_id"]]
            assert extract_fact(hop["relation"], hop["subject"], passage.contents) == hop["object"]
            assert hop["subject"] in hop["query"]
        if meta["type"] == "comparison":
            assert len(hops) == 2
            earlier = min(hops, key=lambda h: int(h["object"]))
            assert q.golden_answers[0] == earlier["subject"]
            assert {h["subject"] for h in hops} <= set(
                q.question.replace("?", "").split(", ")[1].split(" or ")
            )
        else:
            assert (meta["type"] == "single") == (len(hops) == 1)
            for prev, nxt in zip(hops, hops[1:]):
                assert nxt["subject"] == prev["object"]
            assert hops[-1]["object"] == q.golden_answers[0]
            assert hops[0]["subject"] in q.question


def test_question_mix(world):
    hops = defaultdict(int)
    for q in _all_questions(world):
        hops[(q.metadata["type"], len(q.metadata["hops"]))] += 1
    for key in [("single", 1), ("bridge", 2), ("bridge", 3), ("comparison", 2)]:
        assert hops[key] >= 20, dict(hops)


def test_only_gold_passages_state_an_entitys_facts(world):
    """Near-namesakes and mentions never state a fact about a real entity."""
    gold: dict[tuple[str, str], str] = {}
    for idx, name in enumerate(world.names):
        for relation, rel in RELATIONS.items():
            if world.kinds[idx] in rel.subject_kinds and world.fact(idx, relation) is not None:
                gold[(name, relation)] = world.fact_passage_id(idx, relation)
    by_name = defaultdict(list)
    for (name, relation), pid in gold.items():
        by_name[name].append((relation, pid))
    for p in world.passages:
        for name, facts in by_name.items():
            if name not in p.contents:
                continue
            for relation, pid in facts:
                found = extract_fact(relation, name, p.contents)
                if pid == p.id:
                    idx = world.entity_index(name)
                    assert found == world.fact(idx, relation)
                else:
                    assert found is None, (name, relation, p.contents)


def test_near_namesakes_exist_and_do_not_match(world):
    titles = {p.title.strip('"') for p in world.passages}
    namesakes = titles - set(world.names)
    assert namesakes  # distractor titles
    text = (
        "Velorin Quastadt was born in the city of Brell. "
        "Avelorin Quastad was born in the city of Orm."
    )
    assert extract_fact("birthplace", "Velorin Quastad", text) is None
    assert extract_fact("birthplace", "Velorin Quastadt", text) == "Brell"


def test_extract_fact_reads_information_blocks():
    block = (
        '\n\n<information>Doc 1(Title: "Orvessa Dynamics") Orvessa Dynamics was founded by '
        'Velorin Quastad. Orvessa Dynamics was founded in 1932.\nDoc 2(Title: "The Amber Gate") '
        "The Amber Gate is an album by Ivo Trel. Velorin Quastad worked as an engineer.\n"
        "</information>\n\n"
    )
    assert extract_fact("founder", "Orvessa Dynamics", block) == "Velorin Quastad"
    assert extract_fact("founded_year", "Orvessa Dynamics", block) == "1932"
    assert extract_fact("creator", "The Amber Gate", block) == "Ivo Trel"
    assert extract_fact("occupation", "Velorin Quastad", block) == "engineer"
    assert extract_fact("headquarters", "Orvessa Dynamics", block) is None
    with pytest.raises(ValueError, match="unknown relation"):
        extract_fact("nickname", "Orvessa Dynamics", block)


def test_aliases_are_gold_answers(world):
    with_alias = 0
    for q in _all_questions(world):
        answer = q.golden_answers[0]
        if answer in world.names:
            idx = world.entity_index(answer)
            assert q.golden_answers == world.answers(idx)
            with_alias += len(q.golden_answers) > 1
    assert with_alias > 50


def test_split_is_disjoint_and_holds_out_entities(world):
    train, test = world.questions["train"], world.questions["test"]
    assert train and test
    assert not {q.question for q in train} & {q.question for q in test}
    assert len({q.id for q in train + test}) == len(train) + len(test)
    heldout = {world.names[i] for i, flag in enumerate(world.heldout) if flag}
    assert heldout

    def names_in(q):
        return {h["subject"] for h in q.metadata["hops"]} | {
            h["object"] for h in q.metadata["hops"]
        }

    assert not any(names_in(q) & heldout for q in train)
    assert any(names_in(q) & heldout for q in test)
    assert all(q.metadata["heldout"] == bool(names_in(q) & heldout) for q in train + test)


def test_heldout_and_test_fraction_extremes():
    no_test = generate_world(
        SynthConfig(num_entities=60, test_fraction=0.0, heldout_entity_fraction=0.0)
    )
    assert no_test.questions["test"] == [] and no_test.questions["train"]
    all_test = generate_world(SynthConfig(num_entities=60, test_fraction=1.0))
    assert all_test.questions["train"] == []


def test_smallest_world_works():
    world = generate_world(SynthConfig(num_entities=20, seed=9))
    assert world.passages and _all_questions(world)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_entities": 5},
        {"num_entities": 100.0},
        {"seed": "x"},
        {"test_fraction": 1.5},
        {"heldout_entity_fraction": -0.1},
        {"distractors_per_entity": -1.0},
        {"distractors_per_entity": math.inf},
        {"questions_per_entity": 0.0},
        {"questions_per_entity": math.nan},
        {"question_mix": (1.0, 1.0)},
        {"question_mix": (0.0, 0.0, 0.0, 0.0)},
        {"question_mix": (1.0, -1.0, 1.0, 1.0)},
    ],
)
def test_bad_configs_raise(kwargs):
    with pytest.raises(ValueError):
        SynthConfig(**kwargs)


def test_question_types_have_one_spelling(world):
    assert QUESTION_TYPES == ("single", "bridge", "comparison")
    assert [tuple(s) for s in QUESTION_MIX] == [
        ("single", 1),
        ("bridge", 2),
        ("bridge", 3),
        ("comparison", 2),
    ]
    shapes = {(q.metadata["type"], len(q.metadata["hops"])) for q in _all_questions(world)}
    assert shapes == set(QUESTION_MIX)
    with pytest.raises(ValueError, match="4 weights .*2-hop bridge, 3-hop bridge"):
        SynthConfig(question_mix=(1.0, 1.0))


def test_only_one_question_shape_when_the_mix_says_so():
    for i, shape in enumerate(QUESTION_MIX[:3]):  # a comparison may fall back to a bridge
        mix = tuple(1.0 if j == i else 0.0 for j in range(len(QUESTION_MIX)))
        world = generate_world(SynthConfig(num_entities=60, question_mix=mix))
        hops = {len(q.metadata["hops"]) for q in _all_questions(world)}
        types = {q.metadata["type"] for q in _all_questions(world)}
        assert shape.type in types and shape.hops in hops
        assert types <= {shape.type, "single"}  # a bridge falls back to one hop at worst


def test_named_sizes():
    assert SynthConfig.of_size("tiny") == SynthConfig(num_entities=100)
    assert SynthConfig.of_size("small", seed=3) == SynthConfig(num_entities=400, seed=3)
    assert SynthConfig.of_size("tiny", num_entities=2000).num_entities == 2000
    with pytest.raises(ValueError, match="size must be one of"):
        SynthConfig.of_size("huge")


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("name", ["corpus.jsonl", "corpus.jsonl.gz"])
def test_write_corpus_is_valid_and_reproducible(tmp_path, name):
    world = generate_world(SynthConfig(num_entities=60))
    first = write_corpus(world, tmp_path / name)
    rows = _read_jsonl(first)
    assert rows == [{"id": p.id, "contents": p.contents} for p in world.passages]
    again = write_corpus(generate_world(SynthConfig(num_entities=60)), tmp_path / f"b-{name}")
    assert first.read_bytes() == again.read_bytes()


def test_write_qa_flashrag_rows(tmp_path, world):
    paths = write_qa(world, tmp_path)
    for split, path in paths.items():
        rows = _read_jsonl(path)
        assert len(rows) == len(world.questions[split])
        row, q = rows[0], world.questions[split][0]
        assert set(row) == {"id", "question", "golden_answers", "metadata"}
        assert row["golden_answers"] == list(q.golden_answers)
        assert row["metadata"] == q.metadata


def test_build_cached_writes_once_and_reuses(tmp_path, monkeypatch):
    config = SynthConfig(num_entities=50, seed=1)
    path = build_cached(config, tmp_path)
    assert path.parent == tmp_path
    for name in ("corpus.jsonl", "train.jsonl", "test.jsonl", "config.json"):
        assert (path / name).is_file()
    corpus = _read_jsonl(path / "corpus.jsonl")
    assert corpus and all(set(r) == {"id", "contents"} for r in corpus)
    assert _read_jsonl(path / "train.jsonl")
    assert json.loads((path / "config.json").read_text())["config"]["seed"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a cached world")

    monkeypatch.setattr(files, "generate_world", fail)
    assert build_cached(config, tmp_path) == path
    with pytest.raises(AssertionError):
        build_cached(SynthConfig(num_entities=50, seed=2), tmp_path)


def test_build_cached_uses_env_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SEARCH_ENV_CACHE", str(tmp_path))
    path = build_cached(SynthConfig(num_entities=30))
    assert path.parent == tmp_path
    again = build_cached(SynthConfig(num_entities=30), tmp_path / "other")
    assert (path / "corpus.jsonl").read_bytes() == (again / "corpus.jsonl").read_bytes()
    assert path.name == again.name
