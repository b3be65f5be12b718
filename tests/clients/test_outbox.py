"""The outbox in the vault (clients/sdk/vault.py, clients/sdk/client.py; docs/PROTOCOL.md §3.5
"Outbox"): a send is kept on the device from before it goes on the wire until the relay stored
it, so the phone can die at any moment and the message still arrives, exactly once.

The clinician's ``lightbox send`` runs as a real subprocess against the real relay and is
killed (SIGKILL, or Ctrl-C) at a point made deterministic without touching production code: the
test holds the thread's row lock in Postgres, so the relay's send batch waits on it
(``pg_stat_activity`` shows the wait) while the client waits for ``accepted``. Then:

* the lock is released, the relay commits, and the next start of the client resends the same
  bytes, answered as a duplicate: the recipient holds one copy;
* the relay is restarted before it committed: the next start sends it, once;
* the consent is withdrawn meanwhile: the resend is refused for good, removed and reported;
* an image whose upload had not started is uploaded on the next start, same message id.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.http11 import Request as WsRequest
from websockets.http11 import Response as WsResponse

from clients.sdk import attachments as sdk_attachments
from clients.sdk import imaging
from clients.sdk.client import (
    ClientEvent,
    ImageEvent,
    LightboxClient,
    MessageEvent,
    OutboxEvent,
    ReceiptEvent,
    StatusEvent,
)
from clients.sdk.consent import ConsentCapture, capture_consent, image_hash, register_consent
from clients.sdk.errors import RelayUnavailable
from clients.sdk.vault import OutboxImage, OutboxRecord, Vault, VaultLocked
from protocol.body import Body
from protocol.consent import ConsentBasis, ConsentDecision
from protocol.keys import CHEAP_PROFILE
from protocol.model import Purpose
from tests.clinician_world import (
    Clinician,
    enrol_clinician,
    lightbox_process,
    use_cli_profiles,
)
from tests.consent_world import count, xray_png
from tests.helpers import eventually, make_settings, running_relay, seconds
from tests.identity_world import PASSWORD, World, identity_world
from tests.servers import free_port

ORTHO = "orthopaedics_oncall"


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                ) -> AsyncIterator[World]:
    use_cli_profiles(monkeypatch, tmp_path)
    # A fixed port, so that a restarted relay is where the devices expect it.
    async with identity_world(db_dsn, tmp_path, port=free_port(),
                              attachment_chunk_bytes=64 * 1024) as w:
        yield w


async def lightbox(*argv: str) -> tuple[int, str, str]:
    """``lightbox ARGV`` as its own process, to the end."""
    proc = await lightbox_process(*argv)
    out, err = await asyncio.wait_for(proc.communicate(), seconds(90))
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def people(world: World, tmp_path: Path) -> tuple[str, str]:
    """An intern and the on-call orthopaedic specialist with CLI profiles, and a thread
    between them; returns (thread id, the specialist's user id)."""
    home = tmp_path / "home"
    intern = await enrol_clinician(world, tmp_path, "intern", vault_dir=home / "intern")
    ortho = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,),
                                  vault_dir=home / "ortho")
    await intern.client.ensure_login()
    thread = await intern.client.create_thread(users=[ortho.user_id])
    await intern.client.relay.aclose()
    intern.vault.lock()
    ortho.vault.lock()
    return thread.thread_id, ortho.user_id


def pending(tmp_path: Path, login: str = "intern") -> list[OutboxRecord]:
    """The outbox of a profile's vault, read the way the device reads it."""
    vault = Vault(tmp_path / "home" / login, kdf=CHEAP_PROFILE)
    vault.unlock(PASSWORD)
    try:
        return vault.outbox()
    finally:
        vault.lock()


def received(tmp_path: Path, thread_id: str, login: str = "ortho") -> list[str]:
    """The texts of the messages in a thread of a profile's vault."""
    vault = Vault(tmp_path / "home" / login, kdf=CHEAP_PROFILE)
    vault.unlock(PASSWORD)
    try:
        return [m.body for m in vault.messages(thread_id) if not m.outgoing]
    finally:
        vault.lock()


