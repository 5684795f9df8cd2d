"""Answer scoring and episode rewards.

Answer metrics: exact match, token F1, cover-EM, substring EM. ``normalize`` follows the
SQuAD / Search-R1 rule: lower-case, drop punctuation, drop the articles a/an/the as
whole words, collapse whitespace. ``make_reward`` builds the answer-only reward the env
pays by default (Search-R1's EM). The episode-level components (format, retrieval,
refine, invalid turns) and the typed :class:`RewardConfig` over them are in
:mod:`search_env.reward_config`.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """Normalise an answer for comparison."""
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str | None, golds: Iterable[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer."""
    if prediction is None:
        return 0.0
    pred = normalize(prediction)
    return float(any(pred == normalize(g) for g in golds))


def cover_exact_match(prediction: str | None, golds: Iterable[str]) -> float:
    """1.0 if any normalised gold answer is a substring of the normalised prediction."""
    if prediction is None:
        return 0.0
    pred = normalize(prediction)
    return float(any(normalize(g) and normalize(g) in pred for g in golds))


def f1(prediction: str | None, golds: Iterable[str]) -> float:
    """Best token-overlap F1 of the prediction against any gold answer."""
    if prediction is None:
        return 0.0
    pred_tokens = normalize(prediction).split()
    best = 0.0
    for gold in golds:
        gold_tokens = normalize(gold).split()
        common = Counter(pred_tokens) & Counter(gold_tokens)
        overlap = sum(common.values())
        if overlap == 0:
            continue
        precision = overlap / len(pred_tokens)
        recall = overlap / len(gold_tokens)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def substring_exact_match(prediction: str | None, golds: Iterable[str]) -> float:
    """1.0 if the normalised prediction and a normalised gold answer contain one another.

    Looser than cover-EM (gold inside the prediction, FlashRAG's ``sub_em``): a short
    prediction inside a longer gold ("Obama" for "Barack Obama") counts too. Empty
    strings never match.
    """
    if prediction is None:
        return 0.0
    pred = normalize(prediction)
    if not pred:
        return 0.0
    return float(any((g := normalize(gold)) and (g in pred or pred in g) for gold in golds))


METRICS: dict[str, Callable[[str | None, Iterable[str]], float]] = {
    "em": exact_match,
    "f1": f1,
    "cover_em": cover_exact_match,
}
"""The metrics of ``info["scores"]``."""

ANSWER_METRICS: dict[str, Callable[[str | None, Iterable[str]], float]] = {
    **METRICS,
    "substring_em": substring_exact_match,
}
"""Every answer metric a reward can use (``METRICS`` plus ``substring_em``)."""


class RewardFn(Protocol):
    """A reward: the parsed answer (None when the agent gave none) and the gold list."""

    def __call__(self, answer: str | None, golds: Sequence[str]) -> float: ...


def score_all(answer: str | None, golds: Sequence[str]) -> dict[str, float]:
    """Every metric in ``METRICS`` for one answer."""
    return {name: fn(answer, golds) for name, fn in METRICS.items()}


def make_reward(metric: str = "em", format_score: float = 0.0) -> RewardFn:
    """Build the episode reward.

    Args:
        metric: one of ``em`` (default, as in Search-R1), ``f1``, ``cover_em``,
            ``substring_em``.
        format_score: the least reward for an answer the agent gave (Search-R1's
            ``format_score``; 0 disables it). A given answer earns
            ``max(metric, format_score)``: with ``em`` and ``cover_em`` (0 or 1) that is
            Search-R1's rule, and with ``f1`` a partly right answer never earns less than
            a wrong one.
    """
    if metric not in ANSWER_METRICS:
        raise ValueError(
            f"unknown reward metric {metric!r}; choose one of {sorted(ANSWER_METRICS)}"
        )
    if not 0.0 <= format_score <= 1.0:
        raise ValueError(f"format_score must be in [0, 1], got {format_score}")
    fn = ANSWER_METRICS[metric]

    def reward(answer: str | None, golds: Sequence[str]) -> float:
        if answer is None:
            return 0.0
        # max, not "value or format_score": an f1 of 0.2 must not fall below a wrong
        # answer's format_score of 0.5.
        return max(fn(answer, golds), format_score)

    return reward
