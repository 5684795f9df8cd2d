"""Logging set-up of the command-line entry points (library modules only log)."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

FORMAT = "%(levelname)s %(name)s: %(message)s"
TIMED_FORMAT = "%(asctime)s " + FORMAT
"""For long-running servers, whose lines are read against the clock."""
_HANDLER_NAME = "search_env.logs"


class _StderrHandler(logging.StreamHandler):
    """A stream handler that writes to ``sys.stderr`` as it is now, not as it was when
    the handler was made (test harnesses swap it; a stale one may be closed)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._fixed = stream
        super().__init__(stream)

    @property
    def stream(self) -> TextIO:
        return sys.stderr if self._fixed is None else self._fixed

    @stream.setter
    def stream(self, value: TextIO | None) -> None:
        if value is not sys.stderr:
            self._fixed = value


def configure_logging(
    level: int = logging.WARNING, stream: TextIO | None = None, fmt: str = FORMAT
) -> logging.Handler:
    """Send log records of ``level`` and above to ``stream`` (default: stderr) in format
    ``fmt``; returns the handler.

    The level is set on the handler as well as on the root logger: a library that sets
    its own logger to DEBUG (bm25s does so when imported) would otherwise still print its
    DEBUG lines. Calling it again replaces the handler an earlier call installed.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.name == _HANDLER_NAME]:
        root.removeHandler(old)
    handler = _StderrHandler(stream)
    handler.name = _HANDLER_NAME
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(fmt))
    root.addHandler(handler)
    root.setLevel(level)
    return handler
