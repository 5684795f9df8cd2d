"""Prompt, turn parsing and document formatting against the reference's formats."""

import pytest

from search_env.protocol import (
    ProtocolConfig,
    clean_question,
    format_documents,
    parse_turn,
    prompt_text,
)
from search_env.types import Passage


def test_prompt_matches_reference_text():
    text = prompt_text("  who wrote hamlet ", ProtocolConfig())
    assert text.startswith("Answer the given question. You must conduct reasoning inside <think>")
    assert "You can search as many times as your want." in text  # the reference's typo
    assert text.endswith("<answer> Beijing </answer>. Question: who wrote hamlet?\n")


def test_clean_question():
    assert clean_question("Why?") == "Why?"
    assert clean_question(" why ") == "why?"
    with pytest.raises(ValueError):
        clean_question("   ")


def test_format_documents_wiki18_style():
    docs = [Passage("1", '"Oslo"\nOslo is a city.\nSecond line.'), Passage("2", "NoText")]
    assert format_documents(docs) == (
        'Doc 1(Title: "Oslo") Oslo is a city.\nSecond line.\nDoc 2(Title: NoText) \n'
    )


@pytest.mark.parametrize(
    "text, kind, content",
    [
        ("<think>x</think><search> a b </search>", "search", "a b"),
        ("<answer> Paris </answer>", "answer", "Paris"),
        ("<answer></answer>", "answer", ""),
        ("<search>  </search>", "invalid", None),
        ("no tags", "invalid", None),
        ("<search> a </answer>", "invalid", None),
        ("<answer> x <search> y </search>", "search", "y"),
        ("<search>a\nb</search>", "search", "a\nb"),
    ],
)
def test_parse_turn(text, kind, content):
    action = parse_turn(text)
    assert (action.kind, action.content) == (kind, content)


def test_config_validation():
    with pytest.raises(ValueError):
        ProtocolConfig(template="no placeholder")
    with pytest.raises(ValueError):
        ProtocolConfig(topk=0)
    with pytest.raises(ValueError):
        ProtocolConfig(max_start_length=5000, max_prompt_length=4096)
