"""clients/sdk/notices.py, the relay's notices other than deliveries, handled directly by an
(unstarted) SDK client's :class:`Notices` against a real relay (``world``), with an injected
clock: every notice is at-least-once, so a receipt or an escalation step is told once; a
forged or misdirected receipt is ignored; a notice that cannot be handled is told as an error
status, never raised (and a wipe order the organisation did not sign destroys nothing); a
consent is asked about at most once a minute."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clients.sdk.client import LightboxClient
from clients.sdk.consent import ConsentCapture, capture_consent, image_hash
from clients.sdk.events import ClientEvent, EscalationEvent, ReceiptEvent, StatusEvent
from protocol import statements
from protocol.consent import ConsentBasis, ConsentDecision
from protocol.errors import ErrorCode
from protocol.frames import Error, EscalationKind, EscalationNotice, ReceiptNotice, WipeOrder
from protocol.keys import OrganisationKey
from protocol.model import Purpose
from tests.clinician_world import Clinician, enrol_clinician
from tests.identity_world import PASSWORD, Org, World


class Clock:
    """The time the client under test reads; a test moves it."""

    def __init__(self) -> None:
        # From the real time when the test starts: the relay dates tokens and the test's
        # certificates by the real clock (a time read at import would be minutes before them
        # in a long run).
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def pair(world: World, tmp_path: Path, clock: Clock
               ) -> AsyncIterator[tuple[LightboxClient, Clinician]]:
    """The intern's client (its notices under test, on the injected clock) and a consultant."""
    intern = await enrol_clinician(world, tmp_path, "intern")
    consultant = await enrol_clinician(world, tmp_path, "consultant")
    client = LightboxClient(intern.vault, intern.vault, password=PASSWORD, clock=clock)
    try:
        await client.session.ensure_login()
        yield client, consultant
    finally:
        await client.relay.aclose()
        await intern.client.relay.aclose()
        await consultant.client.relay.aclose()


def _drain(queue: asyncio.Queue[ClientEvent]) -> list[ClientEvent]:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


def _receipt(by: Clinician, message_id: str, *, signed_for: str | None = None,
             signer: Clinician | None = None) -> ReceiptNotice:
    """The relay's notice of ``by``'s read receipt of ``message_id``; the statement inside
    is signed by ``signer``'s device (default ``by``'s) for ``signed_for`` (default the same
    message)."""
    state = by.vault.state
    at = int(time.time())
    statement = statements.issue_receipt_statement(statements.ReceiptStatement(
        v=statements.STATEMENT_VERSION, device_id=state.device_id,
        message_id=signed_for or message_id, thread_id=str(uuid.uuid4()),
        kind=statements.ReceiptKind.READ, at=at),
        (signer or by).vault.state.device_keys().signing)
    return ReceiptNotice(message_id=message_id, device_id=state.device_id,
                         user_id=state.user_id, kind=statements.ReceiptKind.READ, at=at,
                         statement=statement)


async def test_a_redelivered_receipt_is_told_once(
        pair: tuple[LightboxClient, Clinician]) -> None:
    client, consultant = pair
    events = client.hub.subscribe()
    notice = _receipt(consultant, str(uuid.uuid4()))
    await client.notices.handle(notice)
    await client.notices.handle(notice)
    [receipt] = _drain(events)
    assert isinstance(receipt, ReceiptEvent)
    assert (receipt.message_id, receipt.device_id, receipt.kind, receipt.display_name) == (
        notice.message_id, consultant.client.device_id, "read", "Dr Consultant")


async def test_a_receipt_signed_by_another_device_is_ignored(
        pair: tuple[LightboxClient, Clinician], world: World, tmp_path: Path) -> None:
    client, consultant = pair
    other = await enrol_clinician(world, tmp_path, "other")
    events = client.hub.subscribe()
    try:
        await client.notices.handle(_receipt(consultant, str(uuid.uuid4()), signer=other))
    finally:
        await other.client.relay.aclose()
    assert _drain(events) == []


async def test_a_receipt_whose_statement_names_another_message_is_ignored(
        pair: tuple[LightboxClient, Clinician]) -> None:
    client, consultant = pair
    events = client.hub.subscribe()
    await client.notices.handle(_receipt(consultant, str(uuid.uuid4()),
                                         signed_for=str(uuid.uuid4())))
    assert _drain(events) == []


async def test_an_escalation_step_is_told_once(pair: tuple[LightboxClient, Clinician]) -> None:
    client, consultant = pair
    events = client.hub.subscribe()
    at = int(time.time())
    notice = EscalationNotice(thread_id=str(uuid.uuid4()), message_id=str(uuid.uuid4()), step=1,
                              level=2, user_id=consultant.user_id, at=at,
                              kind=EscalationKind.RELEASED)
    await client.notices.handle(notice)
    await client.notices.handle(notice)
    assert _drain(events) == [EscalationEvent(notice.thread_id, notice.message_id, "released",
                                              1, 2, consultant.user_id, at)]


async def test_a_relay_error_is_told_as_an_error_status(
        pair: tuple[LightboxClient, Clinician]) -> None:
    client, _ = pair
    events = client.hub.subscribe()
    await client.notices.on_frame(Error(code=ErrorCode.RATE_LIMITED, detail="slow down"))
    assert _drain(events) == [StatusEvent("error", "rate_limited: slow down")]


async def test_a_wipe_order_the_organisation_did_not_sign_destroys_nothing(
        pair: tuple[LightboxClient, Clinician], world: World) -> None:
    client, _ = pair
    state = client.store.state
    forger = Org(world.org.org_id, OrganisationKey.generate())
    events = client.hub.subscribe()
    await client.notices.on_frame(WipeOrder(
        order_id=str(uuid.uuid4()), issued_at=int(time.time()),
        revocation=forger.revocation_list(9, devices=(state.device_id,), wipe=True)))
    assert _drain(events) == [StatusEvent(
        "error", "WipeOrder: the wipe order does not carry a valid organisation-signed list")]
    assert client.vault.directory.exists()
    assert client.store.state.device_id == state.device_id


async def test_a_consent_is_asked_about_at_most_once_a_minute(
        pair: tuple[LightboxClient, Clinician], clock: Clock) -> None:
    client, _ = pair
    token, claims = capture_consent(client.store.state, ConsentCapture(
        purposes=[Purpose.DIRECT_CARE], images=[image_hash(b"film")],
        decision=ConsentDecision.AGREED, basis=ConsentBasis.TREATMENT_ATTESTATION,
        permanence_statement_shown=True, no_effect_on_care_statement_shown=True))
    await client.relay.register_consent(token)
    assert await client.notices.refresh_consents([claims.jti]) == {}
    revoked = await client.relay.revoke_consent(claims.jti, "patient asked")
    clock.now += 59
    assert await client.notices.refresh_consents([claims.jti, claims.jti]) == {}  # not asked
    clock.now += 1
    withdrawn = await client.notices.refresh_consents([claims.jti])
    assert list(withdrawn) == [claims.jti]
    assert withdrawn[claims.jti] == revoked.revoked_at
    assert client.vault.consent_withdrawals() == withdrawn  # remembered


async def test_an_unknown_consent_changes_nothing(
        pair: tuple[LightboxClient, Clinician]) -> None:
    client, _ = pair
    assert await client.notices.refresh_consents([str(uuid.uuid4())]) == {}
