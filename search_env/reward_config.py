"""Episode reward components and the typed reward config over them.

At the end of an episode the env builds an :class:`EpisodeOutcome` (the answer, the
golds, the text after the prompt, the retrieved documents, the invalid turns) with
every component of :func:`reward_components` in it, reports the components in
``info["reward_components"]`` and pays the reward of its config or ``reward_fn``.

Components (all floats):

* ``em``, ``f1``, ``cover_em``, ``substring_em``: the answer metrics of
  :mod:`search_env.rewards` (0 without an answer).
* ``format_valid``: Search-R1 v0.3's structure check (``is_valid_sequence`` in
  PeterGriffinJin/Search-R1, ``verl/utils/reward_score/qa_em_format.py``): the text
  after the prompt is think, then (search, information, think) any number of times,
  then answer, with only whitespace between tags and every tag balanced, written in the
  protocol's tags. With ``refine_tags`` (AutoRefine) a refine block may follow each
  information block.
* ``autorefine_format``: AutoRefine's ``validate_format`` (syr-cn/AutoRefine,
  ``verl/utils/reward_score/qa_em.py``): each of the think, search, answer (and refine,
  when the protocol has it) tags appears, opening and closing equally often.
* ``retrieval_hit``: a normalised gold answer is a substring of a normalised
  information block (Search-R1 v0.3's ``is_retrieval_correct``).
* ``answer_in_documents``: AutoRefine's ``compute_information_score_subem``: cover-EM
  of the gold answers over all retrieved documents, 0.5 for yes/no questions, 0 when
  nothing was retrieved.
* ``refine_hit``: AutoRefine's ``compute_refine_score_subem``: cover-EM of the gold
  answers over the agent's refine blocks.
* ``invalid_turns``, ``searches``, ``answered``: counts and a 0/1 flag.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from search_env.protocol import ProtocolConfig
from search_env.rewards import ANSWER_METRICS, RewardFn, cover_exact_match, make_reward, normalize

COMPONENTS: tuple[str, ...] = (
    "em",
    "f1",
    "cover_em",
    "substring_em",
    "format_valid",
    "autorefine_format",
    "retrieval_hit",
    "answer_in_documents",
    "refine_hit",
    "invalid_turns",
    "searches",
    "answered",
)
"""The keys of ``info["reward_components"]``."""

RewardKind = Literal[
    "em", "f1", "cover_em", "substring_em", "search_r1_format", "autorefine", "weighted"
]


class RewardError(RuntimeError):
    """The reward function raised or returned a non-finite value; the step is undone."""


@dataclass(frozen=True)
class EpisodeOutcome:
    """What a reward function sees at the end of an episode."""

    answer: str | None
    """The agent's parsed answer; None when it gave none."""
    golden_answers: tuple[str, ...]
    response: str
    """The context after the prompt, agent and environment text, as decoded."""
    documents: tuple[str, ...]
    """The documents text of each information block, in order."""
    invalid_turns: int
    searches: int
    terminated: bool
    protocol: ProtocolConfig
    components: Mapping[str, float] = field(default_factory=dict)
    """Every entry of :data:`COMPONENTS` (filled by the env)."""


class EpisodeRewardFn(Protocol):
    """A reward over a whole episode: replace it with ``SearchQAEnv(reward_fn=...)``."""

    def __call__(self, outcome: EpisodeOutcome) -> float: ...


# ------------------------------------------------------------------ components
def _blocks(text: str, tags: tuple[str, str]) -> list[str]:
    pattern = re.escape(tags[0]) + "(.*?)" + re.escape(tags[1])
    return [m.strip() for m in re.findall(pattern, text, re.DOTALL)]


def search_r1_format_valid(response: str, protocol: ProtocolConfig) -> bool:
    """Search-R1 v0.3's ``is_valid_sequence`` over ``response`` (the text after the prompt).

    Written afresh as a transition table over the protocol's tags; see the module doc.
    """
    think, search, info, answer = (
        protocol.think_tags,
        protocol.search_tags,
        protocol.information_tags,
        protocol.answer_tags,
    )
    # (state, tag) -> next state; content is allowed only in the states inside a tag.
    moves = {
        ("start", think[0]): "in_think",
        ("information", think[0]): "in_think",
        ("in_think", think[1]): "after_think",
        ("after_think", search[0]): "in_search",
        ("in_search", search[1]): "after_search",
        ("after_search", info[0]): "in_information",
        ("in_information", info[1]): "information",
        ("after_think", answer[0]): "in_answer",
        ("in_answer", answer[1]): "end",
    }
    pairs = [think, search, info, answer]
    if protocol.refine_tags is not None:
        refine = protocol.refine_tags
        moves[("information", refine[0])] = "in_refine"
        moves[("in_refine", refine[1])] = "information"
        pairs.append(refine)
    for open_, close in pairs:  # balanced, as the reference checks first
        if response.count(open_) != response.count(close):
            return False
    tags = [tag for pair in pairs for tag in pair]
    inside = {"in_think", "in_search", "in_information", "in_answer", "in_refine"}
    splitter = re.compile(
        "(" + "|".join(re.escape(t) for t in sorted(tags, key=len, reverse=True)) + ")"
    )
    state = "start"
    for part in splitter.split(response):
        if part in tags:
            nxt = moves.get((state, part))
            if nxt is None:
                return False
            state = nxt
        elif part.strip() and state not in inside:
            return False
    return state == "end"


