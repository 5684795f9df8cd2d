"""Per-step metrics of a run: ``metrics.jsonl`` (one record a line) and ``metrics.csv``.

The figures drawn from them live in :mod:`agents.plots` (``plot_curves`` is re-exported
here for older imports)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from agents.plots import plot_curves  # noqa: F401  (re-export)

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
