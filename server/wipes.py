"""Wipe orders for devices revoked with wipe (docs/PROTOCOL.md §15 "Wipe", docs/SECURITY.md).

IT revokes a lost device with wipe in the organisation-signed revocation list. When that device
connects again and proves, by signing the handshake's challenge with its own key, that it is
the device (:meth:`WipeService.pending`, raising :class:`WipeRequired`), the websocket
(server/ws.py) lets it in only to hear its order: :meth:`WipeService.order` builds the
``wipe_order`` (carrying the signed list, so the device need not trust the relay), drops the
device's queued deliveries and notices, and audits ``device.wipe_ordered``; the device's signed
``wipe_confirm`` is checked and recorded by :meth:`WipeService.confirm`
(``device.wipe_confirmed``), after which the relay orders it no more.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable

import asyncpg

from protocol import statements
from protocol.certs import RevocationSubject
from protocol.errors import ErrorCode, VerificationError
from protocol.frames import WipeOrder
from protocol.session import AuthRequested, verify_challenge
from server import audit
from server.db import Database
from server.errors import Forbidden
from server.store import devices, messages, revocations, users
from server.trust import Trust

__all__ = ["WIPE_NAMESPACE", "WipeRequired", "WipeService"]

log = logging.getLogger("lightbox.wipes")

WIPE_NAMESPACE = uuid.UUID("5e0b1c62-6d1a-4f0e-9b7e-1f1c0a7d9e21")
"""Order ids are uuid5 of device and list number: the same list gives the same order again."""


class WipeRequired(Forbidden):
    """Raised by the websocket handshake for a device revoked with wipe that proved it holds
    its key: the connection sends ``wipe_order`` before closing (server/ws.py)."""

    def __init__(self, *, device_id: str, user_id: str) -> None:
        super().__init__(ErrorCode.DEVICE_REVOKED, "this device was revoked and must wipe")
        self.device_id, self.user_id = device_id, user_id


class WipeService:
    def __init__(self, *, db: Database, trust: Trust,
                 clock: Callable[[], float] = time.time) -> None:
        self.db, self.trust, self.clock = db, trust, clock

    @staticmethod
    async def pending(conn: asyncpg.Connection, device_id: str,
                      request: AuthRequested) -> None:
        """Raise WipeRequired when the revoked device must wipe and signed this challenge with
        its own key (so nobody else can trigger or intercept the order)."""
        device = await devices.get_device(conn, device_id)
        if device is None or not device.wipe_pending:
            return
        try:
            verify_challenge(device.signing_key, request.nonce, request.hello.access_token,
                             request.signature)
        except VerificationError:
            return
        raise WipeRequired(device_id=device.device_id, user_id=device.user_id)

    async def order(self, device_id: str) -> WipeOrder | None:
        """The wipe order for a device revoked with wipe, proven by its organisation's signed
        revocation list; drops its queued deliveries and notices (audited). None when the
        relay holds no list naming the device with wipe (it then just closes with 4004)."""
        issued_at = int(self.clock())
        async with self.db.pool.acquire() as conn, conn.transaction():
            device = await devices.get_device(conn, device_id)
            if device is None or not device.wipe_pending:
                return None
            user = await users.get_user(conn, device.user_id)
            if user is None:
                return None
            held = await revocations.get_latest(conn, user.org_id)
            if held is None:
                return None
            number, token = held
            try:
                rl = self.trust.verify_list(token)
            except Exception:
                return None
            if not any(e.subject is RevocationSubject.DEVICE and e.id == device_id and e.wipe
                       for e in rl.entries):
                return None
            order_id = str(uuid.uuid5(WIPE_NAMESPACE, f"{device_id}:{number}"))
            # The revocation dropped its queue already (server/provisioning.py); what a
            # device revoked before that was the rule still holds goes now.
            dropped = await messages.drop_queues(conn, [device_id])
            await audit.append(conn, "device.wipe_ordered", subject_kind="device",
                               subject_id=device_id, details={
                                   "order_id": order_id, "revocation_list": number,
                                   **messages.dropped_details(dropped, device_id)})
        return WipeOrder(order_id=order_id, issued_at=issued_at, revocation=token)

    async def confirm(self, device_id: str, order: WipeOrder, statement: str) -> bool:
        """Record a device's signed confirmation that it obeyed ``order`` and erased itself
        (audited ``device.wipe_confirmed``); the relay then orders it no more. False, and
        nothing recorded, when the statement does not verify under the device's key or
        names another order."""
        async with self.db.pool.acquire() as conn, conn.transaction():
            device = await devices.get_device(conn, device_id)
            if device is None:
                return False
            try:
                body = statements.verify_wipe_confirmation(statement, device.signing_key,
                                                           device_id=device_id)
            except VerificationError as exc:
                log.info("wipe confirmation refused", extra={"reason": exc.reason})
                return False
            if body.order_id != order.order_id:
                log.info("wipe confirmation refused", extra={"reason": "another order"})
                return False
            await devices.clear_wipe_pending(conn, device_id)
            await audit.append(conn, "device.wipe_confirmed", subject_kind="device",
                               subject_id=device_id, actor_kind="device", actor_id=device_id,
                               details={"order_id": body.order_id, "wiped_at":
                                        dt.datetime.fromtimestamp(body.wiped_at,
                                                                  dt.UTC).isoformat()})
        return True
