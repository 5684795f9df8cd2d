"""Tests for the shipped synth byte-level BPE tokenizer."""

from __future__ import annotations

import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

from search_env.protocol import INVALID_ACTION_MESSAGE, SEARCH_R1_TEMPLATE  # noqa: E402
from search_env.synth.tokenizer import (  # noqa: E402
    ASSET_DIR,
    EOS_TOKEN,
    PAD_TOKEN,
    load_synth_tokenizer,
    train_synth_tokenizer,
)

TEXTS = [
    "<think> I need the birthplace of Velorin Quastad. </think>\n"
    "<search> Velorin Quastad born in city </search>",
    '\n\n<information>Doc 1(Title: "Trelmont") Trelmont is a city in Dravenia.\n</information>\n\n',
    "<answer> Trelmont </answer>",
    "Zürich 東京 🙂",
    "  leading spaces, tabs\tand\nnew lines  ",
    SEARCH_R1_TEMPLATE.format(question="Who founded Orvessa Dynamics?"),
    INVALID_ACTION_MESSAGE,
]


@pytest.fixture(scope="module")
def tok():
    return load_synth_tokenizer()


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text


def test_round_trip_of_concatenated_pieces(tok):
    # the env tokenizes each piece on its own and decodes the concatenation
    ids = [i for text in TEXTS for i in tok.encode(text, add_special_tokens=False)]
    assert tok.decode(ids) == "".join(TEXTS)


def test_special_tokens(tok):
    assert tok.eos_token == EOS_TOKEN and tok.pad_token == PAD_TOKEN
    assert tok.eos_token_id is not None and tok.pad_token_id is not None
    assert tok.eos_token_id != tok.pad_token_id
    assert tok.encode(EOS_TOKEN, add_special_tokens=False) == [tok.eos_token_id]
    assert tok.decode([tok.eos_token_id], skip_special_tokens=True) == ""
    assert tok.encode("hello", add_special_tokens=True) == tok.encode(
        "hello", add_special_tokens=False
    )  # no BOS/EOS added
    assert not getattr(tok, "chat_template", None)
    assert len(tok) == 4096


def test_protocol_text_is_compact(tok):
    assert len(tok.encode(SEARCH_R1_TEMPLATE)) < 150
    assert len(tok.encode("</search>")) <= 4


def test_loader_is_cached(tok):
    assert load_synth_tokenizer() is tok


def test_assets_are_small_and_load_with_auto_tokenizer():
    from transformers import AutoTokenizer

    files = {p.name: p.stat().st_size for p in ASSET_DIR.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= set(files)
    assert sum(files.values()) < 1_000_000
    auto = AutoTokenizer.from_pretrained(str(ASSET_DIR))
    assert auto.eos_token == EOS_TOKEN and auto.pad_token == PAD_TOKEN
    assert auto.decode(auto.encode(TEXTS[0])) == TEXTS[0]


def test_training_is_deterministic(tmp_path):
    train_synth_tokenizer(tmp_path / "a", vocab_size=600)
    train_synth_tokenizer(tmp_path / "b", vocab_size=600)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    with pytest.raises(ValueError):
        train_synth_tokenizer(tmp_path / "c", vocab_size=100)


def test_texts_digest_sees_every_text_and_its_boundaries():
    from search_env.synth.tokenizer import texts_digest

    assert texts_digest(["ab", "c"]) == texts_digest(iter(["ab", "c"]))
    assert texts_digest(["ab", "c"]) != texts_digest(["a", "bc"])
    assert texts_digest(["ab", "c"]) != texts_digest(["ab", "c", ""])


@pytest.fixture
def fresh_digests():
    from search_env.synth import tokenizer

    tokenizer._world_digest.cache_clear()
    yield
    tokenizer._world_digest.cache_clear()  # no digest of patched code outlives the test


def test_world_tokenizer_is_keyed_on_its_training_texts(tmp_path, monkeypatch, fresh_digests):
    from search_env.synth import oracle, tokenizer
    from search_env.synth.config import SynthConfig
    from search_env.synth.files import build_cached

    config = SynthConfig(num_entities=30)
    world_dir = build_cached(config, tmp_path)
    first = tokenizer.world_tokenizer(config, world_dir, 400)
    (trained,) = world_dir.glob("tokenizer-400-*")
    assert len(first) == 400

    def no_training(*args, **kwargs):
        raise AssertionError("retrained a cached tokenizer")

    with monkeypatch.context() as m:  # the same texts: the cached tokenizer
        m.setattr(tokenizer, "train_synth_tokenizer", no_training)
        assert tokenizer.world_tokenizer(config, world_dir, 400) is first
    # the oracle's wording changes the training texts, so a stale tokenizer is not reused
    tokenizer._world_digest.cache_clear()
    monkeypatch.setattr(oracle, "answer_turn", lambda thought, answer: f"<answer>{answer}</answer>")
    second = tokenizer.world_tokenizer(config, world_dir, 400)
    assert second is not first
    (retrained,) = set(world_dir.glob("tokenizer-400-*")) - {trained}
    assert (retrained / "tokenizer.json").read_bytes() != (trained / "tokenizer.json").read_bytes()
