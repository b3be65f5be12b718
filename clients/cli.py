"""``lightbox``: the clinician's command-line client (the phone stand-in).

Subcommands arrive with the SDK (enrol, login, send, inbox...); today it reports its version and
the protocol versions it speaks.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from protocol.model import SUPPORTED_VERSIONS

__all__ = ["main"]

VERSION = "0.1.0"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lightbox", description="Lightbox clinician client.")
    protocols = ", ".join(map(str, SUPPORTED_VERSIONS))
    p.add_argument("--version", action="version",
                   version=f"lightbox {VERSION} (protocol {protocols})")
    p.parse_args(argv)
    p.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
