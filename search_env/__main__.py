"""python -m search_env"""

import sys

from search_env.cli import main

if __name__ == "__main__":
    sys.exit(main())