@contextlib.asynccontextmanager
async def relay_held(world: World, thread_id: str) -> AsyncIterator[asyncpg.Connection]:
    """Hold the thread's row lock: the relay's send batch waits on it until released."""
    conn = await world.db()
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute("SELECT 1 FROM threads WHERE thread_id = $1 FOR UPDATE",
                           uuid.UUID(thread_id))
        yield conn
    finally:
        with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError):
            await tx.rollback()
        await conn.close()


# A send batch waiting for a thread's lock: lock_and_read_batch, or lock_and_store_batch for a
# thread the relay has read before (server/store/batches.py).
SEND_BATCH = "lock_and_"


async def sends_waiting(world: World, needle: str = SEND_BATCH) -> int:
    return await count(world, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
                       "'Lock' AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
                       needle)


async def stored(world: World, message_id: str) -> int:
    return await count(world, "SELECT count(*) FROM messages WHERE message_id = $1",
                       uuid.UUID(message_id))


async def send_and_stop(world: World, thread_id: str, argv: Sequence[str], *,
                        sig: int, tmp_path: Path) -> tuple[OutboxRecord, str]:
    """Run ``lightbox send`` while the relay's acceptance is held, stop it with ``sig`` once
    the relay has the frame, and return the outbox record it left and its stderr."""
    proc = await lightbox_process("--profile", "intern", "send", "--thread", thread_id, *argv)
    try:
        await eventually(lambda: _has_waiting(world, proc), timeout=30)
        (record,) = pending(tmp_path)
        assert record.stage == "send" and record.sealed, record
        proc.send_signal(sig)
        _, err = await asyncio.wait_for(proc.communicate(), seconds(30))
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return record, err.decode()


async def _has_waiting(world: World, proc: asyncio.subprocess.Process,
                       needle: str = SEND_BATCH) -> bool:
    if proc.returncode is not None:
        assert proc.stderr is not None
        raise AssertionError(f"lightbox send ended: {(await proc.stderr.read()).decode()}")
    return await sends_waiting(world, needle) > 0


async def test_a_send_survives_kill_9_of_the_client_and_arrives_exactly_once(
        world: World, tmp_path: Path) -> None:
    thread_id, _ = await people(world, tmp_path)
    text = "Wrist, bed 4: displaced distal radius?"
    async with relay_held(world, thread_id):
        record, _ = await send_and_stop(world, thread_id, [text], sig=signal.SIGKILL,
                                        tmp_path=tmp_path)
    # The relay had the frame: released, it commits it, but the client never heard.
    await eventually(lambda: _is_stored(world, record.message_id), timeout=30)

    rc, out, err = await lightbox("--profile", "intern", "outbox")
    assert rc == 0, err
    assert record.message_id in out and "1 message waiting to be sent" in out
    assert text[:20] in out

    rc, out, err = await lightbox("--profile", "intern", "inbox")
    assert rc == 0, err
    assert f"message {record.message_id} (sent earlier from this device) is now stored" in out
    assert pending(tmp_path) == []
    assert await stored(world, record.message_id) == 1

    rc, out, err = await lightbox("--profile", "ortho", "inbox")
    assert rc == 0, err
    assert out.count(text) == 1 and "1 unread message\n" in out
    assert received(tmp_path, thread_id) == [text]
    rc, out, _ = await lightbox("--profile", "intern", "outbox")
    assert "0 messages waiting to be sent" in out


async def _is_stored(world: World, message_id: str) -> bool:
    return await stored(world, message_id) == 1