def autorefine_format_valid(response: str, protocol: ProtocolConfig) -> bool:
    """AutoRefine's ``validate_format``: every tag pair present and balanced."""
    pairs = [protocol.think_tags, protocol.search_tags, protocol.answer_tags]
    if protocol.refine_tags is not None:
        pairs.append(protocol.refine_tags)
    if not response:
        return False
    for open_, close in pairs:
        count = response.count(open_)
        if count == 0 or count != response.count(close):
            return False
    return True


def reward_components(outcome: EpisodeOutcome) -> dict[str, float]:
    """Every component of :data:`COMPONENTS` for one episode (see the module doc)."""
    answer, golds, protocol = outcome.answer, outcome.golden_answers, outcome.protocol
    comps = {name: float(fn(answer, golds)) for name, fn in ANSWER_METRICS.items()}
    comps["format_valid"] = float(search_r1_format_valid(outcome.response, protocol))
    comps["autorefine_format"] = float(autorefine_format_valid(outcome.response, protocol))
    normed_golds = [g for g in (normalize(x) for x in golds) if g]
    comps["retrieval_hit"] = float(
        any(g in normalize(doc) for doc in outcome.documents for g in normed_golds)
    )
    if not outcome.documents:
        comps["answer_in_documents"] = 0.0
    elif "yes" in golds or "no" in golds:  # AutoRefine's rule for yes/no questions
        comps["answer_in_documents"] = 0.5
    else:
        comps["answer_in_documents"] = cover_exact_match(" ".join(outcome.documents), golds)
    refines = _blocks(outcome.response, protocol.refine_tags) if protocol.refine_tags else []
    comps["refine_hit"] = cover_exact_match(" ".join(refines), golds) if refines else 0.0
    comps["invalid_turns"] = float(outcome.invalid_turns)
    comps["searches"] = float(outcome.searches)
    comps["answered"] = float(answer is not None)
    return comps


# ---------------------------------------------------------------------- config
@dataclass(frozen=True)
class RewardConfig:
    """Which reward the env pays, over the components of :func:`reward_components`.

    ``SearchQAEnv(reward=RewardConfig(...))`` (or ``reward="search_r1_format"``).
    Every kind subtracts ``invalid_penalty`` per invalid turn.
    """

    kind: RewardKind = "em"
    """``em`` / ``f1`` / ``cover_em`` / ``substring_em``: that answer metric, at least
    ``format_score`` for a given answer (:func:`~search_env.rewards.make_reward`, the
    default EM is Search-R1's). ``search_r1_format``: Search-R1 v0.3's
    ``compute_score_em`` (qa_em_format.py): a right answer 1 (``1 -
    structure_format_score`` with a bad format); else a good format earns
    ``structure_format_score`` (+ ``retrieval_score`` when ``retrieval_hit``) and a bad
    one ``final_format_score`` if it answered. ``autorefine``: AutoRefine's
    ``compute_reward`` (qa_em.py): 0 without an answer, the ``autorefine_metric`` of a
    right one, else ``format_score * autorefine_format + refine_score * refine_hit``.
    ``weighted``: ``sum(weights[c] * component c)``."""
    format_score: float = 0.0
    structure_format_score: float = 0.2
    """Search-R1 v0.3 scripts (scripts/nq_hotpotqa/v0.3/train_ppo_format.sh): 0.2."""
    final_format_score: float = 0.1
    """Same scripts: 0.1."""
    retrieval_score: float = 0.0
    """Same scripts: 0 (the code supports it)."""
    refine_score: float = 0.1
    """AutoRefine's cmd/train.sh: 0.1."""
    autorefine_metric: str = "f1"
    """AutoRefine's cmd/train.sh trains with reward_style F1."""
    weights: Mapping[str, float] = field(default_factory=dict)
    """``kind="weighted"``: component name -> weight."""
    invalid_penalty: float = 0.0
    """Subtracted once per invalid turn (0: off, as in Search-R1)."""

    def __post_init__(self) -> None:
        kinds = RewardKind.__args__  # type: ignore[attr-defined]
        if self.kind not in kinds:
            raise ValueError(f"unknown reward kind {self.kind!r}; choose one of {list(kinds)}")
        for name in (
            "format_score",
            "structure_format_score",
            "final_format_score",
            "retrieval_score",
            "refine_score",
            "invalid_penalty",
        ):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            ):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.autorefine_metric not in ANSWER_METRICS:
            raise ValueError(
                f"autorefine_metric must be one of {sorted(ANSWER_METRICS)}, got {self.autorefine_metric!r}"
            )
        unknown = sorted(set(self.weights) - set(COMPONENTS))
        if unknown:
            raise ValueError(
                f"unknown reward components in weights: {unknown}; known: {list(COMPONENTS)}"
            )
        if self.kind == "weighted" and not self.weights:
            raise ValueError("kind='weighted' needs weights")
        if self.kind in ANSWER_METRICS:
            make_reward(self.kind, self.format_score)  # raises for a bad format_score


