"""Shared fixtures: a tiny tokenizer and an in-memory retriever."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pytest

from search_env.protocol import INVALID_ACTION_MESSAGE, SEARCH_R1_TEMPLATE
from search_env.types import Passage, QAExample

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
if "SEARCH_ENV_CACHE" not in os.environ:  # keep built worlds and indexes out of ~/.cache
    import tempfile

    os.environ["SEARCH_ENV_CACHE"] = tempfile.mkdtemp(prefix="search-env-test-cache-")


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = [
        SEARCH_R1_TEMPLATE,
        INVALID_ACTION_MESSAGE,
        "<think> need it </think>\n<search> capital of Norway </search>\n\n" * 3,
        "<answer> Oslo </answer> <information>Doc 1(Title: Oslo) Oslo is a city</information>",
        "q</search>\n\nq</search>\n\nq</search>\n\n",
    ] * 20
    tok.train_from_iterator(text, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>"
    )


@pytest.fixture(scope="session")
def tokenizer():
    return _train_tokenizer()


class MemoryRetriever:
    """Returns passages whose contents share a word with the query; counts calls."""

    def __init__(self, passages: Sequence[Passage]) -> None:
        self.passages = list(passages)
        self.calls: list[list[str]] = []

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        self.calls.append(list(queries))
        out = []
        for q in queries:
            words = set(q.lower().split())
            scored = [
                (len(words & set(p.contents.lower().replace('"', " ").split())), j, p)
                for j, p in enumerate(self.passages)
            ]
            scored.sort(key=lambda t: (-t[0], t[1]))
            out.append([p.with_score(float(s)) for s, _, p in scored[:k]])
        return out


PASSAGES = [
    Passage("1", '"Oslo"\nOslo is the capital of Norway.'),
    Passage("2", '"Bergen"\nBergen is a city in Norway.'),
    Passage("3", '"Zürich"\nZürich is the largest city in Switzerland.'),
    Passage("4", '"Paris"\nParis is the capital of France.'),
]

QUESTIONS = [
    QAExample("q0", "What is the capital of Norway", ("Oslo",)),
    QAExample("q1", "Largest city in Switzerland?", ("Zürich", "Zurich")),
    QAExample("q2", "What is the capital of France?", ("Paris",)),
]


@pytest.fixture
def retriever() -> MemoryRetriever:
    return MemoryRetriever(PASSAGES)


@pytest.fixture
def make_env(tokenizer, retriever):
    from search_env.env import SearchQAEnv

    def make(**kwargs):
        kwargs.setdefault("action_mode", "token")
        return SearchQAEnv(QUESTIONS, kwargs.pop("retriever", retriever), tokenizer, **kwargs)

    return make


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures(
    "one_thread")``): tiny models gain nothing from intra-op threads, and on a busy 2-core
    box the spin-waiting of a second thread makes every small op ~1000x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok(vec):
    """The tokenizer of the module's ``vec`` fixture (a search-env vector env)."""
    return vec.envs[0].tokenizer