async def test_a_send_interrupted_before_the_relay_stored_it_is_sent_after_a_relay_restart(
        world: World, tmp_path: Path) -> None:
    """Ctrl-C while the relay has not answered: the user is told it will be sent again; the
    relay then restarts without having stored it, and the next start sends it, once."""
    thread_id, _ = await people(world, tmp_path)
    text = "Ankle, bay 2: Weber B?"
    async with relay_held(world, thread_id):
        record, err = await send_and_stop(world, thread_id, [text], sig=signal.SIGINT,
                                          tmp_path=tmp_path)
        assert "sent again the next time this device connects" in err, err
        assert "Traceback" not in err
        world.relay.stop()  # the relay goes down with the send still waiting on the lock
    assert await stored(world, record.message_id) == 0
    settings = make_settings(trusted_orgs_file=tmp_path / "trusted-orgs.json",
                             port=int(world.relay.base_url.rsplit(":", 1)[1]),
                             attachment_chunk_bytes=64 * 1024)
    async with running_relay(world.dsn, settings):
        rc, out, err = await lightbox("--profile", "intern", "inbox")
        assert rc == 0, err
        assert f"message {record.message_id} (sent earlier from this device) is now " \
               "stored" in out
        assert pending(tmp_path) == []
        rc, out, err = await lightbox("--profile", "ortho", "inbox")
        assert rc == 0, err
        assert out.count(text) == 1
    assert received(tmp_path, thread_id) == [text]
    assert await stored(world, record.message_id) == 1


async def test_a_pending_send_refused_for_good_is_removed_and_reported_not_retried(
        world: World, tmp_path: Path) -> None:
    """The patient withdraws the consent while an image send is pending: the resend is
    refused (consent_revoked), taken out of the outbox and reported; nothing arrives."""
    thread_id, _ = await people(world, tmp_path)
    film = tmp_path / "film.png"
    film.write_bytes(xray_png(900, 700))
    async with relay_held(world, thread_id):
        record, _ = await send_and_stop(
            world, thread_id, ["--to", f"role:{ORTHO}", "--image", str(film), "--send-anyway",
                               "--patient-agreed", "--patient-name", "Doe^Jane",
                               "--patient-id", "MRN123", "--statements-shown", "Scaphoid?"],
            sig=signal.SIGKILL, tmp_path=tmp_path)
        assert record.consent_id is not None and record.image is not None
        assert record.image.uploaded
        vault = Vault(tmp_path / "home" / "intern", kdf=CHEAP_PROFILE)
        vault.unlock(PASSWORD)
        client = LightboxClient(vault, vault, password=PASSWORD)
        try:
            await client.ensure_login()
            await client.relay.revoke_consent(record.consent_id)
        finally:
            await client.relay.aclose()
            vault.lock()
    rc, out, err = await lightbox("--profile", "intern", "inbox")
    assert rc == 0, out + err
    assert f"message {record.message_id} (sent earlier from this device) was NOT sent" in err
    assert "consent_revoked" in err and "removed from the outbox" in err
    assert pending(tmp_path) == []
    rc, out, err = await lightbox("--profile", "intern", "inbox")  # not tried again
    assert rc == 0 and record.message_id not in out + err
    assert await stored(world, record.message_id) == 0
    rc, out, _ = await lightbox("--profile", "ortho", "inbox")
    assert "0 unread messages" in out and received(tmp_path, thread_id) == []


async def test_an_image_send_killed_before_its_upload_began_is_uploaded_on_the_next_start(
        world: World, tmp_path: Path) -> None:
    """The relay's upload table is held: the phone dies with the image not uploaded; the next
    start uploads it and sends the message under the same id; the specialist gets the image."""
    thread_id, _ = await people(world, tmp_path)
    film = tmp_path / "film.png"
    film.write_bytes(xray_png(900, 700))
    conn = await world.db()
    tx = conn.transaction()
    await tx.start()
    await conn.execute("LOCK TABLE attachments IN EXCLUSIVE MODE")
    proc = await lightbox_process("--profile", "intern", "send", "--thread", thread_id, "--to",
                       f"role:{ORTHO}", "--image", str(film), "--send-anyway",
                       "--patient-name", "Doe^Jane", "--patient-id", "MRN123",
                       "--patient-agreed", "--statements-shown", "Scaphoid?")
    try:
        await eventually(lambda: _has_waiting(world, proc, "attachments"), timeout=30)
        (record,) = pending(tmp_path)
        assert record.stage == "upload" and record.image is not None
        assert record.image.attachment_id is None and not record.sealed
        proc.kill()
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await tx.rollback()
        await conn.close()
    rc, out, err = await lightbox("--profile", "intern", "inbox")
    assert rc == 0, err
    assert f"message {record.message_id} (sent earlier from this device) is now stored" in \
        out, out + err
    assert pending(tmp_path) == []
    rc, out, err = await lightbox("--profile", "ortho", "inbox")
    assert rc == 0, err
    assert out.count("Scaphoid?") == 1 and "stored" in out
    vault = Vault(tmp_path / "home" / "ortho", kdf=CHEAP_PROFILE)
    vault.unlock(PASSWORD)
    try:
        (message,) = [m for m in vault.messages(thread_id) if not m.outgoing]
        assert message.message_id == record.message_id
        (aid,) = message.attachment_ids
        assert vault.get_image(aid).info.media_type.startswith("image/")
    finally:
        vault.lock()


