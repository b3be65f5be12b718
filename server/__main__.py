"""``python -m server`` and the ``lightbox-server`` console script: its arguments, then either a
relay-host command (server/manage.py) or the relay itself (server/runner.py).

The relay's modules (uvicorn, the application, SCIM's models) are imported only to start the
relay: IT's commands (``admin``, ``org``, ``audit``, ``scim``, ``db``) start without them, in
about a quarter of the CPU (docs/ARCHITECTURE.md, "Start-up").
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from server import manage

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightbox-server",
        description="Start the Lightbox relay (no command), or run a relay-host command.")
    parser.add_argument("--host", help="listen address (default: HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default: PORT or 8000)")
    parser.add_argument("--workers", type=int, help="relay processes (default: WORKERS or 1)")
    parser.add_argument("--migrate", action="store_true",
                        help="apply database migrations before starting")
    manage.add_commands(parser.add_subparsers(dest="group", metavar="COMMAND"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.group is not None:
        if args.host or args.port is not None or args.workers is not None or args.migrate:
            parser.error("--host, --port, --workers and --migrate start the relay; "
                         f"give them without the {args.group!r} command")
        return manage.run(args)
    from server.runner import serve_main

    return serve_main(args)


if __name__ == "__main__":
    sys.exit(main())
