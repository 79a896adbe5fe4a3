"""``python -m jaxdescent``: the ``jaxdescent`` command (see :mod:`jaxdescent.cli`)."""

import sys

from jaxdescent.cli import main

if __name__ == "__main__":
    sys.exit(main())