async def test_the_outbox_command_refuses_a_wrong_password_and_a_missing_profile(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    await people(world, tmp_path)
    rc, _, err = await lightbox("--profile", "nobody", "outbox")
    assert rc == 1 and "profile 'nobody' has no device" in err and "Traceback" not in err
    monkeypatch.setenv("LIGHTBOX_PASSWORD", "not the password at all")
    rc, _, err = await lightbox("--profile", "intern", "outbox")
    assert rc == 1 and "wrong password" in err and "Traceback" not in err


def test_the_outbox_is_sealed_in_the_vault_and_added_to_a_vault_made_before_it(
        tmp_path: Path) -> None:
    vault = Vault(tmp_path / "v", kdf=CHEAP_PROFILE)
    vault.create(PASSWORD)
    vault.lock()
    with sqlite3.connect(tmp_path / "v" / "vault.db") as db:  # a vault from before the outbox
        db.execute("DROP TABLE outbox")
    vault.unlock(PASSWORD)
    record = OutboxRecord(message_id=str(uuid.uuid4()), thread_id=str(uuid.uuid4()),
                          created_at=1.0, purpose="direct_care", priority="routine",
                          body=b"Doe^Jane MRN123 wrist", sealed=b"sealed-bytes", stage="send")
    vault.put_outbox(record)
    vault.put_outbox(msgspec.structs.replace(record, attempts=2))  # replaced, not added
    assert vault.outbox() == [msgspec.structs.replace(record, attempts=2)]
    raw = (tmp_path / "v" / "vault.db").read_bytes()
    assert b"Doe^Jane" not in raw and b"sealed-bytes" not in raw
    with pytest.raises(ValueError, match="outbox stage"):
        vault.put_outbox(msgspec.structs.replace(record, stage="posted"))
    assert vault.drop_outbox(record.message_id) and not vault.drop_outbox(record.message_id)
    assert vault.outbox() == []
    vault.lock()
    with pytest.raises(VaultLocked):
        vault.outbox()


async def test_an_image_upload_cut_off_halfway_resumes_at_the_relays_offset_on_the_next_start(
        world: World, tmp_path: Path) -> None:
    """The phone died with half the image uploaded: its outbox record names the upload. The
    next start asks the relay for the committed offset, uploads the rest into the same upload
    and sends the message under its original id; the specialist gets the image."""
    intern = await enrol_clinician(world, tmp_path, "intern")
    ortho = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,))
    prepared = imaging.prepare_image(xray_png(1600, 1200))
    token, claims = capture_consent(intern.vault.state, ConsentCapture(
        purposes=[Purpose.DIRECT_CARE], images=[image_hash(prepared.image.data)],
        decision=ConsentDecision.AGREED, basis=ConsentBasis.TREATMENT_ATTESTATION,
        recipient_roles=[ORTHO], permanence_statement_shown=True,
        no_effect_on_care_statement_shown=True))
    relay = intern.client.relay
    await intern.client.ensure_login()
    await register_consent(relay, token)
    thread = await intern.client.create_thread(roles=[ORTHO])
    # What the phone had done before it died: the record, the upload, the first chunk.
    encrypted = await sdk_attachments.encrypt(prepared.image.data)
    upload = await relay.create_upload(len(encrypted.ciphertext))
    half = await relay.put_chunk(upload.attachment_id, 0,
                                 encrypted.ciphertext[:upload.chunk_size])
    assert 0 < half.committed < len(encrypted.ciphertext)
    image = prepared.image
    record = OutboxRecord(
        message_id=str(uuid.uuid4()), thread_id=thread.thread_id, created_at=time.time(),
        purpose=Purpose.DIRECT_CARE.value, priority="routine", consent_id=claims.jti,
        body=msgspec.msgpack.encode(Body(text="Scaphoid?", consent_token=token)),
        stage="upload", image=OutboxImage(
            data=image.data, media_type=image.media_type, width=image.width,
            height=image.height, key=encrypted.key, sha256=encrypted.sha256,
            size=encrypted.size, ciphertext=encrypted.ciphertext,
            attachment_id=upload.attachment_id))
    intern.vault.put_outbox(record)

    await ortho.client.start(wait_connected=seconds(10))
    images = ortho.client.subscribe()
    outcome = intern.client.subscribe()
    try:
        await intern.client.start(wait_connected=seconds(10))
        await intern.client.wait_synced(seconds(30))
        async with asyncio.timeout(seconds(10)):
            while not isinstance(event := await outcome.get(), OutboxEvent):
                pass
        assert event.state == "sent" and event.message_id == record.message_id, event
        async with asyncio.timeout(seconds(30)):
            while not (isinstance(got := await images.get(), ImageEvent)
                       and got.status == "stored"):
                pass
        assert got.attachment_id == upload.attachment_id  # the same upload, resumed
        assert got.message_id == record.message_id
        assert ortho.client.image(upload.attachment_id) == image.data
        assert intern.vault.outbox() == []
        assert intern.vault.get_image(upload.attachment_id).data == image.data
    finally:
        await intern.client.close()
        await ortho.client.close()


