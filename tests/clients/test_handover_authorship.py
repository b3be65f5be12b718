"""A consult handed over at a shift change is read as its author wrote it (docs/PROTOCOL.md
§14 ``handover_of``, §16.4; docs/CLINICAL_SAFETY.md "On-call handover"; HAZ-02 of
docs/HAZARD_LOG.md): the resealed copy is a new message signed by the resealing device at the
moment of the reseal, and its sealed body names the original's author and time. A reader that
holds the original checks the claim against it, and the copy's content too (HAZ-02 C20); one
that does not is told whose word it is. Real relay, real SDK clients, the CLI's lines
(clients/clinician/reading.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from clients.clinician.reading import print_message
from clients.clinician.shell import when
from clients.desktop.views import message_json
from clients.sdk.client import MessageEvent
from clients.sdk.handover import authorship, authorship_line
from clients.sdk.notices import RESEAL_WAIT
from clients.sdk.vault import VaultMessage
from protocol.attachments import AttachmentDescriptor
from protocol.body import Body, BurnedInIdentifiers, HandoverOf, IdentifierKind
from protocol.frames import ResealRequest
from protocol.model import Priority, Purpose
from tests.clients.test_client import _intern_and_specialist, _next_message
from tests.clients.test_expiry import _confirmed, _next, expired_before_handover
from tests.clinician_world import Clinician
from tests.filing_world import record
from tests.helpers import seconds
from tests.identity_world import World


@contextlib.asynccontextmanager
async def consult_held(world: World, tmp_path: Any) -> AsyncIterator[
        tuple[Clinician, Clinician, asyncio.Queue[Any], str, VaultMessage]]:
    """The intern's consult, held by the specialist: both clients, his events, the thread and
    his copy of the original."""
    async with _intern_and_specialist(world, tmp_path) as (intern, ortho):
        events = ortho.client.subscribe()
        thread = await intern.client.create_thread(users=[ortho.user_id])
        await intern.client.send_text(thread.thread_id, "Scaphoid tenderness, x-ray?")
        original = await asyncio.wait_for(_next_message(events), seconds(15))
        yield intern, ortho, events, thread.thread_id, original


async def test_a_resealed_consult_names_its_author_and_time_checked_against_the_original(
        world: World, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    async with consult_held(world, tmp_path) as (intern, ortho, events, thread_id, original):
        # the shift changes a quarter of an hour later: the intern's device reseals
        later = time.time() + 900
        intern.client.sender._clock = lambda: later  # the moment of the reseal
        await intern.client.notices.on_frame(ResealRequest(
            thread_id=thread_id, message_id=original.message_id,
            devices=[ortho.client.device_id], deadline=int(later) + 600))
        copy = await asyncio.wait_for(_next_message(events), seconds(15))
        body = ortho.client.body(copy)
        assert body is not None and isinstance(body.handover_of, HandoverOf)
        assert body.handover_of == HandoverOf(
            message_id=original.message_id, sender_user_id=intern.user_id,
            sender_device_id=intern.client.device_id, sent_at=int(original.sent_at))
        author = ortho.client.authorship(copy, body)
        assert (author.author_user_id, author.written_at) == (intern.user_id, original.sent_at)
        assert author.handed_over and author.confirmed and not author.contradicted
        assert author.resealed_at == copy.sent_at == int(later)

        capsys.readouterr()
        print_message(ortho.client, MessageEvent(copy, body))
        lines = capsys.readouterr().out.splitlines()
        name = ortho.client.display_name(intern.user_id)
        assert lines[0].startswith(f"[{when(original.sent_at)}] {name} in "), lines
        assert lines[1] == f"    handed over at the shift change on {when(later)}", lines
        # the desktop's page (clients/desktop/views.py): the author and time, and the handover
        page = message_json(ortho.client, ortho.client.view(copy))
        assert (page["sender"], page["sent_at"]) == (name, original.sent_at)
        assert page["handover"] == {"resealed_by": name, "resealed_at": int(later),
                                    "confirmed": True, "contradicted": False,
                                    "misclaimed": False, "altered": False, "by_author": True}


async def test_a_handover_claim_that_contradicts_the_original_held_is_shown_as_a_claim(
        world: World, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    async with consult_held(world, tmp_path) as (intern, ortho, events, thread_id, original):
        someone = str(uuid.uuid4())
        for claim in (  # the original's id, another author and an earlier time ...
                HandoverOf(message_id=original.message_id, sender_user_id=someone,
                           sender_device_id=str(uuid.uuid4()),
                           sent_at=int(original.sent_at) - 3600),
                # ... and a consult this device never held, written by someone else
                HandoverOf(message_id=str(uuid.uuid4()), sender_user_id=someone,
                           sender_device_id=str(uuid.uuid4()),
                           sent_at=int(original.sent_at) - 3600)):
            await intern.client.sender.send_body(
                thread_id, Body(text="Scaphoid tenderness, x-ray?", handover_of=claim),
                purpose=Purpose.DIRECT_CARE, priority=Priority.URGENT)
            copy = await asyncio.wait_for(_next_message(events), seconds(15))
            body = ortho.client.body(copy)
            assert body is not None
            author = ortho.client.authorship(copy, body)
            assert author.author_user_id == someone and not author.confirmed
            assert author.contradicted is (claim.message_id == original.message_id)

            capsys.readouterr()
            print_message(ortho.client, MessageEvent(copy, body))
            lines = capsys.readouterr().out.splitlines()
            by = ortho.client.display_name(intern.user_id)
            assert f"{ortho.client.display_name(someone)} (as handed over by {by}) in " \
                in lines[0], lines
            page = message_json(ortho.client, ortho.client.view(copy))
            assert page["sender"].endswith(f"(as handed over by {by})"), page["sender"]
            assert page["sent_at"] == claim.sent_at
            assert page["handover"]["contradicted"] is author.contradicted
            assert page["handover"]["confirmed"] is False
            if author.contradicted:
                assert "does NOT match the original on this device" in lines[1], lines
            else:
                assert lines[1].startswith(f"    as handed over by {by} at the shift change"), \
                    lines


def test_a_body_without_handover_of_encodes_as_before() -> None:
    """The field is optional and never written when absent: older readers, which refuse
    unknown fields, read every other body as they always did (docs/PROTOCOL.md §14)."""
    from protocol.body import decode_body, encode_body

    plain = encode_body(Body(text="Scaphoid tenderness, x-ray?"))
    assert b"handover_of" not in plain
    assert isinstance(decode_body(plain).handover_of, msgspec.UnsetType)


async def test_a_handover_asked_of_every_holder_is_sealed_again_once(
        world: World, tmp_path: Any) -> None:
    """The relay asks every device that holds the consult (docs/PROTOCOL.md §16.4): the author's
    device answers at once and the specialist's, another holder, sees the copy arrive during
    its wait and does not seal one of its own; asked alone, the specialist's answers after its
    wait. One copy each time, not one per holder."""
    async with consult_held(world, tmp_path) as (intern, ortho, events, thread_id, original):
        intern_events = intern.client.subscribe()
        request = ResealRequest(thread_id=thread_id, message_id=original.message_id,
                                devices=[ortho.client.device_id],
                                deadline=int(time.time()) + 600)
        await asyncio.gather(intern.client.notices.on_frame(request),
                             ortho.client.notices.on_frame(request))
        copy = await asyncio.wait_for(_next_message(events), seconds(15))
        assert copy.sender_device_id == intern.client.device_id
        await asyncio.sleep(RESEAL_WAIT[1] + 1)  # the specialist's wait is over
        copies = [m for m in ortho.client.vault.messages(thread_id)
                  if m.message_id != original.message_id]
        assert [m.message_id for m in copies] == [copy.message_id]
        while not intern_events.empty():  # nothing sealed again by the specialist either
            event = intern_events.get_nowait()
            assert not (isinstance(event, MessageEvent)
                        and event.message.sender_device_id == ortho.client.device_id), event

        # The author's device not asked (offline, say): the specialist's answers alone.
        await ortho.client.notices.on_frame(request)
        mine = await asyncio.wait_for(_next_message(intern_events), seconds(15))
        assert mine.sender_device_id == ortho.client.device_id
        body = intern.client.body(mine)
        assert body is not None and isinstance(body.handover_of, HandoverOf)
        assert body.handover_of.message_id == original.message_id


async def test_a_copy_whose_text_differs_from_the_original_held_is_not_shown_as_its_words(
        world: World, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """HAZ-02 C20: a copy naming the original rightly (author, device, time) but whose text is
    not the original's (a resealing device's bug, or a holder editing the consult as it seals
    it again) is not the author's words: the reader holding the original says so, and lists
    it on its own."""
    async with consult_held(world, tmp_path) as (intern, ortho, events, thread_id, original):
        claim = HandoverOf(message_id=original.message_id, sender_user_id=intern.user_id,
                           sender_device_id=intern.client.device_id,
                           sent_at=int(original.sent_at))
        await intern.client.sender.send_body(
            thread_id, Body(text="Scaphoid fine, no x-ray needed.", handover_of=claim),
            purpose=Purpose(original.purpose or "direct_care"),
            priority=Priority(original.priority))
        copy = await asyncio.wait_for(_next_message(events), seconds(15))
        body = ortho.client.body(copy)
        assert body is not None
        author = ortho.client.authorship(copy, body)
        assert author.altered and author.contradicted and not author.misclaimed
        assert not author.confirmed

        capsys.readouterr()
        print_message(ortho.client, MessageEvent(copy, body))
        lines = capsys.readouterr().out.splitlines()
        by = ortho.client.display_name(intern.user_id)
        assert f"{by} (as handed over by {by}) in " in lines[0], lines
        assert lines[1] == (f"    handed over at the shift change by {by}'s device on "
                            f"{when(copy.sent_at)}; WARNING: its content does NOT match the "
                            "original on this device"), lines
        page = message_json(ortho.client, ortho.client.view(copy))
        assert page["handover"]["altered"] is True and page["handover"]["confirmed"] is False
        assert [v.message.message_id for v in ortho.client.thread_messages(thread_id)] == [
            original.message_id, copy.message_id]


async def test_a_copy_handed_over_after_its_image_expired_keeps_its_record_and_is_confirmed(
        world: World, tmp_path: Any) -> None:
    """HAZ-02 C19 and C20: the image filed and every copy expired, the author's device seals
    the consult again with its text and patient data and no image; the night specialist, who
    holds the original (its image expired too), reads it as the author's words, confirmed."""
    async with expired_before_handover(world, tmp_path) as (
            intern, night, _, arrived, aid, original):
        await _confirmed(world, night.client.device_id, aid)
        await intern.client.notices.on_frame(ResealRequest(
            thread_id=original.message.thread_id, message_id=original.message.message_id,
            devices=[night.client.device_id], deadline=int(time.time()) + 600))
        copy = (await _next(arrived, MessageEvent)).message
        body = night.client.body(night.vault.message(copy.message_id))
        assert body is not None and body.attachments == [] and body.record == record()
        author = night.client.authorship(copy, body)
        assert author.confirmed and not author.contradicted and not author.altered
        assert author.written_at == original.message.sent_at


