"""Filing and expiry (server/expiry.py): which organisations must file, and what the audit
trail proves about each copy of an image (``FilingService._report``, read by ``lightbox-admin
copies``), built here from audit rows appended with the clock injected on a real database.
The flows that write those rows, over real websockets, are tests/server/test_filing.py."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg

from server import audit
from server.expiry import ExpiryPolicy, FilingService

T0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
IMAGE, THREAD = str(uuid.uuid4()), str(uuid.uuid4())
SENDER, BEN, CAT, DAN, GATEWAY = (str(uuid.uuid4()) for _ in range(5))


async def trail(conn: asyncpg.Connection, *events: tuple[str, dict[str, Any]]) -> None:
    """Audit ``events`` of the image, a minute apart from T0."""
    for i, (event, details) in enumerate(events):
        await audit.append(conn, event, subject_kind="attachment", subject_id=IMAGE,
                           details=details, now=clock_at(minute(i)))


def clock_at(moment: dt.datetime) -> Callable[[], dt.datetime]:
    return lambda: moment


def shared() -> tuple[str, dict[str, Any]]:
    return ("attachment.shared", {"device_id": SENDER, "thread_id": THREAD,
                                  "shared_at": T0.isoformat()})


def fetched(device: str) -> tuple[str, dict[str, Any]]:
    return ("attachment.fetched", {"device_id": device})


def ordered(device: str, order: str) -> tuple[str, dict[str, Any]]:
    return ("expiry.order_issued", {"device_id": device, "order_id": order, "reason": "filed",
                                    "thread_id": THREAD})


def confirmed(device: str, order: str) -> tuple[str, dict[str, Any]]:
    return ("expiry.confirmed", {"device_id": device, "order_id": order})


def minute(n: int) -> dt.datetime:
    return T0 + dt.timedelta(minutes=n)


def test_filing_is_required_unless_off_or_optional_for_the_organisation() -> None:
    assert ExpiryPolicy().requires_filing("st-elsewhere")
    assert not ExpiryPolicy(optional_orgs=frozenset({"st-elsewhere"})).requires_filing(
        "st-elsewhere")
    assert ExpiryPolicy(optional_orgs=frozenset({"other"})).requires_filing("st-elsewhere")
    assert not ExpiryPolicy(filing_required=False).requires_filing("st-elsewhere")


async def test_each_copy_is_what_its_trail_proves_sender_first_gateway_last(
        conn: asyncpg.Connection) -> None:
    await trail(conn, shared(), fetched(BEN), fetched(CAT), fetched(BEN),
                ("attachment.filed", {"gateway_device_id": GATEWAY, "thread_id": THREAD,
                                      "filed_at": minute(4).isoformat(),
                                      "statement_id": "st-1", "receipt_sha256": "ab" * 32}),
                ordered(SENDER, "o-s"), ordered(BEN, "o-b"), ordered(DAN, "o-d"),
                confirmed(SENDER, "o-s"), confirmed(BEN, "o-b"), confirmed(DAN, "o-d"),
                ("attachment.ciphertext_deleted", {}))
    report = await FilingService._report(conn, IMAGE)
    assert (report.thread_id, report.shared_at, report.filed_at, report.gateway_device_id,
            report.filing_statement_id, report.ciphertext_deleted_at, report.not_filed_at) == (
        THREAD, T0, minute(4), GATEWAY, "st-1", minute(11), None)
    rows = {(c.device_id, c.role, c.status) for c in report.copies}
    assert rows == {(SENDER, "sender", "destroyed"), (BEN, "recipient", "destroyed"),
                    (CAT, "recipient", "held"), (DAN, "recipient", "never_received"),
                    (GATEWAY, "gateway", "gateway")}
    roles = [c.role for c in report.copies]
    assert (roles[0], roles[-1]) == ("sender", "gateway")
    ben = next(c for c in report.copies if c.device_id == BEN)
    assert (ben.received_at, ben.order_id, ben.order_issued_at, ben.confirmed_at) == (
        minute(1), "o-b", minute(6), minute(9))  # the first fetch, not the second


async def test_a_fetch_after_the_confirmation_means_the_copy_may_exist(
        conn: asyncpg.Connection) -> None:
    await trail(conn, shared(), fetched(BEN), ordered(BEN, "o-1"), confirmed(BEN, "o-1"),
                fetched(BEN))
    (ben,) = [c for c in (await FilingService._report(conn, IMAGE)).copies if c.device_id == BEN]
    assert ben.status == "fetched_after_confirmation"


async def test_an_order_not_yet_confirmed_is_ordered_and_another_orders_confirmation_is_not_it(
        conn: asyncpg.Connection) -> None:
    await trail(conn, shared(), fetched(BEN), ordered(BEN, "o-1"), ordered(BEN, "o-2"),
                confirmed(BEN, "o-2"))
    (ben,) = [c for c in (await FilingService._report(conn, IMAGE)).copies if c.device_id == BEN]
    assert (ben.status, ben.order_id, ben.confirmed_at) == ("ordered", "o-1", None)


async def test_a_new_order_after_a_confirmation_opens_the_copy_again(
        conn: asyncpg.Connection) -> None:
    await trail(conn, shared(), fetched(BEN), ordered(BEN, "o-1"), confirmed(BEN, "o-1"),
                ("expiry.order_issued", {"device_id": BEN, "order_id": "o-2",
                                         "reason": "consent_revoked", "thread_id": THREAD}))
    (ben,) = [c for c in (await FilingService._report(conn, IMAGE)).copies if c.device_id == BEN]
    assert (ben.status, ben.order_id, ben.order_reason, ben.order_issued_at) == (
        "ordered", "o-2", "consent_revoked", minute(4))


async def test_an_image_never_filed_reports_when_it_was_found_unfiled(
        conn: asyncpg.Connection) -> None:
    await trail(conn, shared(), ("attachment.not_filed", {}))
    report = await FilingService._report(conn, IMAGE)
    assert (report.filed_at, report.not_filed_at, report.gateway_device_id) == (
        None, minute(1), None)
    assert [(c.device_id, c.status) for c in report.copies] == [(SENDER, "held")]


async def test_an_image_with_no_trail_has_no_copies(conn: asyncpg.Connection) -> None:
    report = await FilingService._report(conn, str(uuid.uuid4()))
    assert report.copies == [] and report.thread_id is None