@contextlib.asynccontextmanager
async def running_pair(world: World, tmp_path: Path, *, intern_vault: Path | None = None
                       ) -> AsyncIterator[tuple[Clinician, Clinician, str]]:
    """An intern and the orthopaedic specialist, both clients running (connected; closed
    after), and a thread between them: (intern, specialist, thread id)."""
    intern = await enrol_clinician(world, tmp_path, "intern", vault_dir=intern_vault)
    ortho = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,))
    await intern.client.start(wait_connected=seconds(10))
    await ortho.client.start(wait_connected=seconds(10))
    try:
        thread = await intern.client.create_thread(users=[ortho.user_id])
        await intern.client.threads()
        yield intern, ortho, thread.thread_id
    finally:
        await intern.client.close()
        await ortho.client.close()


async def kept_while_down(world: World, client: LightboxClient,
                          thread_id: str) -> OutboxRecord:
    """Stop the relay, then send from ``client``: it is told the send is kept; the record."""
    # Stopped off this loop: the clients on it answer the relay's closing handshake.
    await asyncio.to_thread(world.relay.stop)
    with pytest.raises(RelayUnavailable, match="sent again the next time this device "
                                               "connects"):
        await client.send_text(thread_id, "Bay 2: Weber B?", timeout=5)
    (kept,) = client.pending_sends()
    return kept


def relay_back(world: World, tmp_path: Path) -> contextlib.AbstractAsyncContextManager[Any]:
    """The relay stopped by :func:`kept_while_down`, started again where it was."""
    settings = make_settings(trusted_orgs_file=tmp_path / "trusted-orgs.json",
                             port=int(world.relay.base_url.rsplit(":", 1)[1]),
                             attachment_chunk_bytes=64 * 1024)
    return running_relay(world.dsn, settings)


async def test_a_send_kept_while_the_relay_was_down_goes_when_the_running_client_reconnects(
        world: World, tmp_path: Path) -> None:
    """A client that keeps running (the desktop, the record gateway) and sends while the relay
    is out of reach is told the send is kept; once it is connected again it sends it, without a
    restart (an ``OutboxEvent`` ``sent``), and the recipient holds it once."""
    async with running_pair(world, tmp_path) as (intern, ortho, thread_id):
        sent_events, arrivals = intern.client.subscribe(), ortho.client.subscribe()
        kept = await kept_while_down(world, intern.client, thread_id)
        async with relay_back(world, tmp_path):
            async with asyncio.timeout(seconds(60)):
                while True:
                    event = await sent_events.get()
                    if isinstance(event, OutboxEvent) and event.message_id == kept.message_id:
                        break
            assert event.state == "sent", event
            assert intern.client.pending_sends() == []
            async with asyncio.timeout(seconds(30)):
                while True:
                    got = await arrivals.get()
                    if isinstance(got, MessageEvent) and got.message.message_id == \
                            kept.message_id:
                        break
            assert got.body.text == "Bay 2: Weber B?"
            assert await stored(world, kept.message_id) == 1


