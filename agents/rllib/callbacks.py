"""Per-episode search metrics from the env's final ``info`` (answered, EM, searches)."""

from __future__ import annotations

from typing import Any

from ray.rllib.callbacks.callbacks import RLlibCallback

WINDOW = 100
"""Episodes each metric is averaged over (RLlib's window for episode returns too)."""


class SearchEpisodeMetrics(RLlibCallback):
    """Logs ``answered``, ``em`` and ``searches`` of every finished episode.

    They appear in each training result under ``env_runners/``, averaged over the last
    :data:`WINDOW` episodes, next to RLlib's ``episode_return_mean``.
    """

    def on_episode_end(self, *, episode: Any, metrics_logger: Any = None, **kwargs: Any) -> None:
        if metrics_logger is None:
            return
        info = episode.get_infos(-1) or {}
        scores = info.get("scores") or {}
        metrics_logger.log_value("answered", float(info.get("answer") is not None), window=WINDOW)
        metrics_logger.log_value("em", float(scores.get("em", 0.0)), window=WINDOW)
        metrics_logger.log_value("searches", float(info.get("searches", 0)), window=WINDOW)
