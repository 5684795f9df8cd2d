"""The errors of `search-env download`."""

from __future__ import annotations

from search_env.data.qa import DatasetUnavailableError

__all__ = ["ChecksumMismatchError", "DownloadError", "DownloadUnavailableError"]


class DownloadError(RuntimeError):
    """A download failed for a reason other than missing internet (see the message)."""


class ChecksumMismatchError(DownloadError):
    """A downloaded file does not match the sha256 the hub publishes for it."""


class DownloadUnavailableError(DatasetUnavailableError):
    """The hub cannot be reached (offline mode or no connection).

    The message says what to fetch on a machine with internet, with which command, where
    to put it, and how to point search-env at it afterwards.
    """
