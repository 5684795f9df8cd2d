"""The ``search-env download`` command: its arguments and its run."""

from __future__ import annotations

import argparse
import sys

from search_env.data.qa import DatasetUnavailableError
from search_env.download.artifacts import DEFAULT_DEST, artifact_table, resolve_names
from search_env.download.core import download
from search_env.download.errors import DownloadError

__all__ = ["add_download_arguments", "run_download"]


def add_download_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``search-env download`` arguments to ``parser``."""
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="artifacts to download (see --list); 'qa' = the seven QA datasets",
    )
    parser.add_argument(
        "--dest", default=DEFAULT_DEST, help="destination directory (default: data)"
    )
    parser.add_argument(
        "--force", action="store_true", help="download and unpack again even if present"
    )
    parser.add_argument("--list", action="store_true", help="list the artifacts and exit")
    parser.add_argument(
        "--keep-downloads", action="store_true", help="keep .gz files and index parts"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_download(args: argparse.Namespace) -> int:
    """Run ``search-env download``; returns the exit code.

    0 on success; 1 when a download failed (offline, checksum, hub error), with the
    reason on stderr; 2 on a usage error (no or unknown names).
    """
    dest = getattr(args, "dest", DEFAULT_DEST)
    if getattr(args, "list", False):
        print(artifact_table(dest))
        return 0
    names = list(getattr(args, "names", None) or ())
    if not names:
        print("error: name at least one artifact, or pass --list\n", file=sys.stderr)
        print(artifact_table(dest), file=sys.stderr)
        return 2
    try:
        artifacts = resolve_names(names)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = 0
    for artifact in artifacts:
        try:
            path = download(
                artifact.name,
                dest,
                force=getattr(args, "force", False),
                progress=not getattr(args, "no_progress", False),
                keep_downloads=getattr(args, "keep_downloads", False),
            )
        except (DownloadError, DatasetUnavailableError, ImportError) as e:
            print(f"error: {e}\n", file=sys.stderr)
            failed += 1
            continue
        print(f"{artifact.name}: {path}")
    return 1 if failed else 0