def _second_process(vault_dir: Path) -> LightboxClient:
    """A client on its own handle of the same vault: a ``lightbox send`` run beside a running
    ``lightbox watch`` of the same profile."""
    vault = Vault(vault_dir, kdf=CHEAP_PROFILE)
    vault.unlock(PASSWORD)
    return LightboxClient(vault, vault, password=PASSWORD, backoff_base=0.05, backoff_max=0.5)


async def _next(queue: asyncio.Queue[ClientEvent], match: Callable[[ClientEvent], bool],
                timeout: float = 30) -> ClientEvent:
    """The first event ``match`` accepts; on a timeout, the failure lists what came instead."""
    heard: list[ClientEvent] = []
    try:
        async with asyncio.timeout(seconds(timeout)):
            while not match(event := await queue.get()):
                heard.append(event)
    except TimeoutError:
        raise AssertionError(f"not heard; heard instead: {heard}") from None
    return event


async def sent_once(world: World, kept: OutboxRecord, outcome: asyncio.Queue[ClientEvent],
                    arrivals: asyncio.Queue[ClientEvent]) -> None:
    """The kept send is told ``sent`` to its sender (``outcome``, not ``refused`` as a
    ``duplicate_conflict``), arrives at the recipient (``arrivals``), and is stored once."""
    sent = await _next(outcome, lambda e: isinstance(e, OutboxEvent)
                       and e.message_id == kept.message_id)
    assert isinstance(sent, OutboxEvent) and sent.state == "sent", sent
    got = await _next(arrivals, lambda e: isinstance(e, MessageEvent)
                      and e.message.message_id == kept.message_id)
    assert isinstance(got, MessageEvent) and got.body.text == "Bay 2: Weber B?"
    assert await stored(world, kept.message_id) == 1


async def test_a_running_client_leaves_a_send_another_process_kept_to_that_process(
        world: World, tmp_path: Path) -> None:
    """``lightbox watch`` runs while a ``lightbox send`` beside it, on the same vault, keeps a
    send because the relay is down. The relay comes back: the running client, connected again,
    sends only what it kept itself, so the other process's record stays in the outbox as it
    was (never sealed a second time, which the relay refused as ``duplicate_conflict``) and
    nothing of it is stored. The other process's own resend, at its next start, then delivers
    it: ``sent``, stored once, and the specialist holds one copy."""
    vault = tmp_path / "home" / "intern"
    async with running_pair(world, tmp_path, intern_vault=vault) as (intern, ortho, thread_id):
        watch = intern.client  # the running client
        arrivals = ortho.client.subscribe()
        beside, again = _second_process(vault), _second_process(vault)
        try:
            await beside.start()
            await beside.threads()
            kept = await kept_while_down(world, beside, thread_id)
            await beside.close()  # `lightbox send` ends; its record stays in the outbox
            heard = watch.subscribe()  # from here on: the relay is down until restarted below
            async with relay_back(world, tmp_path):
                await _next(heard, lambda e: isinstance(e, StatusEvent) and e.state == "connected")
                await watch.wait_synced(seconds(30))  # its resend on this connection has run
                assert watch.vault.outbox() == [kept]  # as the other process left it
                assert await stored(world, kept.message_id) == 0
                told = [heard.get_nowait() for _ in range(heard.qsize())]
                assert not [e for e in told if isinstance(e, OutboxEvent)], told

                outcome = again.subscribe()
                await again.start()  # the other process's next start: its own resend
                await sent_once(world, kept, outcome, arrivals)
                assert watch.vault.outbox() == []
                assert [m.message_id for m in ortho.vault.messages(thread_id)] == [
                    kept.message_id]
                assert not [e for e in [heard.get_nowait() for _ in range(heard.qsize())]
                            if isinstance(e, OutboxEvent)]  # the running client sent none of it
        finally:
            await again.close()
            again.vault.lock()
            beside.vault.lock()