_AUTHOR, _DEVICE, _RESEALER = (str(uuid.uuid4()) for _ in range(3))
_IMAGES = [AttachmentDescriptor(attachment_id=str(uuid.uuid4()), key=bytes([n]) * 32,
                                sha256=bytes([n + 9]) * 32, size=1000 + n,
                                media_type="image/jpeg") for n in (1, 2)]
_ORIGINAL_BODY = Body(
    text="Wrist AP, scaphoid?", subject="Wrist", attachments=_IMAGES, record=record(),
    quality_warnings=["blur"], burned_in_identifiers=[BurnedInIdentifiers(
        attachment_id=_IMAGES[0].attachment_id, kinds=[IdentifierKind.NAME])])
_ORIGINAL = VaultMessage(message_id=str(uuid.uuid4()), thread_id=str(uuid.uuid4()),
                         sender_user_id=_AUTHOR, sender_device_id=_DEVICE, sent_at=1000.0,
                         body=_ORIGINAL_BODY.text, priority="urgent", purpose="direct_care")
_CLAIM = HandoverOf(message_id=_ORIGINAL.message_id, sender_user_id=_AUTHOR,
                    sender_device_id=_DEVICE, sent_at=1000)
_RESEALED = msgspec.structs.replace(_ORIGINAL_BODY, handover_of=_CLAIM)


