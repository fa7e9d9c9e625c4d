"""``python -m pyrodiff`` (and ``torchrun -m pyrodiff``) run the ``pyrodiff`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
