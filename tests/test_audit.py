"""The corpus coverage audit: gold-in-corpus and answer recall@k, the CLI, the builder."""

from __future__ import annotations

import json

import pytest

from search_env.audit import (
    AuditResult,
    add_supporting_passages,
    audit_dataset,
    format_table,
    gold_in_corpus,
    has_answer,
)
from search_env.cli import main
from search_env.data.corpus import iter_corpus
from search_env.data.qa import load_qa
from search_env.registration import load_retriever
from search_env.types import Passage, QAExample

FACTS = [
    ("Oslo", "Oslo is the capital and most populous city of Norway."),
    (
        "Mount Everest",
        "Mount Everest is Earth's highest mountain above sea level, in the Himalayas.",
    ),
    ("Jupiter", "Jupiter is the fifth planet from the Sun and the largest in the Solar System."),
    ("Hamlet", "Hamlet is a tragedy written by William Shakespeare between 1599 and 1601."),
    ("Canberra", "Canberra is the capital city of Australia."),
    ("Marie Curie", "Marie Curie was a physicist who won the Nobel Prize in Physics in 1903."),
]
QUESTIONS = [
    ("f0", "What is the capital of Norway?", ["Oslo"]),
    ("f1", "What is the highest mountain on Earth?", ["Mount Everest", "Everest"]),
    ("f2", "Which is the largest planet in the Solar System?", ["Jupiter"]),
    ("f3", "Who wrote the tragedy Hamlet?", ["William Shakespeare", "Shakespeare"]),
    ("f4", "What is the capital city of Australia?", ["Canberra"]),
    ("f5", "In which year did Marie Curie win the Nobel Prize in Physics?", ["1903"]),
]


def write_files(tmp_path, facts=FACTS, questions=QUESTIONS):
    corpus = tmp_path / "corpus.jsonl"
    with open(corpus, "w") as f:
        for i, (title, text) in enumerate(facts):
            f.write(json.dumps({"id": str(i), "contents": f'"{title}"\n{text}'}) + "\n")
    qa = tmp_path / "facts.jsonl"
    with open(qa, "w") as f:
        for qid, question, golds in questions:
            f.write(json.dumps({"id": qid, "question": question, "golden_answers": golds}) + "\n")
    return corpus, qa


def test_real_facts_are_all_in_the_corpus_and_found(tmp_path, capsys):
    corpus, qa = write_files(tmp_path)
    examples = load_qa(qa)
    result = audit_dataset("facts", examples, corpus, load_retriever(corpus=corpus), k=3)
    print(format_table([result]))
    assert result.questions == 6 and result.gold_in_corpus == 1.0 and result.missing == ()
    assert sorted(result.recall_at_k) == [1, 3]
    assert result.recall_at_k[1] <= result.recall_at_k[3]
    assert result.recall_at_k[3] >= 5 / 6  # BM25 finds these one-fact questions
    out = capsys.readouterr().out
    assert "| facts | 6 | 1.000 |" in out
    print(out)  # the recall figures, for the log


def test_a_missing_answer_is_counted_and_named(tmp_path):
    corpus, qa = write_files(
        tmp_path,
        questions=[*QUESTIONS, ("f6", "Who painted the Mona Lisa?", ["Leonardo da Vinci"])],
    )
    result = audit_dataset("facts", load_qa(qa), corpus, None)
    assert result.gold_in_corpus == pytest.approx(6 / 7) and result.missing == ("f6",)
    assert result.recall_at_k == {}


def test_has_answer_matches_whole_words_only():
    assert has_answer("The U.S. is big", ["us"])
    assert not has_answer("She plays music", ["us"])
    assert has_answer('"Oslo"\nOslo, Norway', ["oslo"])
    assert not has_answer("anything", [""])
    found = gold_in_corpus(
        [QAExample("a", "q?", ("New York",)), QAExample("b", "q?", ("York",))],
        [Passage("1", "old york minster")],
    )
    assert found == [False, True]


def test_cli_on_the_synthetic_world(tmp_path, capsys):
    from search_env.synth.files import synth_world_dir

    world = synth_world_dir("tiny")
    out = tmp_path / "audit.json"
    argv = [
        "audit",
        "--dataset",
        str(world / "test.jsonl"),
        "--corpus",
        str(world / "corpus.jsonl"),
    ]
    assert main([*argv, "--k", "5", "--limit", "30", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    (row,) = report["results"]
    assert report["k"] == 5 and row["questions"] == 30
    assert row["gold_in_corpus"] == 1.0  # the world is built so that every answer is written
    assert set(row["recall_at_k"]) == {"1", "5"}
    assert 0.0 <= row["recall_at_k"]["1"] <= row["recall_at_k"]["5"] <= 1.0
    assert "gold in corpus" in printed and "recall@5" in printed
    print(printed)


def test_builder_adds_supporting_passages_with_provenance(tmp_path):
    corpus, qa = write_files(
        tmp_path,
        questions=[*QUESTIONS, ("f6", "Who painted the Mona Lisa?", ["Leonardo da Vinci"])],
    )
    out = tmp_path / "fixed.jsonl"
    support = [
        {
            "title": "Mona Lisa",
            "text": "The Mona Lisa was painted by Leonardo da Vinci.",
            "source": "facts:f6",
        },
        {"contents": '"Oslo"\nOslo is the capital and most populous city of Norway.'},  # dup
        {"title": "Mona Lisa", "text": "The Mona Lisa was painted by Leonardo da Vinci."},  # dup
    ]
    assert add_supporting_passages(corpus, support, out) == 1
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(FACTS) + 1
    assert records[-1] == {
        "id": "added-0",
        "contents": '"Mona Lisa"\nThe Mona Lisa was painted by Leonardo da Vinci.',
        "source": "facts:f6",
    }
    assert [p.id for p in iter_corpus(out)][: len(FACTS)] == [str(i) for i in range(len(FACTS))]
    result = audit_dataset("facts", load_qa(qa), out, None)
    assert result.gold_in_corpus == 1.0


def test_builder_bad_input(tmp_path):
    corpus, _ = write_files(tmp_path)
    with pytest.raises(ValueError, match="already in the corpus"):
        add_supporting_passages(corpus, [{"id": "0", "contents": "new"}], tmp_path / "o.jsonl")
    with pytest.raises(ValueError, match="'contents' or 'title' and 'text'"):
        add_supporting_passages(corpus, [{"text": "x"}], tmp_path / "o.jsonl")
    with pytest.raises(ValueError, match="must differ"):
        add_supporting_passages(corpus, [], corpus)
    assert not (tmp_path / "o.jsonl").exists()  # nothing half-written


def test_bad_k_is_a_clear_error(tmp_path):
    corpus, qa = write_files(tmp_path)
    with pytest.raises(ValueError, match="k must be"):
        audit_dataset("facts", load_qa(qa), corpus, None, k=0)
    assert AuditResult("d", 1, 1.0, {1: 0.5}).as_dict()["recall_at_k"] == {"1": 0.5}
