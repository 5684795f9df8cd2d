"""Per-step metrics of a run: ``metrics.jsonl`` (one record a line), ``metrics.csv`` and
an optional reward / EM curve as a PNG (when matplotlib is installed)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger(__name__)


class MetricsLogger:
    """Appends one record per step to ``metrics.jsonl`` and rewrites ``metrics.csv``.

    The CSV's columns are the union of all keys seen so far (evaluation steps add
    ``eval_*`` columns), so it is rewritten from the records rather than appended.

    Args:
        run_dir: the run directory.
        resume_step: on resume, records of later steps (written after the checkpoint the
            run resumes from) are dropped, so no step appears twice.
    """

    def __init__(self, run_dir: str | Path, resume_step: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.run_dir / "metrics.jsonl"
        self.csv = self.run_dir / "metrics.csv"
        self.records: list[dict[str, Any]] = []
        if resume_step is not None and self.jsonl.exists():
            for line in self.jsonl.read_text(encoding="utf-8").splitlines():
                record = json.loads(line)
                if record.get("step", 0) <= resume_step:
                    self.records.append(record)
        self._rewrite_jsonl()

    def _rewrite_jsonl(self) -> None:
        with self.jsonl.open("w", encoding="utf-8") as f:
            for record in self.records:
                f.write(json.dumps(record) + "\n")

    def log(self, record: dict[str, Any]) -> None:
        """Add one step's record and update both files."""
        self.records.append(record)
        with self.jsonl.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self._write_csv()

    def _write_csv(self) -> None:
        columns: list[str] = []
        for record in self.records:
            columns += [k for k in record if k not in columns]
        with self.csv.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.records)


def plot_curves(
    records: Sequence[dict[str, Any]],
    path: str | Path,
    keys: Sequence[str] = ("reward", "eval_em"),
    title: str = "",
) -> Path | None:
    """Save a line plot of ``keys`` against ``step``; None (and a log line) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed: skipping the curve %s", path)
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in keys:
        points = [(r["step"], r[key]) for r in records if key in r and "step" in r]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if key.startswith("eval") else None, label=key)
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
