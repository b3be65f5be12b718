"""``python -m server`` and the ``lightbox-server`` console script."""

from __future__ import annotations

import sys

from server.runner import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
