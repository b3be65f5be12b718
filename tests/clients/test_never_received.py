"""The sender is told when a person never received an image before its copies expired
(docs/PROTOCOL.md §15 "Never received", CLINICAL_SAFETY.md §7), end to end against a real
relay, a real record gateway filing into a real Orthanc, and the relay's expiry in simulated
time: the on-call specialist's only device is offline from before the image is filed until
after the copies expire, so it never receives it; the intern's devices are told, by name, with
the record reference, and the CLI and the desktop say it in a sentence a clinician acts on. A
person one of whose devices received the image saw it: the sender is not told of them. Also:
the CLI's line of a shredded image names where the record keeps it, and a filed refusal's line
names a FHIR Consent only when a FHIR server took one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clients.clinician.consenting import say_filed
from clients.clinician.reading import describe, image_line, not_received_lines, receipt_line
from clients.desktop.views import message_json
from clients.gateway.fhir import FhirClient, FhirSettings
from clients.sdk import imaging
from clients.sdk.client import (
    ExpiredEvent,
    FiledEvent,
    ImageEvent,
    NotReceivedEvent,
    ReceiptEvent,
)
from clients.sdk.consent import register_consent
from clients.sdk.memory import Memory
from protocol.model import Priority
from tests.clients.test_filing_journey import ORTHO, journey, next_event, record
from tests.clients.test_record_consent import refusal
from tests.clients.test_unread_own_devices import link_desktop
from tests.clinician_world import Clinician, enrol_clinician, run_cli, use_cli_profiles
from tests.consent_world import count, xray_png
from tests.fhir_server import FhirServer
from tests.filing_world import (
    admin_copies,
    copies_json,
    direct_care_consent,
    enrol_gateway,
    expiry_service,
    later,
    orthanc_gateway,
)
from tests.helpers import eventually, seconds
from tests.identity_world import World
from tests.orthanc import OrthancServer

# Attachments in 64 KiB chunks, as the image and filing journeys need.
pytestmark = pytest.mark.world(attachment_chunk_bytes=64 * 1024)


@contextlib.asynccontextmanager
async def online(world: World, tmp_path: Path, orthanc: OrthancServer,
                 *clinicians: Clinician) -> AsyncIterator[None]:
    """The record gateway (filing into Orthanc) and these clinicians' devices connected; the
    others stay offline until the test starts them."""
    gw, pacs = orthanc_gateway(await enrol_gateway(world, tmp_path), orthanc)
    try:
        for c in clinicians:
            await c.client.start(wait_connected=seconds(10))
        await gw.start()
        yield
    finally:
        await gw.stop()
        await pacs.aclose()
        for c in clinicians:
            await c.client.close()


async def send_and_file(intern: Clinician, users: list[str], seed: int
                        ) -> tuple[str, str, str, FiledEvent]:
    """The intern sends a wrist x-ray (subject "Wrist") to ``users`` and the record gateway,
    which files it: (thread id, message id, attachment id, the relay's filed notice), once
    the intern's device knows the record reference from the gateway's receipt."""
    events = intern.client.subscribe()
    prepared = imaging.prepare_image(xray_png(320, 240, seed=seed))
    thread = await intern.client.create_thread(users=users, priority=Priority.URGENT)
    token = await direct_care_consent(intern, prepared.image.data, roles=[ORTHO])
    sent = await intern.client.send_image(thread.thread_id, prepared.image,
                                          consent_token=token, record=record(),
                                          text="Wrist AP, displaced?", subject="Wrist")
    (aid,) = sent.attachment_ids
    filed = await next_event(events, FiledEvent, lambda e: e.attachment_id == aid, timeout=60)

    async def reference_known() -> bool:
        return bool(intern.client.image_status(aid).record_ref)
    await eventually(reference_known, timeout=30)
    return thread.thread_id, sent.message_id, aid, filed


async def expire(world: World, filed: FiledEvent) -> None:
    """The grace period passes (simulated time): the relay's sweep orders every copy shredded."""
    async with expiry_service(world) as svc:
        await svc.sweep(now=later(filed.expires_at - time.time() + 1))


async def test_the_sender_is_told_when_the_offline_specialist_never_received_the_filed_image(
        world: World, tmp_path: Path, orthanc: OrthancServer,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    home = use_cli_profiles(monkeypatch, tmp_path)  # the specialist's `lightbox inbox`
    intern = await enrol_clinician(world, tmp_path, "intern")
    ortho = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,),  # offline
                                  vault_dir=home / "ortho")
    async with online(world, tmp_path, orthanc, intern):
        events = intern.client.subscribe()
        thread_id, message_id, aid, filed = await send_and_file(intern, [ortho.user_id], 31)
        ref = intern.client.image_status(aid).record_ref
        assert ref

        await expire(world, filed)
        told = await next_event(events, NotReceivedEvent, lambda e: e.attachment_id == aid)
        assert (told.user_id, told.message_id, told.thread_id, told.reason) == (
            ortho.user_id, message_id, thread_id, "filed")
        assert (told.display_name, told.record_ref) == ("Dr Ortho", ref)
        sentence = (f'Dr Ortho never received the image of consult "Wrist" on any device '
                    f"before its copies expired: it was filed to the patient's record ({ref}). "
                    "Phone or page them.")
        assert describe(intern.client, told) == f"    {sentence}"  # lightbox watch
        assert not_received_lines(intern.client, thread_id) == [sentence]  # lightbox threads
        view = intern.client.view(intern.vault.message(message_id))
        assert message_json(intern.client, view)["not_received"] == [sentence]  # the desktop
        # Kept in the vault: a restart (a fresh read of its notes) still knows it.
        (kept,) = Memory(intern.vault, lambda: intern.user_id).not_received(message_id)
        assert (kept.user_id, kept.record_ref, kept.display_name) == (
            ortho.user_id, ref, "Dr Ortho")
        # The intern's own copy is shredded; the CLI's line names where the record has it.
        async def shredded() -> bool:
            return intern.client.image_status(aid).state == "shredded"
        await eventually(shredded, timeout=20)
        assert image_line(intern.client.image_status(aid)) == \
            f"image {aid[:8]}: shredded - in the record: {ref}"

        # The specialist's device comes back: the order comes before the delivery, so it
        # never receives the image, and its line too says where the record has it.
        ortho_events = ortho.client.subscribe()
        try:
            await ortho.client.start(wait_connected=seconds(10))
            await ortho.client.wait_synced(seconds(15))
            await next_event(ortho_events, ExpiredEvent, lambda e: e.attachment_id == aid)

            async def ortho_knows_reference() -> bool:
                return ortho.client.image_status(aid).record_ref == ref
            await eventually(ortho_knows_reference, timeout=20)
            assert image_line(ortho.client.image_status(aid)) == \
                f"image {aid[:8]}: shredded - in the record: {ref}"

            async def ortho_confirmed() -> bool:
                return await count(world, "SELECT count(*) FROM expiry_orders WHERE "
                                   "device_id = $1 AND confirmed_at IS NOT NULL",
                                   uuid.UUID(ortho.client.device_id)) == 1
            await eventually(ortho_confirmed, timeout=20)
            # The intern's watch hears the specialist's device sign a "delivered" of the
            # message it now holds without its image: said so, after "never received".
            receipt = await next_event(events, ReceiptEvent, lambda e: (
                e.user_id, e.kind) == (ortho.user_id, "delivered"))
            assert receipt_line(intern.client, receipt) == (
                f"    Dr Ortho: delivered ({message_id[:8]}), the message only: its image had "
                "expired before it reached them")
        finally:
            await ortho.client.close()
        # The specialist's `lightbox inbox` says what became of the image they never saw.
        ortho_device = ortho.client.device_id
        ortho.vault.lock()
        rc, out, err = await run_cli("--profile", "ortho", "inbox")
        assert rc == 0, out + err
        assert f"    image {aid[:8]}: filed to the patient's record before it reached this " \
               f"device, so never shown here - in the record: {ref}\n" in out, out
        assert "shredded" not in out, out
    # What lightbox-admin copies says agrees: the specialist's device never received it.
    (report,) = copies_json(*await admin_copies(world, tmp_path / "admin-home", monkeypatch,
                                                capsys, "--attachment", aid, "--json"))
    statuses = {c["device_id"]: c["status"] for c in report["copies"]}
    assert statuses[ortho_device] == "never_received"


