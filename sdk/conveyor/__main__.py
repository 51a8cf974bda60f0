"""``python -m conveyor``: the CLI, for when the ``conveyor`` script is not on PATH."""

import sys

from conveyor.cli import main

if __name__ == "__main__":
    sys.exit(main())
