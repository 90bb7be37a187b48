"""Entry point for ``python -m snows_core``."""

import sys

from snows_core.cli import main

if __name__ == "__main__":
    sys.exit(main())