async def test_a_person_one_of_whose_devices_received_the_image_is_not_told_of(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    """The specialist's desktop was offline throughout and their phone (linked from it, a
    second device of the same person) received the image: they saw it, so the intern is not
    told of them; a colleague whose only device was offline throughout is told of."""
    intern = await enrol_clinician(world, tmp_path, "intern")
    desk = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,))  # offline
    phone = await link_desktop(world, desk, tmp_path / "ortho-phone")
    colleague = await enrol_clinician(world, tmp_path, "colleague", roles=(ORTHO,))  # offline
    async with online(world, tmp_path, orthanc, intern):
        phone_events = phone.subscribe()
        await phone.start(wait_connected=seconds(10))
        try:
            events = intern.client.subscribe()
            _, message_id, aid, filed = await send_and_file(
                intern, [desk.user_id, colleague.user_id], 32)
            await next_event(phone_events, ImageEvent,
                             lambda e: e.attachment_id == aid and e.status == "stored")
        finally:
            await phone.close()
        # The specialist's desktop was sent it too, and never fetched it.
        assert await count(world, "SELECT count(*) FROM attachment_access WHERE device_id = $1 "
                           "AND fetched_at IS NULL", uuid.UUID(desk.client.device_id)) == 1

        await expire(world, filed)
        told = await next_event(events, NotReceivedEvent, lambda e: e.attachment_id == aid)
        assert (told.user_id, told.display_name) == (colleague.user_id, "Dr Colleague")
        await intern.client.wait_synced(seconds(15))
        await asyncio.sleep(0.5)  # anything else queued for the intern has arrived by now
        assert [t.user_id for t in intern.client.view(intern.vault.message(message_id))
                .not_received] == [colleague.user_id]
        # The relay told the intern of the colleague only: nothing of the specialist.
        assert await count(world, "SELECT count(*) FROM audit_log WHERE event = "
                           "'attachment.not_received' AND subject_id = $1", aid) == 1


