"""``lightbox-gateway``: the record gateway that files images into PACS (DICOMweb STOW-RS).

The filing service arrives with the filing issue; today it reports its version.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]

VERSION = "0.1.0"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lightbox-gateway", description="Lightbox record gateway.")
    p.add_argument("--version", action="version", version=f"lightbox-gateway {VERSION}")
    p.parse_args(argv)
    p.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
