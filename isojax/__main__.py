"""``python -m isojax``: the same as the ``isojax`` command."""

import sys

from isojax.cli import main

if __name__ == "__main__":
    sys.exit(main())
