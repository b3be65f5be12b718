"""The device's key store unlocked for the commands that need no vault (enrolment, linking,
login, the key directory, consent): the password from ``LIGHTBOX_PASSWORD`` or a prompt, and
a relay client logged in as the device, which logs in again when the relay ended the session.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from clients.sdk import identity
from clients.sdk.errors import KeyStoreError
from clients.sdk.failures import run_async
from clients.sdk.http import RelayHTTP
from clients.sdk.keystore import DEFAULT_DEVICE_PROFILE, DeviceState, KeyStore, OpenKeyStore
from clients.sdk.prompts import read_secret
from protocol import api
from protocol.errors import ErrorCode

__all__ = [
    "KeyDevice",
    "open_device",
    "password_prompt",
    "read_password",
    "store_of",
]


def store_of(args: argparse.Namespace) -> KeyStore:
    return KeyStore.for_profile(args.profile)


def password_prompt(profile: str) -> str:
    """The prompt for the password of ``profile``: "Your Lightbox password", naming the profile
    only when it is not the one a clinician never chose (``default``), where its name says who
    the password is for (``--profile ortho``)."""
    if profile == DEFAULT_DEVICE_PROFILE:
        return "Your Lightbox password"
    return f"Your Lightbox password (profile {profile})"


def read_password(prompt: str = "Password", *, confirm: bool = False) -> str:
    return read_secret("LIGHTBOX_PASSWORD", prompt, confirm=confirm)


T = TypeVar("T")

class KeyDevice:
    """An unlocked profile: its key store and the password (to log in again when needed)."""

    def __init__(self, opened: OpenKeyStore, password: str) -> None:
        self.opened = opened
        self.password = password

    @property
    def state(self) -> DeviceState:
        return self.opened.state

    async def relay(self) -> RelayHTTP:
        """A RelayHTTP acting as this device, logged in (reusing the saved session); the
        session the relay ended is renewed as clients/sdk/identity.py ``log_in_again`` can."""
        async def login_again() -> api.TokenPair:  # the relay ended the session
            return await identity.log_in_again(relay, self.opened, self.password,
                                               ended=ErrorCode.TOKEN_INVALID.value)

        relay = identity.device_relay(self.opened, login_again=login_again)
        if relay.tokens is None or relay.tokens.refresh_expires_at <= time.time():
            relay.tokens = None
            try:
                await identity.log_in_again(relay, self.opened, self.password)
            except BaseException:
                await relay.aclose()
                raise
        return relay

    def call(self, work: Callable[[RelayHTTP], Awaitable[T]]) -> T:
        """Run one command's ``work`` with a logged-in relay client of this device, closed
        after it."""
        async def go() -> T:
            async with await self.relay() as relay:
                return await work(relay)

        return run_async(go)


def open_device(args: argparse.Namespace) -> KeyDevice:
    store = store_of(args)
    if not store.exists():
        raise KeyStoreError(f"profile {args.profile!r} has no device: run `lightbox enroll` "
                            "or `lightbox link` first")
    password = read_password(password_prompt(args.profile))
    return KeyDevice(store.open(password), password)
