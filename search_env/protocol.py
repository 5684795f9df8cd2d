"""The Search-R1 protocol: prompt, tags, turn parsing and document formatting.

Pure functions over strings plus one config dataclass. Every default matches the
reference implementation (PeterGriffinJin/Search-R1); see ``shared/PROTOCOL.md``.
"""

from __future__ import annotations

import dataclasses
import functools
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
    name: str = "search-r1"
    """The preset this config is (or was derived from); see :data:`PRESETS`."""
    search_tags: tuple[str, str] = ("<search>", "</search>")
    """Opening and closing tag of a query; the closing one ends a turn."""
    answer_tags: tuple[str, str] = ("<answer>", "</answer>")
    """Opening and closing tag of the final answer; the closing one ends a turn."""
    think_tags: tuple[str, str] = ("<think>", "</think>")
    """Reasoning tags (only the format reward reads them)."""
    information_tags: tuple[str, str] = ("<information>", "</information>")
    """The tags ``information_format`` wraps the documents in."""
    refine_tags: tuple[str, str] | None = None
    """AutoRefine's knowledge-refinement tags, written by the agent after documents
    (they end no turn; the format and refine rewards read them); None elsewhere."""
    max_queries_per_turn: int = 1
    """Search blocks one turn may hold (1 = Search-R1). With more (ParallelSearch,
    arXiv 2508.09303), a turn ends at its ``max_queries_per_turn``-th closing search tag
    (or an answer's closing tag, EOS, the budget); the search blocks of a turn whose first
    pair is a search are all run in one retriever call, and their documents come back in
    one information block, each group under ``query_header``."""
    query_header: str = "Query {j}: {query}\n"
    """Heads each query's documents when ``max_queries_per_turn > 1`` (``j`` from 1)."""
    boxed_answer: bool = False
    """Read the answer from the last ``\\boxed{...}`` inside the answer tags when there
    is one (ReSearch asks for ``\\boxed``); the whole answer text otherwise."""

    @property
    def stop_strings(self) -> tuple[str, str]:
        """The closing tags that end a turn (``STOP_STRINGS`` for Search-R1)."""
        return (self.search_tags[1], self.answer_tags[1])

    @property
    def tags(self) -> tuple[str, ...]:
        """Every tag of the protocol, opening and closing (``TAGS`` for Search-R1)."""
        pairs = [self.search_tags, self.answer_tags, self.think_tags]
        if self.refine_tags is not None:
            pairs.append(self.refine_tags)
        return tuple(tag for pair in pairs for tag in pair)

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
            "max_queries_per_turn",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral):
                raise TypeError(f"{name} must be an int, got {value!r}")
        if "{question}" not in self.template:
            raise ValueError("template must contain '{question}'")
        # Format both once now: a bad placeholder would otherwise raise mid-episode.
        _check_format("template", self.template, question="q")
        _check_format("doc_format", self.doc_format, i=1, title="t", text="x")
        if not isinstance(self.query_header, str):
            raise TypeError("query_header must be a str")
        _check_format("query_header", self.query_header, j=1, query="q")
        if "{docs}" not in self.information_format:
            raise ValueError("information_format must contain '{docs}'")
        for name in (
            "topk",
            "max_response_length",
            "max_obs_length",
            "max_prompt_length",
            "max_start_length",
            "max_query_chars",
            "max_queries_per_turn",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_turns < 0:
            raise ValueError(f"max_turns must be >= 0, got {self.max_turns}")
        if self.max_start_length >= self.max_prompt_length:
            raise ValueError("max_start_length must be smaller than max_prompt_length")
        if not isinstance(self.name, str) or not isinstance(self.boxed_answer, bool):
            raise TypeError("name must be a str and boxed_answer a bool")
        pairs = {
            "search_tags": self.search_tags,
            "answer_tags": self.answer_tags,
            "think_tags": self.think_tags,
            "information_tags": self.information_tags,
        }
        if self.refine_tags is not None:
            pairs["refine_tags"] = self.refine_tags
        for name, pair in pairs.items():
            if (
                not isinstance(pair, tuple)
                or len(pair) != 2
                or not all(isinstance(t, str) and t.strip() for t in pair)
            ):
                raise ValueError(f"{name} must be a tuple of two non-empty strings, got {pair!r}")
        closes = self.stop_strings
        if closes[0] == closes[1] or self.search_tags[0] == self.answer_tags[0]:
            raise ValueError("search_tags and answer_tags must differ")
        head, _, tail = self.information_format.partition("{docs}")
        if self.information_tags[0] not in head or self.information_tags[1] not in tail:
            raise ValueError(
                f"information_format {self.information_format!r} must wrap '{{docs}}' in "
                f"information_tags {self.information_tags!r}"
            )


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


@functools.lru_cache(maxsize=32)
def _turn_patterns(
    search: tuple[str, str], answer: tuple[str, str]
) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """The first-pair regex and the any-tag regex of a protocol's search/answer tags."""
    pair = "|".join(
        f"(?P<{kind}>{re.escape(open_)}(?P<{kind}_body>.*?){re.escape(close)})"
        for kind, (open_, close) in (("search", search), ("answer", answer))
    )
    any_tag = "|".join(re.escape(t) for t in sorted({*search, *answer}, key=len, reverse=True))
    return re.compile(pair, re.DOTALL), re.compile(any_tag)


_BOXED_RE = re.compile(r"\\boxed\{")


def boxed_content(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` in ``text`` (braces balanced), or None."""
    starts = [m.end() for m in _BOXED_RE.finditer(text)]
    if not starts:
        return None
    depth, start = 1, starts[-1]
    for pos in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[pos], 0)
        if depth == 0:
            return text[start:pos]
    return None


@dataclass(frozen=True)
class TurnAction:
    """What one agent turn asked for."""

    kind: ActionKind
    content: str | None
    """The stripped query or answer; None for an invalid turn."""
    tag_count: int
    """How many search/answer tags the turn text holds (>2 means several)."""


def parse_turn(text: str, config: ProtocolConfig | None = None) -> TurnAction:
    """Read the first complete search or answer pair of a turn (``config``'s tags,
    Search-R1's ``<search>``/``<answer>`` by default).

    A search with an empty (whitespace) query is invalid; an empty answer is an answer.
    With ``config.boxed_answer`` the answer is the last ``\\boxed{...}`` inside it, if any.
    """
    config = config or _DEFAULT
    pair_re, any_re = _turn_patterns(config.search_tags, config.answer_tags)
    tags = len(any_re.findall(text))
    match = pair_re.search(text)
    if match is None:
        return TurnAction("invalid", None, tags)
    if match.group("search") is not None:
        content = match.group("search_body").strip()
        if not content:
            return TurnAction("invalid", None, tags)
        return TurnAction("search", content, tags)
    content = match.group("answer_body").strip()
    if config.boxed_answer:
        boxed = boxed_content(content)
        content = content if boxed is None else boxed.strip()
    return TurnAction("answer", content, tags)


def parse_queries(text: str, config: ProtocolConfig) -> list[str]:
    """The non-empty (stripped) queries of every search block of a turn, in order, at
    most ``config.max_queries_per_turn`` of them."""
    search = config.search_tags
    pattern = re.escape(search[0]) + "(.*?)" + re.escape(search[1])
    queries = [q.strip() for q in re.findall(pattern, text, re.DOTALL)]
    return [q for q in queries if q][: config.max_queries_per_turn]


_DEFAULT = ProtocolConfig()


# --------------------------------------------------------------------------- presets
# The prompt texts below are the papers' own (their models were trained on them, so a
# preset is only useful when it is word for word); the invalid-action messages of the
# presets whose reference has none are ours, in the preset's tags.

R1_SEARCHER_TEMPLATE = (
    "The User asks a question, and the Assistant solves it.\n"
    "The Assistant first thinks about the reasoning process in the mind and then provides "
    "the User with the final answer.\n"
    "The output format of reasoning process and final answer are enclosed within <think> "
    '</think> and <answer> </answer> tags, respectively, i.e., "<think> reasoning process '
    'here </think>\n\n<answer> final answer here </answer>".\n'
    "During the thinking process, **the Assistant can perform searching** for uncertain "
    'knowledge if necessary with the format of "<|begin_of_query|> search query (only list '
    'keywords, such as **"keyword_1 keyword_2 ..."**)<|end_of_query|>". **A query must '
    "involve only a single triple**.\n"
    "Then, the search system will provide the Assistant with the retrieval information with "
    'the format of "<|begin_of_documents|> ...search results... <|end_of_documents|>".\n\n'
    "User:{question}\nAssistant: <think>"
)

RESEARCH_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the "
    "assistant solves it. The assistant first thinks about the reasoning process in the "
    "mind and then provides the user with the answer. During thinking, the assistant can "
    "invoke the wikipedia search tool to search for fact information about specific topics "
    "if needed. The reasoning process and answer are enclosed within <think> </think> and "
    "<answer> </answer> tags respectively, and the search query and result are enclosed "
    "within <search> </search> and <result> </result> tags respectively. For example, "
    "<think> This is the reasoning process. </think> <search> search query here </search> "
    "<result> search result here </result> <think> This is the reasoning process. </think> "
    "<answer> The final answer is \\[ \\boxed{{answer here}} \\] </answer>. In the last part "
    "of the answer, the final exact answer is enclosed within \\boxed{{}} with latex format. "
    "User: {question}. Assistant:"
)

AUTOREFINE_TEMPLATE = (
    "You are a helpful assistant excel at answering questions with multi-turn search engine "
    "calling. To answer questions, you must first reason through the available information "
    "using <think> and </think>. If you identify missing knowledge, you may issue a search "
    "request using <search> query </search> at any time. The retrieval system will provide "
    "you with the three most relevant documents enclosed in <documents> and </documents>. "
    "After each search, you need to summarize and refine the existing documents in <refine> "
    "and </refine>. You may send multiple search requests if needed. Once you have "
    "sufficient information, provide a concise final answer using <answer> and </answer>. "
    "For example, <answer> Donald Trump </answer>. Question: {question}\n"
)


def _invalid(search: tuple[str, str]) -> str:
    return (
        "\nMy previous action is invalid. If I want to search, I should put the query "
        f"between {search[0]} and {search[1]}. If I want to give the final answer, I should "
        "put the answer between <answer> and </answer>. Let me try again.\n"
    )


PRESETS: dict[str, ProtocolConfig] = {
    # Search-R1 (Jin et al., arXiv 2503.09516), PeterGriffinJin/Search-R1: the default.
    "search-r1": ProtocolConfig(),
    # R1-Searcher (Song et al., arXiv 2503.05592), RUCAIBox/R1-Searcher: prompt from
    # OpenRLHF-RAG/openrlhf/datasets/prompts_dataset.py (the base-model prompt), the
    # documents block from openrlhf/trainer/ppo_utils/experience_maker.py (top-3,
    # "(i)" numbering). Its rollout ends an episode on a malformed query; here it gets
    # the invalid-action message instead, like every preset.
    "r1-searcher": ProtocolConfig(
        name="r1-searcher",
        template=R1_SEARCHER_TEMPLATE,
        use_chat_template=False,
        search_tags=("<|begin_of_query|>", "<|end_of_query|>"),
        information_tags=("<|begin_of_documents|>", "<|end_of_documents|>"),
        information_format="\n\n<|begin_of_documents|>\n{docs}<|end_of_documents|>\n\n",
        doc_format="({i}){title} {text}\n",
        invalid_message=_invalid(("<|begin_of_query|>", "<|end_of_query|>")),
    ),
    # ReSearch (Chen et al., arXiv 2503.19470), Agent-RL/ReSearch at the ReSearch release
    # (commit 3b2fd14, before the repo became ReCall): prompt re_search_template from
    # src/verl/utils/dataset/template.py, result block and top-5 from
    # src/verl/workers/rollout/vllm_rollout/vllm_rollout.py (documents are the corpus
    # contents, a blank line apart; the reference strips the last one), answer in \boxed.
    "research": ProtocolConfig(
        name="research",
        template=RESEARCH_TEMPLATE,
        use_chat_template=False,
        topk=5,
        information_tags=("<result>", "</result>"),
        information_format=" <result>\n{docs}</result>",
        doc_format="{title}\n{text}\n\n",
        boxed_answer=True,
    ),
    # AutoRefine (Shi et al., arXiv 2505.11277), syr-cn/AutoRefine: prompt 'autorefine'
    # from preprocess/data_process/utils.py, documents block and invalid message from
    # search_r1/llm_agent/generation.py, max_turns=5 from cmd/train.sh. The agent writes
    # <refine>...</refine> after each documents block, in the same turn as its next
    # search or answer (a refine ends no turn).
    "autorefine": ProtocolConfig(
        name="autorefine",
        template=AUTOREFINE_TEMPLATE,
        information_tags=("<documents>", "</documents>"),
        information_format="\n\n<documents>{docs}</documents>\n\n",
        refine_tags=("<refine>", "</refine>"),
        max_turns=5,
    ),
}
"""Named protocol presets, each a paper's tags, prompt and documents format."""


def protocol_preset(name: str, **overrides: Any) -> ProtocolConfig:
    """The preset ``name`` (a key of :data:`PRESETS`) with any field overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown protocol preset {name!r}; choose one of {sorted(PRESETS)}")
    preset = PRESETS[name]
    return dataclasses.replace(preset, **overrides) if overrides else preset
