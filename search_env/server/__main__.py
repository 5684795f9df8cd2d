"""``python -m search_env.server --index DIR``: serve an index (same as ``search-env serve``)."""

from __future__ import annotations

import argparse
import logging
import sys

from search_env.logs import TIMED_FORMAT, configure_logging
from search_env.server.launch import add_serve_arguments, run_serve


def main(argv: list[str] | None = None) -> int:
    """Parses the serve arguments and serves until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m search_env.server", description=__doc__)
    args = add_serve_arguments(parser).parse_args(argv)
    configure_logging(getattr(logging, args.log_level.upper()), fmt=TIMED_FORMAT)
    return run_serve(args)


if __name__ == "__main__":
    sys.exit(main())