async def receipts(world: World, message_id: str, kind: str) -> int:
    return await count(world, "SELECT count(*) FROM receipts WHERE message_id = $1 "
                       "AND kind = $2", uuid.UUID(message_id), kind)


async def test_a_read_receipt_made_while_the_relay_was_down_goes_at_the_next_start(
        world: World, tmp_path: Path) -> None:
    """The specialist reads a consult while the relay is out of reach, and Lightbox is closed
    before it is back. The signed ``read`` receipt is kept in the vault until it has gone: the
    next start sends it, and the intern learns the consult was read."""
    async with running_pair(world, tmp_path) as (intern, ortho, thread_id):
        arrivals = ortho.client.subscribe()
        sent = await intern.client.send_text(thread_id, "Bay 4: scaphoid tender, x-ray clear")
        await _next(arrivals, lambda e: isinstance(e, MessageEvent)
                    and e.message.message_id == sent.message_id)
        await asyncio.to_thread(world.relay.stop)  # off this loop: the clients on it answer
        assert await ortho.client.mark_read(thread_id) == 1
        await ortho.client.close(drain=0)
        async with relay_back(world, tmp_path):
            told = intern.client.subscribe()
            assert await receipts(world, sent.message_id, "read") == 0
            again = LightboxClient(ortho.vault, ortho.vault, password=PASSWORD,
                                   backoff_base=0.05, backoff_max=0.5)
            try:
                await again.start()
                got = await _next(told, lambda e: isinstance(e, ReceiptEvent)
                                  and e.message_id == sent.message_id and e.kind == "read")
                assert isinstance(got, ReceiptEvent) and got.user_id == ortho.user_id

                async def forgotten() -> bool:  # gone: no longer kept to send
                    return not again.receiver._memory.waiting_receipts()

                assert await eventually(forgotten)
            finally:
                await again.close()
            assert await receipts(world, sent.message_id, "read") == 1


@contextlib.asynccontextmanager
async def relay_restarting(port: int) -> AsyncIterator[asyncio.Queue[str]]:
    """What a client meets at the relay's address while the relay restarts: the first
    websocket upgrade answered 503 (a proxy in front of it, or the relay shutting down), every
    later one opened and closed at once with 1001 "relay shutting down" (as the relay's own
    shutdown does), any other request answered 503. Yields what it answered, as it does."""
    answered: asyncio.Queue[str] = asyncio.Queue()
    upgrades = 0

    def turn_away(connection: ServerConnection, request: WsRequest) -> WsResponse | None:
        nonlocal upgrades
        if request.headers.get("Upgrade", "").lower() == "websocket":
            upgrades += 1
            if upgrades > 1:
                return None  # opened, then closed by close_at_once
        answered.put_nowait("503")
        return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "restarting\n")

    async def close_at_once(ws: ServerConnection) -> None:
        await ws.close(1001, "relay shutting down")
        answered.put_nowait("1001")

    async with ws_serve(close_at_once, "127.0.0.1", port, process_request=turn_away):
        yield answered


async def test_a_client_turned_away_while_the_relay_restarts_reconnects_and_sends_what_it_kept(
        world: World, tmp_path: Path) -> None:
    """While the relay restarts, the clients' attempts to connect are answered with an HTTP
    503, or opened and closed at once with 1001 "relay shutting down". They keep trying, as for
    a refused connection: either answer used to end a client's reconnecting for good, silently,
    so the send it had kept never went, nothing more arrived, and the desktop said
    "reconnecting..." until it was restarted. Once the relay is back the kept send goes, and
    the specialist holds it once."""
    async with running_pair(world, tmp_path) as (intern, ortho, thread_id):
        outcome, arrivals = intern.client.subscribe(), ortho.client.subscribe()
        kept = await kept_while_down(world, intern.client, thread_id)
        async with relay_restarting(int(world.relay.base_url.rsplit(":", 1)[1])) as answered:
            async with asyncio.timeout(seconds(30)):
                seen = {await answered.get()}
                while seen != {"503", "1001"}:  # the clients met both
                    seen.add(await answered.get())
        async with relay_back(world, tmp_path):
            await sent_once(world, kept, outcome, arrivals)
