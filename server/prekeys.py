"""Prekey bookkeeping (docs/PROTOCOL.md §11 "Prekey claims"): limits on one-time prekey claims,
and telling a device that it runs low.

A one-time prekey gives one message forward secrecy; without one the sender wraps to the signed
prekey alone (§5.3). Any member of a trusted organisation may claim keys, so claims are counted
over a sliding window of ``LIGHTBOX_PREKEY_CLAIM_WINDOW`` seconds, from the claimed rows
themselves (server/store/prekeys.py keeps each claimer and time):

- per **requester**, as Signal's server limits pre-key fetches per (requesting device, target
  device) pair: beyond ``LIGHTBOX_PREKEY_CLAIMS_PER_REQUESTER`` keys of one device the whole
  claim is refused, ``prekey_claims_limited`` with ``retry_after`` (when the oldest counted
  claim leaves the window), and nothing is handed out;
- per **target**: beyond ``LIGHTBOX_PREKEY_CLAIMS_PER_TARGET`` keys of one device handed out to
  everybody, a claim still answers, with the signed prekey alone. A refusal here would let a few
  colluding members stop every message to a clinician (docs/CLINICAL_SAFETY.md), so the
  message goes, without the one-time key, and the target's remaining keys are kept for the next
  window. Both are audited (``keys.claims_limited``, ``keys.one_time_withheld``).

Claims of one target are serialised with a transaction-level advisory lock, taken in device-id
order, so the counts hold across concurrent claims and relay processes. Times come from the
injected clock, never from the database's ``now()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import asyncpg

from protocol.api import PrekeyCount
from protocol.frames import KeysLow
from server import audit, events
from server.db import Database
from server.settings import Settings
from server.store import devices, prekeys

__all__ = ["PrekeyService"]


class PrekeyService:
    def __init__(self, *, db: Database, settings: Settings,
                 clock: Callable[[], float] = time.time) -> None:
        self.db, self.settings, self.clock = db, settings, clock

    def count(self, remaining: int) -> PrekeyCount:
        return PrekeyCount(remaining=remaining, low_water=self.settings.prekeys_low_water,
                           target=self.settings.prekeys_target)

    # --- claims (inside the caller's transaction) ---------------------------------------------

    async def requester_wait(self, conn: asyncpg.Connection, requester: str,
                             targets: Sequence[str], *, now: float) -> float | None:
        """Lock the targets' claims; the seconds until ``requester`` may claim from all of
        them again, or None if it may now. Audits a refusal."""
        since = now - self.settings.prekey_claim_window
        for target in sorted(targets):
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                               f"one-time-prekeys:{target}")
        wait = 0.0
        for target in targets:
            n, oldest = await prekeys.claims_since(conn, target, since=since, by=requester)
            if n >= self.settings.prekey_claims_per_requester and oldest is not None:
                wait = max(wait, oldest - since, 1.0)
        if not wait:
            return None
        await audit.append(conn, "keys.claims_limited", subject_kind="device",
                           subject_id=requester, actor_kind="device", actor_id=requester,
                           outcome="denied", details={"devices": len(targets)})
        return wait

    async def take(self, conn: asyncpg.Connection, requester: str, target: str, *,
                   now: float) -> str | None:
        """One one-time prekey of ``target`` for ``requester``; None when none is left or the
        target's window is used up (audited)."""
        since = now - self.settings.prekey_claim_window
        n, _ = await prekeys.claims_since(conn, target, since=since)
        if n >= self.settings.prekey_claims_per_target:
            await audit.append(conn, "keys.one_time_withheld", subject_kind="device",
                               subject_id=target, actor_kind="device", actor_id=requester,
                               details={"claimed_in_window": n})
            return None
        return await prekeys.claim_one_time(conn, target, by=requester, now=now)

    async def publish_low(self, conn: asyncpg.Connection, targets: Sequence[str]) -> None:
        """Tell devices that run low, wherever they are connected (a ``keys_low`` frame)."""
        low = []
        for target in targets:
            remaining = await prekeys.count_one_time(conn, target)
            if remaining < self.settings.prekeys_low_water:
                low.append({"device_id": target, "remaining": remaining})
        if low:
            await events.publish(conn, "keys_low", devices=low,
                                 target=self.settings.prekeys_target)

    # --- a device connects ----------------------------------------------------------------------

    async def connected(self, device_id: str) -> KeysLow | None:
        """Record that the device was seen; the ``keys_low`` frame to push it, if it runs low."""
        async with self.db.pool.acquire() as conn:
            await devices.touch(conn, device_id, now=self.clock())
            remaining = await prekeys.count_one_time(conn, device_id)
        if remaining < self.settings.prekeys_low_water:
            return KeysLow(remaining=remaining, target=self.settings.prekeys_target)
        return None
