"""``python -m r1lab``: the ``r1lab`` command, also from a source tree that was never installed."""

import sys

from r1lab.cli import main

if __name__ == "__main__":  # not when a test collector imports this module
    sys.exit(main())
