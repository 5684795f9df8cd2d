"""Progress-bar settings shared by the training loops."""

from __future__ import annotations

import sys


def progress_interval() -> float:
    """Seconds between a progress bar's redraws: tqdm's 0.1 on a terminal, 30 otherwise.

    Redirected to a file, every redraw is a line: a 7-minute SFT at 0.1 s wrote ~140 KB of
    stderr (issue 11, item 5). Thirty seconds still shows that a long run is alive.
    """
    stream = sys.stderr
    return 0.1 if hasattr(stream, "isatty") and stream.isatty() else 30.0
