"""Password hashing with Argon2id (RFC 9106), off the event loop.

The default cost is RFC 9106's second recommended option (the "low-memory" profile: 3 passes
over 64 MiB, 4 lanes; about 120 ms here). Hashing blocks a core for that long, so the async API
runs it in a worker thread (``asyncio.to_thread``) and the event loop keeps serving.

An unknown login must cost the same as a wrong password, or response times tell an attacker
which logins exist: :meth:`Passwords.verify` given no hash verifies against a dummy hash made
with the same parameters when the object is built.

The ``cheap`` profile (argon2-cffi's CHEAPEST) exists for tests only.
The synchronous ``*_sync`` methods serve the admin tool on the relay host (``lightbox-admin
admin create``), which has no event loop to protect.
"""

from __future__ import annotations

import asyncio
import secrets

import argon2
from argon2 import profiles

__all__ = ["PROFILES", "Passwords"]

PROFILES: dict[str, argon2.Parameters] = {
    "rfc9106-low-memory": profiles.RFC_9106_LOW_MEMORY,
    "cheap": profiles.CHEAPEST,
}


class Passwords:
    """Argon2id hashing and verification with one parameter set."""

    def __init__(self, profile: str = "rfc9106-low-memory") -> None:
        try:
            params = PROFILES[profile]
        except KeyError:
            raise ValueError(f"unknown Argon2 profile {profile!r}") from None
        self.profile = profile
        self._hasher = argon2.PasswordHasher.from_parameters(params)
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))

    # --- synchronous (for the admin tool and the worker thread) ----------------------------

    def hash_sync(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify_sync(self, encoded: str | None, password: str) -> bool:
        """True if ``password`` matches ``encoded``. ``None`` (unknown login, or a user who
        has not enrolled yet) is checked against the dummy hash and is always False."""
        target = encoded if encoded is not None else self._dummy
        try:
            ok = self._hasher.verify(target, password)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False
        return ok and encoded is not None

    def needs_rehash(self, encoded: str) -> bool:
        """True when ``encoded`` was made with other parameters (rehash at the next login)."""
        try:
            return self._hasher.check_needs_rehash(encoded)
        except argon2.exceptions.InvalidHashError:
            return True

    # --- asynchronous (the relay) ----------------------------------------------------------

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self.hash_sync, password)

    async def verify(self, encoded: str | None, password: str) -> bool:
        return await asyncio.to_thread(self.verify_sync, encoded, password)
