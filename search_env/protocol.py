"""The Search-R1 protocol: prompt, tags, turn parsing and document formatting.

Pure functions over strings plus one config dataclass. Every default matches the
reference implementation (PeterGriffinJin/Search-R1); see ``shared/PROTOCOL.md``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Any, Literal

from search_env.types import Passage

TAGS: tuple[str, ...] = ("<search>", "</search>", "<answer>", "</answer>", "<think>", "</think>")
"""Every tag of the protocol, opening and closing."""

STOP_STRINGS: tuple[str, ...] = ("</search>", "</answer>")
"""The closing tags that end a turn: the first of them in the agent's text ends it."""

SEARCH_R1_TEMPLATE = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> first "
    "every time you get new information. After reasoning, if you find you lack some knowledge, "
    "you can call a search engine by <search> query </search> and it will return the top "
    "searched results between <information> and </information>. You can search as many times "
    "as your want. If you find no further external knowledge needed, you can directly provide "
    "the answer inside <answer> and </answer>, without detailed illustrations. For example, "
    "<answer> Beijing </answer>. Question: {question}\n"
)

INVALID_ACTION_MESSAGE = (
    "\nMy previous action is invalid. If I want to search, I should put the query between "
    "<search> and </search>. If I want to give the final answer, I should put the answer "
    "between <answer> and </answer>. Let me try again.\n"
)

ActionKind = Literal["search", "answer", "invalid"]


@dataclass(frozen=True)
class ProtocolConfig:
    """Everything that defines the conversation format and its budgets."""

    template: str = SEARCH_R1_TEMPLATE
    """Prompt template; ``{question}`` is replaced by the cleaned question."""
    use_chat_template: bool = True
    """Wrap the prompt in the tokenizer's chat template when it has one."""
    invalid_message: str = INVALID_ACTION_MESSAGE
    """Text appended when a turn has neither a search nor an answer."""
    information_format: str = "\n\n<information>{docs}</information>\n\n"
    """How retrieved documents are wrapped; must end with ``</information>`` plus padding."""
    doc_format: str = "Doc {i}(Title: {title}) {text}\n"
    """One retrieved document; ``i`` counts from 1."""
    topk: int = 3
    """Passages retrieved per search."""
    max_turns: int = 4
    """Turns in which a search is executed; one final turn without search follows."""
    max_start_length: int = 2048
    """Token budget of the prompt (a longer question is kept whole and flagged)."""
    max_response_length: int = 500
    """Agent tokens per turn."""
    max_obs_length: int = 500
    """Tokens per information block (cut, keeping ``</information>``)."""
    max_prompt_length: int = 4096
    """Tokens in the whole context; reaching it truncates the episode."""
    max_query_chars: int = 1000
    """Longer queries are cut to this many characters (noted in ``info``)."""

    def __post_init__(self) -> None:
        for name in ("template", "invalid_message", "information_format", "doc_format"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a str, got {type(getattr(self, name)).__name__}")
        if not isinstance(self.use_chat_template, bool):
            raise TypeError(f"use_chat_template must be a bool, got {self.use_chat_template!r}")
        for name in (
            "topk",
            "max_turns",
            "max_start_length",
            "max_response_length",
            "max_obs_length",
            "max_prompt_length",
            "max_query_chars",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral):
                raise TypeError(f"{name} must be an int, got {value!r}")
        if "{question}" not in self.template:
            raise ValueError("template must contain '{question}'")
        # Format both once now: a bad placeholder would otherwise raise mid-episode.
        _check_format("template", self.template, question="q")
        _check_format("doc_format", self.doc_format, i=1, title="t", text="x")
        if "{docs}" not in self.information_format:
            raise ValueError("information_format must contain '{docs}'")
        for name in (
            "topk",
            "max_response_length",
            "max_obs_length",
            "max_prompt_length",
            "max_start_length",
            "max_query_chars",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_turns < 0:
            raise ValueError(f"max_turns must be >= 0, got {self.max_turns}")
        if self.max_start_length >= self.max_prompt_length:
            raise ValueError("max_start_length must be smaller than max_prompt_length")


def _check_format(name: str, fmt: str, **fields: Any) -> None:
    """Raise a ValueError naming ``name`` if ``fmt.format(**fields)`` fails."""
    try:
        fmt.format(**fields)
    except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
        raise ValueError(
            f"{name} {fmt!r} does not format with the fields {sorted(fields)}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def clean_question(question: str) -> str:
    """Strip the question and end it with '?' as the reference does."""
    question = question.strip()
    if not question:
        raise ValueError("empty question")
    return question if question.endswith("?") else question + "?"


def prompt_text(question: str, config: ProtocolConfig, tokenizer: Any | None = None) -> str:
    """The full prompt string: the template, put through the chat template if any."""
    content = config.template.format(question=clean_question(question))
    if (
        tokenizer is not None
        and config.use_chat_template
        and getattr(tokenizer, "chat_template", None)
    ):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
    return content


def document_lines(passages: Sequence[Passage], config: ProtocolConfig | None = None) -> list[str]:
    """One ``Doc {i}(Title: {title}) {text}\n`` entry per passage, numbered from 1."""
    fmt = (config or ProtocolConfig()).doc_format
    return [fmt.format(i=i, title=p.title, text=p.text) for i, p in enumerate(passages, start=1)]


def format_documents(passages: Sequence[Passage], config: ProtocolConfig | None = None) -> str:
    """The documents part of an information block."""
    return "".join(document_lines(passages, config))


_TURN_RE = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL)
_ANY_TAG_RE = re.compile(r"</?(search|answer)>")


@dataclass(frozen=True)
class TurnAction:
    """What one agent turn asked for."""

    kind: ActionKind
    content: str | None
    """The stripped query or answer; None for an invalid turn."""
    tag_count: int
    """How many search/answer tags the turn text holds (>2 means several)."""


def parse_turn(text: str) -> TurnAction:
    """Read the first complete ``<search>``/``<answer>`` pair of a turn.

    A search with an empty (whitespace) query is invalid; an empty answer is an answer.
    """
    tags = len(_ANY_TAG_RE.findall(text))
    match = _TURN_RE.search(text)
    if match is None:
        return TurnAction("invalid", None, tags)
    kind, content = match.group(1), match.group(2).strip()
    if kind == "search" and not content:
        return TurnAction("invalid", None, tags)
    action: ActionKind = "search" if kind == "search" else "answer"  # _TURN_RE's two tags
    return TurnAction(action, content, tags)
