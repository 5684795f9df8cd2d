"""Answer scoring: exact match, token F1, cover-EM and a format reward.

``normalize`` follows the SQuAD / Search-R1 rule: lower-case, drop punctuation, drop the
articles a/an/the as whole words, collapse whitespace.
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


METRICS: dict[str, Callable[[str | None, Iterable[str]], float]] = {
    "em": exact_match,
    "f1": f1,
    "cover_em": cover_exact_match,
}


class RewardFn(Protocol):
    """A reward: the parsed answer (None when the agent gave none) and the gold list."""

    def __call__(self, answer: str | None, golds: Sequence[str]) -> float: ...


def score_all(answer: str | None, golds: Sequence[str]) -> dict[str, float]:
    """Every metric in ``METRICS`` for one answer."""
    return {name: fn(answer, golds) for name, fn in METRICS.items()}


def make_reward(metric: str = "em", format_score: float = 0.0) -> RewardFn:
    """Build the episode reward.

    Args:
        metric: one of ``em`` (default, as in Search-R1), ``f1``, ``cover_em``.
        format_score: the least reward for an answer the agent gave (Search-R1's
            ``format_score``; 0 disables it). A given answer earns
            ``max(metric, format_score)``: with ``em`` and ``cover_em`` (0 or 1) that is
            Search-R1's rule, and with ``f1`` a partly right answer never earns less than
            a wrong one.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown reward metric {metric!r}; choose one of {sorted(METRICS)}")
    if not 0.0 <= format_score <= 1.0:
        raise ValueError(f"format_score must be in [0, 1], got {format_score}")
    fn = METRICS[metric]

    def reward(answer: str | None, golds: Sequence[str]) -> float:
        if answer is None:
            return 0.0
        # max, not "value or format_score": an f1 of 0.2 must not fall below a wrong
        # answer's format_score of 0.5.
        return max(fn(answer, golds), format_score)

    return reward
