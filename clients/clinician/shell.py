"""What every ``lightbox`` command shares: unlocking the profile (the password from
``LIGHTBOX_PASSWORD`` or a prompt), running the SDK client for one command, plain failures
instead of tracebacks, and the time and consent shown beside a message.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from clients.clinician.device import password_prompt
from clients.sdk import imaging
from clients.sdk.client import LightboxClient
from clients.sdk.errors import KeyStoreError
from clients.sdk.events import ClientEvent, OutboxEvent, StatusEvent
from clients.sdk.keystore import KeyStore
from clients.sdk.profile import ProfileDevice, open_profile
from clients.sdk.prompts import read_secret
from clients.sdk.timefmt import format_time
from protocol.body import Body
from protocol.consent import (
    peek_consent_token_unverified,
)
from protocol.errors import ProtocolError

__all__ = [
    "MAX_IMAGE_FILE",
    "T",
    "command_client",
    "consent_of",
    "guarded",
    "print_problems",
    "problem_line",
    "profile_dir",
    "rejection",
    "unlock_profile",
    "when",
]


T = TypeVar("T")


MAX_IMAGE_FILE = 40 * 1024 * 1024  # imaging.DEFAULT_LIMITS.max_bytes


def profile_dir(args: argparse.Namespace) -> Path:
    return KeyStore.for_profile(args.profile).directory


def unlock_profile(args: argparse.Namespace) -> ProfileDevice:
    directory = profile_dir(args)
    if not (directory / "keystore.lbx").exists() and not (directory / "vault.db").exists():
        raise KeyStoreError(f"profile {args.profile!r} has no device: run `lightbox enroll` "
                            "or `lightbox link` first")
    return open_profile(directory, read_secret("LIGHTBOX_PASSWORD", password_prompt(args.profile)))


def command_client(device: ProfileDevice) -> LightboxClient:
    """The SDK client of a command that connects for a moment while the user waits (``send``,
    ``inbox``, ``threads``...). The relay keeps one connection per device: this one takes it
    from a ``lightbox watch`` or desktop of the same profile, which makes way for it, and takes
    it back at once if one of those comes back before the command is done (``replaced_wait=0``,
    clients/sdk/connection.py), so the command is never held up by them."""
    return device.client(replaced_wait=0.0)


def problem_line(event: StatusEvent) -> str:
    """A problem the client reports (a message it dropped, a refused notice), as every command
    prints it. A dropped message names its consult by the start of its id, as ``threads`` and
    the consult's other lines do: several dropped from one sender read alike otherwise."""
    line = f"-- {event.state}: {event.detail}"
    if event.dropped is not None:
        line += f" - consult {event.dropped.message.header.thread_id[:8]}"
    return line


def print_problems(events: asyncio.Queue[ClientEvent], *,
                   outbox: Callable[[OutboxEvent], None] | None = None) -> None:
    """Print the problems the client reported while a command ran (``events`` subscribed
    before it started): a consult it dropped as it synced is never lost in silence, whichever
    command connected (docs/HAZARD_LOG.md HAZ-10). ``outbox``, when given, says the outbox's
    news among them, in the order heard; other events are left out."""
    while not events.empty():
        event = events.get_nowait()
        if isinstance(event, StatusEvent) and event.state == "error":
            print(problem_line(event), flush=True)
        elif outbox is not None and isinstance(event, OutboxEvent):
            outbox(event)


def when(ts: float) -> str:
    return format_time(ts)


def consent_of(body: Body) -> str | None:
    """The id of the consent a message was sent under, if it carries a readable one."""
    if not body.consent_token:
        return None
    try:
        return peek_consent_token_unverified(body.consent_token).jti
    except ProtocolError:
        return None


def rejection(exc: imaging.ImageRejected, outcome: str = "Nothing was sent.") -> str:
    """Why an image cannot be sent, as the rest of a sentence after a colon: the SDK's reason
    (clients/sdk/imaging.py, a sentence of its own for other clients) starting lower-case,
    then ``outcome``. A reason that ends with ``outcome`` was written for this place
    (clients/clinician/sending.py ``read_image``, which starts with the file's name) and is
    kept as it is."""
    if exc.reason.endswith(outcome):
        return exc.reason
    return f"{exc.reason[:1].lower()}{exc.reason[1:]} {outcome}"


def guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Say what is wrong with a rejected image; every other failure becomes one sentence in
    cli.main (clients/sdk/failures.py), which also knows a profile its organisation wiped."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except imaging.ImageRejected as exc:
            print(f"error: the image cannot be sent: {rejection(exc)}", file=sys.stderr)
        return 1

    return run
