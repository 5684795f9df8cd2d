"""The reward function for verl's tool-calling path (``reward.custom_reward_function``).

With `SearchR1AgentLoop` the env scores each episode itself and this is not needed. With
verl's ``tool_agent`` loop and `SearchTool`, verl decodes the whole response (the model's
turns and the tool's information blocks) and calls ``compute_score``; the answer is read
from the model's last turn only (the text after the last ``</information>``, whose first
``<answer>...</answer>`` counts, as in the env), never from the retrieved passages.
"""

from __future__ import annotations

from typing import Any

from search_env.protocol import parse_turn
from search_env.rewards import make_reward, score_all


def golden_answers(ground_truth: Any) -> tuple[str, ...] | None:
    """Gold answers from a row's ground truth: ``{"target": [...]}``, a list or a string.

    Raises:
        TypeError: For any other shape.
    """
    if ground_truth is None:
        return None
    if isinstance(ground_truth, dict) or hasattr(ground_truth, "keys"):
        ground_truth = ground_truth.get("target", ground_truth.get("golden_answers"))
    if hasattr(ground_truth, "tolist"):  # numpy arrays, as parquet list columns arrive
        ground_truth = ground_truth.tolist()
    if isinstance(ground_truth, str):
        return (ground_truth,)
    if isinstance(ground_truth, (list, tuple)) and all(isinstance(g, str) for g in ground_truth):
        return tuple(ground_truth)
    raise TypeError(
        "ground_truth must be a string, a list of strings or {'target': [...]}, "
        f"got {type(ground_truth).__name__}"
    )


def final_answer(solution_str: str) -> str | None:
    """The answer of the last model turn of a decoded response, or None."""
    tail = solution_str.rsplit("</information>", 1)[-1]
    turn = parse_turn(tail)
    return turn.content if turn.kind == "answer" else None


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Any = None,
    *,
    metric: str = "em",
    format_score: float = 0.0,
    **kwargs: Any,
) -> dict[str, float]:
    """``score`` (EM by default) plus every metric, for one decoded response.

    ``ground_truth`` is a row's ``reward_model.ground_truth``: ``{"target": [...]}``, a
    list or a string. ``metric`` and ``format_score`` come from
    ``reward.custom_reward_function.reward_kwargs`` when set.
    """
    golds = golden_answers(ground_truth)
    if not golds:
        raise ValueError(f"no gold answers in ground_truth={ground_truth!r} ({data_source})")
    answer = final_answer(solution_str)
    scores = score_all(answer, golds)
    return {"score": float(make_reward(metric, format_score)(answer, golds)), **scores}
