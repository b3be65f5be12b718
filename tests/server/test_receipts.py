"""server/receipts.py: a recipient's signed receipt is checked (signature, message, recipient,
the on-call check) and queued durably for the sender's active devices at the injected clock's
time, in one transaction, against the real Postgres."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from protocol.errors import ErrorCode
from protocol.frames import ReceiptNotice, decode_frame
from protocol.keys import Ed25519KeyPair
from protocol.statements import (
    STATEMENT_VERSION,
    ReceiptKind,
    ReceiptStatement,
    issue_receipt_statement,
)
from server.db import Database
from server.errors import Forbidden, RelayError
from server.receipts import ReceiptService
from server.store import threads
from tests.server.test_store_threads import NOW, add_device, add_user, new_message, store

CLOCK = NOW + dt.timedelta(days=3)  # the relay's clock, far from the database's


@pytest.fixture
async def db(db_dsn: str) -> AsyncIterator[Database]:
    database = Database(db_dsn, min_size=1, max_size=2)
    await database.open()
    try:
        yield database
    finally:
        await database.close()


@dataclasses.dataclass
class Consult:
    sender_devices: list[str]  # active ones
    recipient: str
    recipient_device: str
    key: Ed25519KeyPair  # the recipient device's
    thread_id: str
    message_id: str

    def statement(self, kind: ReceiptKind = ReceiptKind.READ, *, device_id: str | None = None,
                  key: Ed25519KeyPair | None = None) -> str:
        body = ReceiptStatement(v=STATEMENT_VERSION, device_id=device_id or self.recipient_device,
                                message_id=self.message_id, thread_id=self.thread_id, kind=kind,
                                at=int(CLOCK.timestamp()))
        return issue_receipt_statement(body, key or self.key)


@pytest.fixture
async def consult(conn: asyncpg.Connection) -> Consult:
    """A message from a sender with two active devices and a revoked one to a recipient."""
    sender, recipient = await add_user(conn), await add_user(conn)
    s1, s2 = await add_device(conn, sender), await add_device(conn, sender)
    await add_device(conn, sender, status="revoked")
    r1 = await add_device(conn, recipient)
    tid = str(uuid.uuid4())
    await threads.create_thread(conn, thread_id=tid, org_id="org-a", creator=sender,
                                priority="routine", users=[recipient], roles=[], now=NOW)
    msg = new_message(tid, sender, s1, [r1])
    await store(conn, msg)
    return Consult(sorted([s1, s2]), recipient, r1, Ed25519KeyPair.generate(), tid,
                   msg.message_id)


def service(db: Database, check: Any = None) -> ReceiptService:
    return ReceiptService(db=db, clock=CLOCK.timestamp, check=check)


async def receive(svc: ReceiptService, c: Consult, statement: str, *,
                  device_id: str | None = None) -> None:
    await svc.receive(device_id=device_id or c.recipient_device, user_id=c.recipient,
                      signing_key=c.key.public, statement=statement)


async def notices(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT device_id::text AS device_id, kind, frame, created_at "
        "FROM device_notices ORDER BY device_id")
    return rows


async def test_a_receipt_is_queued_for_the_senders_active_devices_at_the_relays_time(
        db: Database, conn: asyncpg.Connection, consult: Consult) -> None:
    statement = consult.statement()
    await receive(service(db), consult, statement)
    rows = await notices(conn)
    assert [r["device_id"] for r in rows] == consult.sender_devices
    assert {r["kind"] for r in rows} == {"receipt"}
    assert {r["created_at"] for r in rows} == {CLOCK}
    frame = decode_frame(rows[0]["frame"])
    assert isinstance(frame, ReceiptNotice)
    assert (frame.statement, frame.device_id, frame.user_id) == (
        statement, consult.recipient_device, consult.recipient)


async def test_the_same_receipt_twice_is_queued_once(
        db: Database, conn: asyncpg.Connection, consult: Consult) -> None:
    svc = service(db)
    await receive(svc, consult, consult.statement())
    await receive(svc, consult, consult.statement())
    assert len(await notices(conn)) == len(consult.sender_devices)


async def test_a_statement_not_signed_by_the_device_is_verification_failed(
        db: Database, conn: asyncpg.Connection, consult: Consult) -> None:
    forged = consult.statement(key=Ed25519KeyPair.generate())
    with pytest.raises(RelayError) as err:
        await receive(service(db), consult, forged)
    assert err.value.code is ErrorCode.VERIFICATION_FAILED
    with pytest.raises(RelayError) as err:
        await receive(service(db), consult, "not a statement")
    assert err.value.code is ErrorCode.VERIFICATION_FAILED
    assert await notices(conn) == []


async def test_a_receipt_for_a_message_the_device_never_received_is_delivery_not_found(
        db: Database, conn: asyncpg.Connection, consult: Consult) -> None:
    stranger = str(uuid.uuid4())
    with pytest.raises(RelayError) as err:
        await receive(service(db), consult, consult.statement(device_id=stranger),
                      device_id=stranger)
    assert err.value.code is ErrorCode.DELIVERY_NOT_FOUND
    unknown = dataclasses.replace(consult, message_id=str(uuid.uuid4()))
    with pytest.raises(RelayError) as err:
        await receive(service(db), unknown, unknown.statement())
    assert err.value.code is ErrorCode.DELIVERY_NOT_FOUND
    assert await notices(conn) == []


class Refusing:
    """An on-call check that keeps a row, then refuses: nothing of it may remain."""

    async def on_receipt(self, conn: Any, body: ReceiptStatement, *, user_id: str,
                         statement: str) -> None:
        await conn.execute("UPDATE threads SET priority = 'urgent' WHERE thread_id = $1",
                           body.thread_id)
        raise Forbidden(ErrorCode.NOT_ON_LADDER, "not on the ladder")


async def test_a_receipt_the_check_refuses_leaves_nothing_behind(
        db: Database, conn: asyncpg.Connection, consult: Consult) -> None:
    with pytest.raises(RelayError) as err:
        await receive(service(db, Refusing()), consult,
                      consult.statement(ReceiptKind.ACKNOWLEDGED))
    assert err.value.code is ErrorCode.NOT_ON_LADDER
    assert await notices(conn) == []
    assert await conn.fetchval("SELECT priority FROM threads WHERE thread_id = $1",
                               consult.thread_id) == "routine"
