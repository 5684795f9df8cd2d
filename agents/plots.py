"""Figures of a run's ``metrics.jsonl`` records (matplotlib, an optional dependency).

:func:`plot_run` draws the figure of a GRPO / PPO run: exact match, searches per episode
and KL to the reference on one shared RL-step axis, with the training batch and the
held-out questions told apart. :func:`plot_curves` is the generic one (any keys against
``step``), used by the RLlib and SB3 back ends.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg back end, or None when not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """``(steps, values)`` of the records that hold both ``step`` and ``key``."""
    points = [
        (float(r["step"]), float(r[key]))
        for r in records
        if key in r and "step" in r and r[key] is not None
    ]
    return [p[0] for p in points], [p[1] for p in points]


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` points (shorter at the start).

    Raises:
        ValueError: ``window`` is below 1.
    """
    if window < 1:
        raise ValueError(f"smoothing window must be >= 1, got {window}")
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_run(
    records: Sequence[dict[str, Any]],
    path: str | Path,
    *,
    name: str,
    train_questions: int | None = None,
    episodes: int | None = None,
    eval_questions: int | None = None,
    window: int = 5,
) -> Any:
    """Save the figure of one RL run; returns the matplotlib Figure (None without matplotlib).

    Three panels over the RL step: exact match (the training batch's, raw and smoothed
    over ``window`` steps, and the held-out evaluation's), searches per episode (both
    again) and the training batch's KL to the frozen reference; one legend under them.
    Step 0 is the evaluation before any update.

    Args:
        records: ``metrics.jsonl`` records (``step``, ``em``/``reward``, ``searches``,
            ``kl``, ``eval_em``, ``eval_searches``).
        path: the PNG to write.
        name: the run's name, e.g. ``"grpo_no_mask (GRPO)"``: the figure's title.
        train_questions: questions in a training batch (for the legend).
        episodes: episodes in a training batch (for the legend).
        eval_questions: held-out questions of an evaluation (for the legend).
        window: smoothing window of the training-batch curves, in steps.
    """
    plt = _pyplot()
    if plt is None:
        logger.info("matplotlib is not installed: skipping the figure %s", path)
        return None
    from matplotlib.ticker import MaxNLocator

    batch = "train batch"
    if train_questions is not None:
        batch += f" ({_plural(train_questions, 'question')}"
        batch += f", {_plural(episodes, 'episode')})" if episodes is not None else ")"
    held_out = "held-out" + (
        f" ({_plural(eval_questions, 'question')})" if eval_questions is not None else ""
    )
    em_key = "em" if any("em" in r for r in records) else "reward"

    fig, axes = plt.subplots(3, 1, figsize=(7, 8.5), sharex=True)
    panels = [
        (axes[0], em_key, "eval_em", "exact match", "Exact match"),
        (axes[1], "searches", "eval_searches", "searches / episode", "Searches per episode"),
        (axes[2], "kl", None, "KL(policy || reference)", "KL to the reference policy"),
    ]
    handles: dict[str, Any] = {}
    for ax, train_key, eval_key, ylabel, title in panels:
        xs, ys = series(records, train_key)
        if xs:
            ax.plot(xs, ys, color="tab:blue", alpha=0.25, linewidth=1)
            handles.setdefault(
                f"{batch}: {window}-step mean (faint: each step)",
                ax.plot(xs, smooth(ys, window), color="tab:blue")[0],
            )
        xs, ys = series(records, eval_key) if eval_key else ([], [])
        if xs:
            handles.setdefault(
                f"{held_out}: greedy", ax.plot(xs, ys, color="tab:orange", marker="o")[0]
            )
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("RL step")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(name)
    # One legend for all panels, under them: the colours mean the same everywhere, and
    # a legend inside a panel hides its curves.
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="lower center", fontsize="small")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return fig


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def plot_curves(
    records: Sequence[dict[str, Any]],
    path: str | Path,
    keys: Sequence[str] = ("reward", "eval_em"),
    title: str = "",
) -> Path | None:
    """Save a line plot of ``keys`` against ``step``; None (and a log line) without matplotlib."""
    plt = _pyplot()
    if plt is None:
        logger.info("matplotlib is not installed: skipping the curve %s", path)
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in keys:
        xs, ys = series(records, key)
        if xs:
            ax.plot(xs, ys, marker="o" if key.startswith("eval") else None, label=key)
    ax.set_xlabel("step")
    ax.set_title(title)
    if ax.has_data():
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
