"""Argon2id password hashing off the event loop (server/passwords.py)."""

from __future__ import annotations

import asyncio

import argon2
import pytest

from server.passwords import Passwords


async def test_hash_verifies_and_wrong_or_missing_hashes_do_not() -> None:
    pw = Passwords("cheap")
    encoded = await pw.hash("correct horse battery staple")
    assert encoded.startswith("$argon2id$v=19$")
    assert await pw.verify(encoded, "correct horse battery staple")
    assert not await pw.verify(encoded, "Correct horse battery staple")
    assert not await pw.verify(None, "correct horse battery staple")
    assert not await pw.verify("not a hash", "x")
    assert Passwords("rfc9106-low-memory").needs_rehash(encoded)
    assert not pw.needs_rehash(encoded)


async def test_unknown_login_costs_the_same_as_a_wrong_password() -> None:
    """An unknown login runs one Argon2id verification with the same parameters as a real
    user's hash (so its time tells nothing). Checked by what is computed, not by a clock,
    which the other work on a CI machine would make flaky."""
    pw = Passwords("rfc9106-low-memory")
    encoded = pw.hash_sync("correct horse battery staple")
    verified: list[str] = []
    real = pw._hasher

    class Counting:
        def verify(self, hash_: str, password: str) -> bool:
            verified.append(hash_)
            return real.verify(hash_, password)

    pw._hasher = Counting()  # type: ignore[assignment]
    assert not pw.verify_sync(encoded, "wrong password")
    assert not pw.verify_sync(None, "wrong password")
    assert len(verified) == 2 and verified[0] == encoded
    assert argon2.extract_parameters(verified[1]) == argon2.extract_parameters(encoded)


async def test_hashing_runs_off_the_event_loop() -> None:
    pw = Passwords("rfc9106-low-memory")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    await pw.hash("correct horse battery staple")
    task.cancel()
    assert ticks >= 5  # the loop kept running while Argon2id worked


def test_unknown_profile_is_refused() -> None:
    with pytest.raises(ValueError, match="profile"):
        Passwords("fast")
