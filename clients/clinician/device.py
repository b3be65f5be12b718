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
from clients.sdk.errors import FlowError, KeyStoreError, RelayRequestError
from clients.sdk.failures import run_async
from clients.sdk.http import RelayHTTP
from clients.sdk.keystore import (
    DeviceState,
    KeyStore,
    OpenKeyStore,
)
from clients.sdk.prompts import read_secret
from protocol import api
from protocol.errors import ErrorCode

__all__ = [
    "KeyDevice",
    "open_device",
    "password_login",
    "read_password",
    "store_of",
]


def store_of(args: argparse.Namespace) -> KeyStore:
    return KeyStore.for_profile(args.profile)


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
        """A RelayHTTP acting as this device, logged in (reusing the saved session)."""
        async def login_again() -> api.TokenPair:  # the relay ended the session
            return await password_login(relay, self.state, self.password)

        relay = identity.device_relay(self.opened, login_again=login_again)
        if relay.tokens is None or relay.tokens.refresh_expires_at <= time.time():
            relay.tokens = None
            try:
                await password_login(relay, self.state, self.password)
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


async def password_login(relay: RelayHTTP, state: DeviceState, password: str
                          ) -> api.TokenPair:
    """Log in again with the password; a clinician of an organisation that signs in with its
    IdP has none at the relay, and is told to run ``lightbox login --sso`` instead."""
    try:
        return await identity.login(relay, state, password)
    except RelayRequestError as exc:
        if exc.code != ErrorCode.INVALID_CREDENTIALS.value:
            raise
        try:
            await relay.sso_config(state.org_id)
        except RelayRequestError:
            raise exc from None
        raise FlowError("your organisation signs in with its identity provider: run "
                        "`lightbox login --sso`", code=ErrorCode.INVALID_CREDENTIALS.value) \
            from exc


def open_device(args: argparse.Namespace) -> KeyDevice:
    store = store_of(args)
    if not store.exists():
        raise KeyStoreError(f"profile {args.profile!r} has no device: run `lightbox enroll` "
                            "or `lightbox link` first")
    password = read_password(f"Password ({args.profile})")
    return KeyDevice(store.open(password), password)