@pytest.mark.parametrize(("copy", "header", "matches"), [
    (_RESEALED, {}, True),
    # the images expired on the resealing device: dropped, with their flags; the record kept
    (msgspec.structs.replace(_RESEALED, attachments=[], burned_in_identifiers=[]), {}, True),
    (msgspec.structs.replace(_RESEALED, attachments=_IMAGES[1:], burned_in_identifiers=[]),
     {}, True),
    (msgspec.structs.replace(_RESEALED, text="Wrist AP, no fracture."), {}, False),
    (msgspec.structs.replace(_RESEALED, subject="Ankle"), {}, False),
    (msgspec.structs.replace(_RESEALED, record=msgspec.structs.replace(
        record(), patient_id="OTHER-1")), {}, False),
    (msgspec.structs.replace(_RESEALED, record=None), {}, False),
    (msgspec.structs.replace(_RESEALED, quality_warnings=[]), {}, False),
    (msgspec.structs.replace(_RESEALED, burned_in_identifiers=[]), {}, False),  # image kept
    (msgspec.structs.replace(_RESEALED, attachments=_IMAGES[::-1]), {}, False),
    (msgspec.structs.replace(_RESEALED, attachments=[msgspec.structs.replace(
        _IMAGES[0], sha256=bytes(32)), _IMAGES[1]]), {}, False),  # another image, same id
    (msgspec.structs.replace(_RESEALED, reply_to=str(uuid.uuid4())), {}, False),
    (_RESEALED, {"priority": "routine"}, False),
    (_RESEALED, {"purpose": "external_consult"}, False),
], ids=["as-is", "images-expired", "one-image-expired", "text", "subject", "record",
        "record-dropped", "quality-warnings", "flag-dropped", "image-order", "image-swapped",
        "reply-to", "priority", "purpose"])
