"""Argon2id password hashing off the event loop (server/passwords.py)."""

from __future__ import annotations

import asyncio
import time

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
    pw = Passwords("rfc9106-low-memory")
    encoded = pw.hash_sync("correct horse battery staple")

    def timed(target: str | None) -> float:
        start = time.perf_counter()
        for _ in range(3):
            pw.verify_sync(target, "wrong password")
        return time.perf_counter() - start

    wrong, unknown = timed(encoded), timed(None)
    assert 0.5 < unknown / wrong < 2.0


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
