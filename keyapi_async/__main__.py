"""``python -m keyapi_async``: the same as the ``keyapi-stories`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