def test_a_copy_is_confirmed_only_with_what_a_reseal_changes(
        copy: Body, header: dict[str, str], matches: bool) -> None:
    """HAZ-02 C20 (clients/sdk/handover.py ``authorship``): the claim matching the original
    held, the copy is confirmed only when its content is the original's but for what a reseal
    changes (``handover_of``; images expired on the resealing device with their flags)."""
    sealed = VaultMessage(message_id=str(uuid.uuid4()), thread_id=_ORIGINAL.thread_id,
                          sender_user_id=_RESEALER, sender_device_id=str(uuid.uuid4()),
                          sent_at=2000.0, body=copy.text, priority=header.get("priority", "urgent"),
                          purpose=header.get("purpose", "direct_care"))
    held = {_ORIGINAL.message_id: (_ORIGINAL, _ORIGINAL_BODY)}
    author = authorship(sealed, copy, held.get)
    assert (author.confirmed, author.altered, author.contradicted) == (
        matches, not matches, not matches)
    assert not author.misclaimed
    # the original held but unreadable: nothing to match it with
    assert authorship(sealed, copy, {_ORIGINAL.message_id: (_ORIGINAL, None)}.get).altered


def test_a_copy_altered_and_misclaimed_is_told_in_one_line() -> None:
    copy = msgspec.structs.replace(_RESEALED, text="Wrist AP, no fracture.", handover_of=(
        msgspec.structs.replace(_CLAIM, sent_at=400)))
    sealed = VaultMessage(message_id=str(uuid.uuid4()), thread_id=_ORIGINAL.thread_id,
                          sender_user_id=_RESEALER, sender_device_id=str(uuid.uuid4()),
                          sent_at=2000.0, body=copy.text, priority="urgent",
                          purpose="direct_care")
    author = authorship(sealed, copy, {_ORIGINAL.message_id: (_ORIGINAL, _ORIGINAL_BODY)}.get)
    assert author.misclaimed and author.altered and author.contradicted
    assert authorship_line(author, {_AUTHOR: "Ada", _RESEALER: "Bo"}.__getitem__, str) == (
        "handed over at the shift change by Bo's device on 2000.0; WARNING: it says it was "
        "written by Ada at 400, which does NOT match the original on this device, nor does "
        "its content")
