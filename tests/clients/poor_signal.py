"""A device on a poor signal, at the moments a wipe order finds it busy (docs/PROTOCOL.md §15
"Wipe"): the SDK's own methods, each made late by a fixed number of seconds; nothing else of the
client is replaced. Used in the test's process (the desktop) and, through :data:`SCRIPT`, in a
``lightbox`` process of its own. Imports only the client: a ``lightbox`` process loads no more
than it would."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from clients.sdk.client import LightboxClient
from clients.sdk.connection import Connection
from protocol.frames import Frame, WipeConfirm

# ``python -c SCRIPT CONFIRM_AFTER NAMES_AFTER NAMES_SLOW ARGV...``: ``lightbox ARGV`` whose
# confirmation of a wipe goes CONFIRM_AFTER seconds late and, once the file NAMES_SLOW exists,
# each look-up of people's names in the relay's key directory (watch makes one before it shows
# a consult) NAMES_AFTER seconds late.
SCRIPT = """
import pathlib, sys
from clients.clinician import cli
from clients.sdk.client import LightboxClient
from clients.sdk.connection import Connection
from tests.clients.poor_signal import confirming_late, naming_late

Connection.send_frame = confirming_late(float(sys.argv[1]))
LightboxClient.ensure_names = naming_late(float(sys.argv[2]), pathlib.Path(sys.argv[3]))
sys.exit(cli.main(sys.argv[4:]))
"""


def confirming_late(after: float) -> Callable[[Connection, Frame], Awaitable[None]]:
    """``Connection.send_frame``, with a wipe's confirmation sent ``after`` seconds late."""
    send_frame = Connection.send_frame

    async def slowly(self: Connection, frame: Frame) -> None:
        if isinstance(frame, WipeConfirm):
            await asyncio.sleep(after)
        await send_frame(self, frame)
    return slowly


def naming_late(after: float, once: Path
                ) -> Callable[[LightboxClient, Iterable[str]], Awaitable[None]]:
    """``LightboxClient.ensure_names``, ``after`` seconds late once the file ``once`` exists."""
    ensure_names = LightboxClient.ensure_names

    async def slowly(self: LightboxClient, user_ids: Iterable[str]) -> None:
        if once.exists():
            await asyncio.sleep(after)
        await ensure_names(self, user_ids)
    return slowly
