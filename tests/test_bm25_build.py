"""The numba score-matrix builder reproduces bm25s' ``BM25.index`` arrays bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

import bm25s  # noqa: E402

from search_env.retrievers.bm25 import BM25Retriever, building  # noqa: E402
from search_env.retrievers.bm25.analyzer import make_tokenizer  # noqa: E402
from search_env.retrievers.bm25.params import BM25Params  # noqa: E402
from search_env.types import Passage  # noqa: E402

WORDS = "running runs runner alpha beta gamma the of and city cities norway x".split()


def _passages(seed: int) -> list[Passage]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(int(rng.integers(1, 120))):
        n = int(rng.integers(0, 30))  # some empty, some only stopwords
        out.append(Passage(str(i), " ".join(rng.choice(WORDS, n))))
    return out


def _bm25s_reference(passages: list[Passage], params: BM25Params) -> bm25s.BM25:
    tokenizer = make_tokenizer(params)
    ids = list(
        tokenizer.streaming_tokenize(
            (p.contents for p in passages), update_vocab=True, allow_empty=True
        )
    )
    model = bm25s.BM25(k1=params.k1, b=params.b, method=params.method, backend="numpy")
    model.index(
        bm25s.tokenization.Tokenized(ids=ids, vocab=tokenizer.get_vocab_dict()),
        show_progress=False,
    )
    return model


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(("k1", "b"), [(0.9, 0.4), (1.2, 0.75), (0.0, 0.0), (2.0, 1.0)])
def test_score_matrix_equals_bm25s_bit_for_bit(seed, k1, b):
    passages = _passages(seed)
    r = BM25Retriever.build(passages, k1=k1, b=b, backend="numpy", show_progress=False)
    ref = _bm25s_reference(passages, BM25Params(k1=k1, b=b))
    for name in ("data", "indices", "indptr"):
        got, want = r._model.scores[name], ref.scores[name]
        np.testing.assert_array_equal(got, want, err_msg=name)
        assert got.dtype == want.dtype or name == "indptr", name
    assert r._model.scores["num_docs"] == ref.scores["num_docs"]
    assert r._model.vocab_dict == ref.vocab_dict


def test_other_methods_still_use_bm25s_index(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("fast builder used for a method it does not reproduce")

    monkeypatch.setattr(building, "build_scores", boom)
    r = BM25Retriever.build(_passages(0), method="atire", show_progress=False)
    assert r.search(["alpha"], k=1)[0]
    with pytest.raises(AssertionError, match="fast builder"):
        BM25Retriever.build(_passages(0), method="lucene", show_progress=False)
