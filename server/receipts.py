"""Recipients' signed receipts (``delivered``, ``read``, ``acknowledged``; docs/PROTOCOL.md §8)
as the websocket hands them over (server/ws.py).

A receipt is a statement signed by the recipient device's Ed25519 key
(:func:`protocol.statements.verify_receipt_statement`); the relay checks the signature, that the
message exists and was addressed to that device, that an acknowledgement comes from neither the
message's sender nor the thread's maker (``forbidden``: "I'm on it" answers someone else's
consult; the relay cannot see which message is the consult, the clients decide that:
docs/PROTOCOL.md §16.3), lets the on-call service check and keep it
(:meth:`server.oncall.OncallService.on_receipt`: an acknowledgement from someone off the ladder
is ``not_on_ladder``), then queues a durable ``receipt_notice`` for the sender's active devices,
in one transaction. The signed statement travels on unchanged, so the sender verifies it under
the recipient's key rather than trusting the relay's word. The notice's time is the injected
clock's, never the database's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from protocol import statements
from protocol.errors import ErrorCode, VerificationError
from protocol.frames import ReceiptNotice, encode_frame
from protocol.statements import ReceiptKind
from server import events
from server.db import Database
from server.errors import Forbidden, NotFound, RelayError
from server.store import at, devices, messages, threads

__all__ = ["ReceiptCheck", "ReceiptService"]

NOTICE_RECEIPT = "receipt"


class ReceiptCheck(Protocol):
    async def on_receipt(self, conn: Any, body: statements.ReceiptStatement, *, user_id: str,
                         statement: str) -> None:
        """Check and keep a verified receipt in its transaction (server/oncall.py); raise
        RelayError (``not_on_ladder``) to refuse it."""
        ...


class ReceiptService:
    def __init__(self, *, db: Database, clock: Callable[[], float] = time.time,
                 check: ReceiptCheck | None = None) -> None:
        self.db, self.clock, self.check = db, clock, check

    async def receive(self, *, device_id: str, user_id: str, signing_key: bytes,
                      statement: str) -> None:
        """Take the device's receipt statement. Raises RelayError: ``verification_failed``
        (not signed by this device), ``delivery_not_found`` (no such message for this device),
        or the check's refusal; nothing is kept or queued then."""
        try:
            body = statements.verify_receipt_statement(statement, signing_key,
                                                       device_id=device_id)
        except VerificationError as exc:
            raise RelayError(ErrorCode.VERIFICATION_FAILED,
                             "receipt statement does not verify") from exc
        now = at(self.clock())
        async with self.db.pool.acquire() as conn:
            ref = await messages.message_ref(conn, body.thread_id, body.message_id)
            if ref is None or device_id not in ref.recipients:
                raise NotFound(ErrorCode.DELIVERY_NOT_FOUND, "no such message for this device")
            if body.kind is ReceiptKind.ACKNOWLEDGED and user_id in (
                    ref.sender_user_id, await threads.creator(conn, body.thread_id)):
                # A self-copy on another device of the sender, or a reply in a consult this
                # user made: nobody is asking them for help.
                raise Forbidden(ErrorCode.FORBIDDEN, "only someone else's consult can be "
                                "acknowledged: not one's own message, nor a reply in a "
                                "consult one made")
            notice = encode_frame(ReceiptNotice(
                message_id=body.message_id, device_id=device_id, user_id=user_id,
                kind=body.kind, at=body.at, statement=statement))
            targets = await devices.active_device_ids(conn, [ref.sender_user_id])
            async with conn.transaction():
                if self.check is not None:
                    await self.check.on_receipt(conn, body, user_id=user_id, statement=statement)
                await messages.add_notices(
                    conn, targets, NOTICE_RECEIPT, notice,
                    dedupe_key=f"receipt:{body.message_id}:{device_id}:{body.kind}", now=now)
                await events.publish(conn, "deliver", device_ids=targets)
