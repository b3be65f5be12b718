"""One sentence for every failure a command meets: the last step of ``lightbox``,
``lightbox-admin`` and ``lightbox-gateway``.

:func:`run_command` runs a command and turns each expected failure (relay unreachable or
silent, a device revoked or wiped by the organisation, a session ended, a wrong password, a
missing profile, a refusal from the relay as an RFC 9457 problem document, a bad file) into one
plain sentence on stderr and the program's failure status. Anything else is a bug: its
traceback goes to a private file (:func:`report_crash`) and the user reads one sentence saying
where; a Python traceback never reaches the terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import sys
import tempfile
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from clients.sdk.connection import ConnectionStopped
from clients.sdk.errors import (
    DeviceWiped,
    FlowError,
    LoggedOut,
    RelayRequestError,
    RelayUnavailable,
    SDKError,
    SessionEnded,
)
from clients.sdk.prompts import PromptError
from clients.sdk.session import SESSION_ENDED
from clients.sdk.vault import VaultError
from protocol.errors import CloseCode, ErrorCode, ProtocolError

__all__ = ["CLOSED_PIPE", "describe", "report_crash", "run_async", "run_command"]

T = TypeVar("T")

_REVOKED = ("This device was revoked by your organisation{code}; ask your IT team for a new "
           "enrolment code to use Lightbox on it again.")
# One sentence for a suspended user, whichever way the relay said it: a refused request, or
# the connection it closed (4005) or would not give a token for.
_SUSPENDED = (f"error: your account is suspended by your organisation; ask your IT team "
              f"({ErrorCode.USER_SUSPENDED.value})")


def _relay_refusal(exc: RelayRequestError, login_hint: str) -> str:
    if exc.code == ErrorCode.DEVICE_REVOKED.value:
        return _REVOKED.format(code=f" ({exc.code})")
    if exc.code == ErrorCode.USER_SUSPENDED.value:
        return _SUSPENDED
    if exc.code in SESSION_ENDED:
        return f"error: your session has ended ({exc.code}): {login_hint}"
    return f"error: {exc.said}"  # the HTTP status is for logs, not for the user


def _session_ended(exc: SessionEnded, login_hint: str, sso_hint: str | None) -> str:
    """Sign in again: at the identity provider when the device signs in there (then the
    relay's code would only puzzle: the user has nothing to correct but to sign in)."""
    if exc.sso:
        return f"error: your session has ended: {sso_hint or login_hint}"
    return f"error: your session has ended ({exc.code}): {login_hint}"


def describe(exc: BaseException, *, login_hint: str,
             sso_hint: str | None = None) -> str | None:
    """The sentence for an expected failure, or None for a bug. ``login_hint`` says how to
    log in again; ``sso_hint`` how to sign in again at the identity provider, for a device
    that signs in there (:class:`SessionEnded`)."""
    if isinstance(exc, DeviceWiped):
        return str(exc)
    if isinstance(exc, SessionEnded):
        return _session_ended(exc, login_hint, sso_hint)
    if isinstance(exc, RelayUnavailable):
        if exc.kept:
            return f"error: cannot reach the relay ({exc.reason}), so it is not sent yet: " \
                   f"{exc.kept}"
        return (f"error: cannot reach the relay ({exc.reason}): check the network and the "
                "server address, then try again")
    if isinstance(exc, TimeoutError):
        return "error: the relay did not answer in time: check the network, then try again"
    if isinstance(exc, RelayRequestError):
        return _relay_refusal(exc, login_hint)
    if isinstance(exc, FlowError):
        return f"error: {exc.code}: {exc}"
    if isinstance(exc, ConnectionStopped):
        if isinstance(exc.__cause__, LoggedOut):  # lightbox logout, in another terminal
            return f"error: {exc.__cause__}"
        if isinstance(exc.__cause__, SessionEnded):  # no token to be had: sign in again
            return _session_ended(exc.__cause__, login_hint, sso_hint)
        # Before the revoked test: the session's token provider ends a suspended user's
        # connection with the revoked code and the reason user_suspended (clients/sdk/session.py).
        if exc.reason == ErrorCode.USER_SUSPENDED.value:
            return _SUSPENDED
        if exc.code == CloseCode.DEVICE_REVOKED or exc.reason == ErrorCode.DEVICE_REVOKED.value:
            return _REVOKED.format(code="")
        if exc.reason in SESSION_ENDED:
            return f"error: your session has ended ({exc.reason}): {login_hint}"
        return f"error: the relay ended this device's access ({exc.reason or exc.code})"
    if isinstance(exc, SDKError | VaultError | PromptError):
        return f"error: {exc}"
    if isinstance(exc, ProtocolError):
        return f"error: {exc.code.value}: {getattr(exc, 'reason', '') or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"error: {exc.strerror}{where}"
    return None


def report_crash(program: str, exc: BaseException, directory: Path) -> Path:
    """Write the traceback to a private file for support, and return its path."""
    text = "".join(traceback.format_exception(exc))
    stamp = dt.datetime.now().astimezone().strftime("%Y%m%d-%H%M%S")
    for folder in (directory, Path(tempfile.gettempdir())):
        path = folder / f"{program}-error-{stamp}-{os.getpid()}.log"
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return path
        except OSError:
            continue
    return Path("(nowhere: the details could not be written)")


# The exit status of a command whose standard output was closed by its reader: a program ended
# by SIGPIPE reports 128 + 13 in the shell, and its pipeline (`| head`) carries on quietly.
CLOSED_PIPE = 141


def run_command(program: str, command: Callable[[], int], *, failure: int = 1,
                login_hint: str, details_dir: Path, sso_hint: str | None = None,
                known: Callable[[BaseException], str | None] | None = None) -> int:
    """Run ``command``; map each failure to one sentence and ``failure`` (130 on Ctrl-C).
    ``known`` maps the program's own failures first (return None to fall through);
    ``login_hint`` and ``sso_hint`` as :func:`describe`'s. A standard output closed by its
    reader (``lightbox threads | head -3``) ends it quietly with :data:`CLOSED_PIPE`."""
    try:
        status = command()
        sys.stdout.flush()  # a reader gone is met here, not as Python exits
        return status
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # What is left to write goes nowhere, also as Python flushes stdout on exit.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return CLOSED_PIPE
    except Exception as exc:
        sentence = (known(exc) if known else None) or describe(exc, login_hint=login_hint,
                                                               sso_hint=sso_hint)
        if sentence is None:
            path = report_crash(program, exc, details_dir)
            sentence = (f"error: {program} stopped on an unexpected problem "
                        f"({type(exc).__name__}); the details are in {path}")
        print(sentence, file=sys.stderr)
        return failure


def run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """Run one command's async work to its end in a fresh event loop. ``factory`` is called
    inside the loop, so what it builds (clients, locks) belongs to that loop."""
    async def runner() -> T:
        return await factory()
    return asyncio.run(runner())
