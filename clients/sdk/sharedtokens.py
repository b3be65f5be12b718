"""The session tokens of one profile, shared by every program that opened it (docs/SECURITY.md
"Identity and sessions").

The relay rotates the refresh token at each use and, when a rotated-out one is presented again,
ends its whole family as stolen (RFC 9700 §4.14.2, server/login.py). ``lightbox watch`` and
another command of the same profile (``lightbox link --approve``, ``send``, the desktop) each
hold the profile's tokens in memory, so a refresh by one would leave the other holding a
rotated-out token, whose next refresh would end the session of both. Therefore every refresh
of a profile's session is made under the profile's lock (:data:`LOCK_FILE` beside the key store
and the vault, an ``fcntl.flock`` lock) from the newest pair the profile holds: a program whose
refresh token another program rotated meanwhile takes that program's pair instead of
presenting its own, and the new pair is saved before the lock is let go
(clients/sdk/transport.py). The tokens stay sealed where they always were
(clients/sdk/keystore.py, clients/sdk/vault.py); the lock file is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

from clients.sdk.keystore import DeviceState, DeviceStore
from protocol.api import TokenPair

__all__ = ["LOCK_FILE", "SharedTokens", "fresh_state"]

LOCK_FILE: Final = "session.lock"
_POLL = 0.02  # seconds between tries for a lock another program holds


def fresh_state(store: DeviceStore) -> DeviceState:
    """The device state as the profile holds it now, saved by this program or another one
    (``reload``, when the store has it), rather than as this program last read it."""
    reload = getattr(store, "reload", None)
    return reload() if callable(reload) else store.state


class SharedTokens:
    """The session of the profile ``store`` keeps in ``directory`` (module docstring)."""

    def __init__(self, store: DeviceStore, directory: Path) -> None:
        self._store = store
        self._path = directory / LOCK_FILE

    @classmethod
    def of(cls, store: DeviceStore) -> SharedTokens | None:
        """For a store kept in a profile's folder that can be read again (the key store, the
        vault); None for one held only in memory."""
        directory = getattr(store, "directory", None)
        if directory is None or not callable(getattr(store, "reload", None)):
            return None
        return cls(store, Path(directory))

    @contextlib.asynccontextmanager
    async def lock(self) -> AsyncIterator[None]:
        """Hold the profile's session lock (waiting, without blocking the event loop, while
        another program of the profile refreshes)."""
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0),
                         0o600)
        except FileNotFoundError:  # the profile's folder is gone (wiped): nobody shares it
            yield
            return
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(_POLL)
            yield
        finally:
            os.close(fd)  # lets the lock go

    def stored(self) -> TokenPair | None:
        """The newest token pair of the profile (call under :meth:`lock`)."""
        return fresh_state(self._store).session
