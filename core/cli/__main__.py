"""`python -m core.cli ...`: the same as the `backstop` console script."""

import sys

from core.cli import main

if __name__ == "__main__":  # not when a tool walks the package's modules
    sys.exit(main())
