"""The key directory: who can be found, their certificates and prekeys, and the atomic claim
of one-time prekeys (docs/ARCHITECTURE.md §4).

Only active devices of active users whose certificate and licence are valid are handed out:
credentialed recipients only (docs/ARCHITECTURE.md §2). Uploaded prekeys are verified under the
uploading device's certificate chain before they are stored, so the relay only ever serves keys
their device signed (clients verify them again).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import asyncpg

from protocol.api import (
    ClaimedKey,
    DirectoryEntry,
    PrekeyCount,
    UserDevices,
)
from protocol.certs import VerifiedDevice, verify_chain, verify_signed_prekey
from protocol.errors import ErrorCode, ProtocolError
from server import audit
from server.authn import Principal
from server.db import Database
from server.enrolment import verify_prekeys
from server.errors import Forbidden, InvalidInput, LimitError, NotFound
from server.prekeys import PrekeyService
from server.settings import Settings
from server.store import bundles, devices, prekeys, revocations, users
from server.trust import Trust, refusal

__all__ = ["DIRECTORY_LIMIT", "KeyDirectory"]

DIRECTORY_LIMIT = 50
LOGIN = re.compile(r"[a-z0-9][a-z0-9._-]{1,63}")  # protocol.api.Login


class KeyDirectory:
    def __init__(self, *, db: Database, trust: Trust, settings: Settings,
                 prekeys: PrekeyService, clock: Callable[[], float] = time.time) -> None:
        self.db, self.trust, self.settings, self.clock = db, trust, settings, clock
        self.prekeys = prekeys

    def _reachable(self, user: users.UserRecord | None, now: float) -> ErrorCode | None:
        if user is None or user.status == "pending" or user.org_id not in self.trust.orgs:
            return ErrorCode.NOT_FOUND
        return user.standing(now)

    async def user_devices(self, user_id: str) -> UserDevices:
        now = self.clock()
        async with self.db.pool.acquire() as conn:
            user = await users.get_user(conn, user_id)
            code = self._reachable(user, now)
            if code is ErrorCode.NOT_FOUND:
                raise NotFound(detail="no such user")
            if code is not None:
                raise Forbidden(code)
            assert user is not None
            found = await bundles.key_bundles(conn, user_ids=[user.user_id])
        # An active user whose devices are all revoked is found, with no device to seal for.
        return found[0] if found else UserDevices(user_certificate=user.user_certificate,
                                                  devices=[])

    async def claim(self, principal: Principal, device_ids: list[str]) -> list[ClaimedKey]:
        """One one-time prekey per device (or none left, or the device's claim window used
        up: the signed prekey alone), all or nothing: any unavailable device fails the claim
        with not_found naming the ids asked for that are unavailable (nothing else), a
        requester over its limit with prekey_claims_limited (server/prekeys.py)."""
        now = self.clock()
        wanted = list(dict.fromkeys(device_ids))
        async with self.db.pool.acquire() as conn, conn.transaction():
            devs = await devices.get_devices(conn, wanted)
            owners = {d.user_id for d in devs.values()}
            people = {u: await users.get_user(conn, u) for u in owners}
            signed = await prekeys.get_signed_many(conn, wanted)
            missing = [d for d in wanted if d not in devs or devs[d].status != "active"
                       or d not in signed
                       or self._reachable(people[devs[d].user_id], now) is not None]
            if missing:
                raise NotFound(detail="some devices are unknown or not reachable",
                               extra={"device_ids": missing})
            wait = await self.prekeys.requester_wait(conn, principal.device_id, wanted,
                                                     now=now)
            keys = []
            for did in wanted if wait is None else ():
                one_time = await self.prekeys.take(conn, principal.device_id, did, now=now)
                user = people[devs[did].user_id]
                assert user is not None
                keys.append(ClaimedKey(device_id=did, user_certificate=user.user_certificate,
                                       device_certificate=devs[did].device_certificate,
                                       signed_prekey=signed[did], one_time_prekey=one_time))
            if wait is None:
                await self.prekeys.publish_low(conn, wanted)
        if wait is not None:
            # After the transaction: its audit row of the refusal is kept.
            raise LimitError(ErrorCode.PREKEY_CLAIMS_LIMITED,
                             "too many one-time prekeys claimed of these devices lately",
                             retry_after=wait)
        return keys

    async def _verified(self, conn: asyncpg.Connection, principal: Principal,
                        now: float) -> VerifiedDevice:
        user = await users.get_user(conn, principal.user_id)
        device = await devices.get_device(conn, principal.device_id)
        assert user is not None
        assert device is not None
        try:
            return verify_chain(user.user_certificate, device.device_certificate,
                                trusted_orgs=self.trust.orgs, at=int(now),
                                revocations=await self.trust.revocations(conn))
        except ProtocolError as exc:
            raise refusal(exc, "device certificate") from exc

    async def upload_one_time(self, principal: Principal, tokens: list[str]) -> PrekeyCount:
        now = self.clock()
        async with self.db.pool.acquire() as conn:
            verified = await self._verified(conn, principal, now)
            batch = verify_prekeys(verified, tokens, batch_max=self.settings.prekey_batch_max)
            async with conn.transaction():
                await prekeys.add_one_time(conn, principal.device_id, batch)
                remaining = await prekeys.count_one_time(conn, principal.device_id)
                await audit.append(conn, "keys.one_time_uploaded", subject_kind="device",
                                   subject_id=principal.device_id,
                                   details={"count": len(batch), "remaining": remaining})
        return self.prekeys.count(remaining)

    async def set_signed(self, principal: Principal, token: str) -> None:
        now = self.clock()
        async with self.db.pool.acquire() as conn:
            verified = await self._verified(conn, principal, now)
            try:
                body = verify_signed_prekey(token, verified)
            except ProtocolError as exc:
                raise refusal(exc, "signed prekey") from exc
            async with conn.transaction():
                await prekeys.set_signed(conn, principal.device_id, body.prekey_id, token,
                                         now=now)
                await audit.append(conn, "keys.signed_prekey_rotated", subject_kind="device",
                                   subject_id=principal.device_id,
                                   details={"prekey_id": body.prekey_id})

    async def count(self, principal: Principal) -> PrekeyCount:
        async with self.db.pool.acquire() as conn:
            return self.prekeys.count(await prekeys.count_one_time(conn,
                                                                principal.device_id))

    async def directory(self, q: str, *, login: str | None = None) -> list[DirectoryEntry]:
        """A search (``q``: 2 to 64 characters of a login, name, role, specialty or
        department), or the one user whose login is exactly ``login`` (none or one entry)."""
        if login is not None:
            if q or not LOGIN.fullmatch(login):
                raise InvalidInput(detail="login must be a login (lower-case letters, digits, "
                                          "'.', '_', '-'; 2 to 64 characters), without q")
            query, exact = login, True
        else:
            query, exact = q.strip(), False
            if not 2 <= len(query) <= 64:
                raise InvalidInput(detail="q must be 2 to 64 characters")
        async with self.db.pool.acquire() as conn:
            found = await users.search_directory(conn, query, org_ids=sorted(self.trust.orgs),
                                                 now=self.clock(), limit=DIRECTORY_LIMIT,
                                                 exact_login=exact)
        return [DirectoryEntry(user_id=u.user_id, org_id=u.org_id, login=u.login,
                               display_name=u.display_name, roles=u.roles,
                               specialty=u.specialty, department=u.department)
                for u in found]

    async def revocation_lists(self) -> list[str]:
        async with self.db.pool.acquire() as conn:
            return [t for t in await revocations.all_lists(conn)]
