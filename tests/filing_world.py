"""Helpers for the filing and expiry tests: a record-gateway device (a service account with the
record_gateway role and a gateway device), an image shared under consent to a specialist and
the gateway, signed filing statements, the relay's expiry service driven in simulated time
(its own database pool, with an injected clock), a registered direct-care consent for an SDK
client, and ``lightbox-admin copies`` run as IT runs it."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from clients.admin import cli as admin_cli
from clients.gateway.app import GatewayConfig, RecordGateway
from clients.gateway.fhir import FhirClient
from clients.gateway.pacs import PacsClient, PacsSettings
from clients.sdk import attachments as sdk_attachments
from clients.sdk.consent import ConsentCapture, capture_consent, image_hash, register_consent
from clients.sdk.socket import RelaySocket
from protocol import statements
from protocol.body import Body, CaptureKind, RecordData, Sex, encode_body
from protocol.certs import AccountKind
from protocol.consent import ConsentBasis, ConsentDecision
from protocol.frames import Frame
from protocol.model import DeviceKind, Purpose, SealedMessage
from server.blobs import PostgresBlobStore
from server.db import Database
from server.expiry import ExpiryPolicy, FilingService
from tests.clinician_world import Clinician, enrol_clinician
from tests.consent_world import BIRTH_DATE, MRN, PATIENT_NAME, consent, sdk, seal_with
from tests.helpers import seconds
from tests.identity_world import PASSWORD, World
from tests.orthanc import OrthancServer
from tests.relay_world import Peer, with_signed_prekey

GATEWAY_ROLE = "record_gateway"


async def enrol_gateway(world: World, tmp_path: Path, login: str = "gateway") -> Clinician:
    """The organisation's record gateway as an SDK client: the service account ``login`` with
    the record_gateway role and one gateway device (not started)."""
    user = world.org.user(login, roles=(GATEWAY_ROLE,), display_name="Gateway",
                          account_kind=AccountKind.SERVICE)
    return await enrol_clinician(world, tmp_path, login, kind=DeviceKind.GATEWAY, user=user)


def orthanc_gateway(gateway: Clinician, orthanc: OrthancServer, *,
                    config: GatewayConfig | None = None,
                    fhir: FhirClient | None = None, clock: Callable[[], float] = time.time,
                    password: bool = True, ws_url: str | None = None
                    ) -> tuple[RecordGateway, PacsClient]:
    """A record gateway (not started) filing into the test's Orthanc with quick retries, and
    its PACS client: the caller stops the one and closes the other. ``clock``: the gateway's
    (``world.clock`` to see the relay's simulated time pass); ``password=False``: a gateway
    that cannot log in again by itself; ``ws_url``: its relay connection's address, when not
    the one of the relay its device state names."""
    pacs = PacsClient(PacsSettings(url=orthanc.dicomweb_url, username=orthanc.username,
                                   password=orthanc.password, timeout=seconds(5)))
    gw = RecordGateway(gateway.vault, pacs, password=PASSWORD if password else None,
                       backoff_base=0.05, backoff_max=0.5,
                       config=config or GatewayConfig(retry_base=0.1, retry_max=0.5),
                       fhir=fhir, clock=clock, ws_url=ws_url)
    return gw, pacs


async def gateway_peer(world: World, login: str = "record-gateway") -> Peer:
    """A record gateway: service account, gateway device, kept signed prekey."""
    user = world.org.user(login, roles=(GATEWAY_ROLE,), display_name="Record Gateway",
                          account_kind=AccountKind.SERVICE)
    return await with_signed_prekey(world, await world.onboard(user, DeviceKind.GATEWAY))


def record(capture: str = "film") -> RecordData:
    return RecordData(patient_name=PATIENT_NAME, patient_id=MRN, issuer_of_patient_id="LBX",
                      birth_date=BIRTH_DATE, sex=Sex.FEMALE, accession_number="ACC42",
                      anatomic_region="Wrist", study_description="Wrist x-ray photo",
                      capture=CaptureKind(capture))


@contextlib.asynccontextmanager
async def expiry_service(world: World, *, grace: int = 900,
                         hard_limit: int = 72 * 3600) -> AsyncIterator[FilingService]:
    """The relay's expiry service on the test's own loop, for sweeps in simulated time."""
    db = Database(world.dsn, min_size=1, max_size=2)
    await db.open()
    try:
        yield FilingService(db=db, blobs=PostgresBlobStore(db), trust=world.relay.relay.trust,
                            policy=ExpiryPolicy(grace=grace, hard_limit=hard_limit))
    finally:
        await db.close()


def later(seconds_from_now: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds_from_now)


class Shared(msgspec.Struct):
    """An image the intern uploaded, with its consent and the sealed body to send."""

    attachment_id: str
    consent_id: str
    image: bytes
    body: bytes
    key: bytes


async def upload_image(world: World, sender: Peer, image: bytes, *, roles: tuple[str, ...],
                       capture: str = "film", text: str = "Wrist, please review") -> Shared:
    """Consent captured and registered, image encrypted and uploaded, body sealed-ready."""
    token, cid = consent(world, sender, [image], roles=roles)
    http = await sdk(world, sender)
    try:
        await http.register_consent(token)
        enc = await sdk_attachments.encrypt(image)
        aid = await sdk_attachments.upload(http, enc.ciphertext)
    finally:
        await http.aclose()
    body = encode_body(Body(text=text, attachments=[enc.descriptor(aid, "image/png")],
                            consent_token=token, record=record(capture)))
    return Shared(attachment_id=aid, consent_id=cid, image=image, body=body, key=enc.key)


def image_message(sender: Peer, thread_id: str, recipients: list[Peer], shared: Shared
                  ) -> SealedMessage:
    return seal_with(sender, thread_id, recipients, shared.body, consent_id=shared.consent_id,
                     attachment_ids=[shared.attachment_id])


def filing_statement(signer: Peer, *, attachment_id: str, message_id: str, thread_id: str,
                     device_id: str | None = None, receipt: bytes = b"receipt") -> str:
    body = statements.FilingStatement(
        v=1, statement_id=str(uuid.uuid4()), device_id=device_id or signer.device_id,
        attachment_id=attachment_id, message_id=message_id, thread_id=thread_id,
        filed_at=int(time.time()), receipt_sha256=hashlib.sha256(receipt).digest())
    return statements.issue_filing_statement(body, signer.device.keys.signing)


def confirmation(signer: Peer, *, attachment_id: str, order_id: str) -> str:
    return statements.issue_expiry_confirmation(statements.ExpiryConfirmation(
        v=1, device_id=signer.device_id, attachment_id=attachment_id, order_id=order_id,
        shredded_at=int(time.time())), signer.device.keys.signing)


async def next_of(sock: RelaySocket, kind: type[Any], *, timeout: float = 10.0,
                  match: Any = lambda f: True) -> Any:
    """The next frame of ``kind`` (others are skipped)."""
    while True:
        frame: Frame = await sock.next_event(seconds(timeout))
        if isinstance(frame, kind) and match(frame):
            return frame


async def direct_care_consent(sender: Clinician, image: bytes, *, roles: list[str],
                              users: list[str] | None = None) -> str:
    """The patient's agreement (treatment attestation) to share ``image`` for direct care with
    ``roles`` (and ``users``), captured on the sender's device and registered with the relay;
    the token."""
    token, _ = capture_consent(sender.vault.state, ConsentCapture(
        purposes=[Purpose.DIRECT_CARE], images=[image_hash(image)],
        decision=ConsentDecision.AGREED, basis=ConsentBasis.TREATMENT_ATTESTATION,
        recipient_roles=roles, recipient_users=users or [], permanence_statement_shown=True,
        no_effect_on_care_statement_shown=True))
    await register_consent(sender.client.relay, token)
    return token


async def admin_copies(world: World, home: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``lightbox-admin copies ARGS`` as IT runs it against the relay: (exit code, stdout)."""
    monkeypatch.setenv("LIGHTBOX_SERVER", world.relay.base_url)
    monkeypatch.setenv("LIGHTBOX_ADMIN_TOKEN", world.admin_token)
    monkeypatch.setenv("LIGHTBOX_HOME", str(home))
    rc = await asyncio.to_thread(admin_cli.main, ["copies", *args])
    return rc, capsys.readouterr().out


def copies_json(rc: int, out: str) -> list[dict[str, Any]]:
    """The reports of ``copies --json`` (after checking it succeeded)."""
    assert rc == 0, out
    reports: list[dict[str, Any]] = json.loads(out)["attachments"]
    return reports