@pytest.mark.parametrize("with_fhir", [False, True], ids=["no_fhir_server", "fhir_server"])
async def test_a_filed_refusal_names_a_fhir_consent_only_where_one_was_filed(
        world: World, tmp_path: Path, orthanc: OrthancServer,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
        request: pytest.FixtureRequest, with_fhir: bool) -> None:
    caplog.set_level(logging.INFO, logger="lightbox.gateway")
    shown = imaging.prepare_image(xray_png(320, 240, seed=33)).image
    async with contextlib.AsyncExitStack() as stack:
        fhir = None
        if with_fhir:
            server: FhirServer = request.getfixturevalue("fhir_server")
            fhir = await stack.enter_async_context(FhirClient(FhirSettings(
                url=server.base_url, token=server.token)))
        intern, _ortho, _gw = await stack.enter_async_context(
            journey(world, tmp_path, orthanc, fhir=fhir))
        token, _ = refusal(intern.vault.state, shown.data)
        await register_consent(intern.client.relay, token)
        sent, filed = await intern.client.file_consent(token, record("LBX-TEST-REFUSED"),
                                                       wait=60)
        assert filed is not None
        capsys.readouterr()
        say_filed(sent.message_id, filed)
        line = capsys.readouterr().out.strip()

        def gateway_lines() -> list[str]:  # logged once the receipt is on its way
            return [r.getMessage() for r in caplog.records
                    if r.getMessage().startswith(f"filed consent {filed.consent_id}")]

        async def gateway_logged() -> bool:
            return bool(gateway_lines())
        await eventually(gateway_logged, timeout=20)
    (logged,) = gateway_lines()
    form = f"consent form in study {filed.study_instance_uid}"
    assert logged.endswith(
        ": the consent form and the FHIR Consent on the FHIR server, receipt sealed to the "
        "thread" if with_fhir else ": the consent form (no FHIR server: the FHIR Consent is "
        "only inside the form), receipt sealed to the thread")
    if with_fhir:
        (location,) = [d.location for d in filed.documents if d.kind == "fhir_consent"]
        assert location.startswith(f"{server.base_url}/Consent/")
        assert line == ("filed in the patient's record by the record gateway: "
                        f"{form}, FHIR Consent at {location}")
    else:
        assert line == ("filed in the patient's record by the record gateway: "
                        f"{form}, no FHIR server is configured: the FHIR Consent is only "
                        "inside the form")
        assert "sha256" not in line