def config_reward(config: RewardConfig) -> EpisodeRewardFn:
    """The :class:`EpisodeRewardFn` of ``config``."""
    answer_fn: RewardFn | None = (
        make_reward(config.kind, config.format_score) if config.kind in ANSWER_METRICS else None
    )

    def reward(outcome: EpisodeOutcome) -> float:
        c = outcome.components
        if answer_fn is not None:
            value = answer_fn(outcome.answer, outcome.golden_answers)
        elif config.kind == "search_r1_format":
            value = _search_r1_format(config, c)
        elif config.kind == "autorefine":
            right = c[config.autorefine_metric]
            if not c["answered"]:
                value = 0.0
            elif right > 0:
                value = right
            else:
                value = config.format_score * c["autorefine_format"]
                value += config.refine_score * c["refine_hit"]
        else:
            value = sum(w * c[name] for name, w in config.weights.items())
        return value - config.invalid_penalty * c["invalid_turns"]

    return reward


def _search_r1_format(config: RewardConfig, c: Mapping[str, float]) -> float:
    valid = bool(c["format_valid"])
    good_format = config.structure_format_score + config.retrieval_score * c["retrieval_hit"]
    if c["answered"] and c["em"]:
        return 1.0 if valid else 1.0 - config.structure_format_score
    if valid:
        return good_format
    return config.final_format_score if c["answered"] else 0.0


def resolve_reward(
    reward_metric: str,
    format_score: float,
    reward: RewardConfig | Mapping[str, Any] | str | None,
    reward_fn: EpisodeRewardFn | None,
) -> tuple[RewardFn, EpisodeRewardFn | None, RewardConfig]:
    """The env's rewards from its arguments; raise for a bad or conflicting choice.

    Returns the answer-only reward (``env.reward_fn``, what the env pays when the
    second item is None, the Search-R1 default), the episode reward that replaces it,
    and the resolved config.
    """
    answer_fn = make_reward(reward_metric, format_score)  # the legacy arguments, checked
    if reward is not None and (reward_metric != "em" or format_score != 0.0):
        raise TypeError("pass either reward= or reward_metric=/format_score=, not both")
    if reward_fn is not None and reward is not None:
        raise TypeError("pass either reward= or reward_fn=, not both")
    if reward_fn is not None and not callable(reward_fn):
        raise TypeError(f"reward_fn must be callable (an EpisodeRewardFn), got {reward_fn!r}")
    if isinstance(reward, str):
        reward = RewardConfig(kind=reward)  # type: ignore[arg-type]  # checked there
    elif reward is None:
        reward = RewardConfig(kind=reward_metric, format_score=format_score)  # type: ignore[arg-type]
    elif isinstance(reward, Mapping):  # a RewardConfig as a JSON config stores it
        known = set(RewardConfig.__dataclass_fields__)
        if unknown := sorted(set(reward) - known):
            raise TypeError(
                f"unknown reward config key(s) {unknown}; known: {', '.join(sorted(known))}"
            )
        reward = RewardConfig(**reward)
    elif not isinstance(reward, RewardConfig):
        raise TypeError(
            f"reward must be a RewardConfig, its fields as a dict or a reward kind name, got "
            f"{type(reward).__name__}"
        )
    if reward.kind in ANSWER_METRICS:
        answer_fn = make_reward(reward.kind, reward.format_score)
    episode_fn = reward_fn
    if episode_fn is None and not (reward.kind in ANSWER_METRICS and reward.invalid_penalty == 0):
        episode_fn = config_reward(reward)
    return answer_fn, episode_fn, reward
