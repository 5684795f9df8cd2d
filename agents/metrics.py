"""Per-step metrics of a run: ``metrics.jsonl`` (one record a line) and ``metrics.csv``.

The figures drawn from them live in :mod:`agents.plots`."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

from search_env.files import atomic_write_text

logger = logging.getLogger(__name__)


class MetricsLogger:
    """Appends one record per step to ``metrics.jsonl`` and rewrites ``metrics.csv``.

    The CSV's columns are the union of all keys seen so far (evaluation steps add
    ``eval_*`` columns), so it is rewritten from the records rather than appended.
    Rewrites go through a temporary file and a rename, never in place. Nothing is
    written before the first :meth:`log`, so a run that fails to start leaves the old
    files as they were.

    Args:
        run_dir: the run directory.
        resume_step: on resume, records of later steps (written after the checkpoint the
            run resumes from) are dropped, so no step appears twice. A cut last line (a
            kill or a full disk during the append) is dropped too: its step is redone.

    Raises:
        ValueError: on resume, a line other than the last is not a JSON record.
    """

    def __init__(self, run_dir: str | Path, resume_step: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.jsonl = self.run_dir / "metrics.jsonl"
        self.csv = self.run_dir / "metrics.csv"
        self.records: list[dict[str, Any]] = []
        if resume_step is not None and self.jsonl.exists():
            self.records = [r for r in _read_records(self.jsonl) if r.get("step", 0) <= resume_step]
        self._rewritten = False

    def log(self, record: dict[str, Any]) -> None:
        """Add one step's record and update both files."""
        self.records.append(record)
        if self._rewritten:
            with self.jsonl.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        else:  # the first record: replaces what an earlier (or the resumed) run left
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in self.records))
            self._rewritten = True
        self._write_csv()

    def _write_csv(self) -> None:
        columns: list[str] = []
        for record in self.records:
            columns += [k for k in record if k not in columns]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.records)
        atomic_write_text(self.csv, out.getvalue())


def _read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``, without a cut last line."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if number == len(lines):  # a kill or a full disk cut the last append short
                logger.warning("%s: dropping the cut last line %d (%s)", path, number, e)
                break
            raise ValueError(f"{path}:{number} is not a metrics record ({e}): {line[:80]!r}") from e
        records.append(record)
    return records
