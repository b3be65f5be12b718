"""clients/sdk/memory.py: what a device learnt outlives a restart (the vault's notes), each
fact is told once however often its notice comes, and a message's view lists receipts in the
order they happened and images as they stand."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.sdk.events import EscalationEvent, FiledEvent, ReceiptEvent
from clients.sdk.memory import Memory, body_of
from clients.sdk.vault import Vault, VaultMessage
from protocol.attachments import AttachmentDescriptor
from protocol.body import Body, encode_body
from protocol.keys import CHEAP_PROFILE

PASSPHRASE = "correct horse battery staple"
ME, SENDER = "user-me", "user-intern"


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[Vault]:
    v = Vault(tmp_path / "vault", kdf=CHEAP_PROFILE)
    v.create(PASSPHRASE)
    yield v
    v.close()


def _reopened(vault: Vault) -> Memory:
    vault.lock()
    vault.unlock(PASSPHRASE)
    return Memory(vault, lambda: ME)


def _message(body: Body) -> VaultMessage:
    return VaultMessage(message_id="msg-1", thread_id="thread-1", sender_user_id=SENDER,
                        sender_device_id="device-1", sent_at=1.0, body=body.text,
                        attachment_ids=tuple(a.attachment_id for a in body.attachments),
                        content=encode_body(body))


def test_receipts_steps_filings_acknowledgements_and_names_survive_a_restart(
        vault: Vault) -> None:
    memory = Memory(vault, lambda: ME)
    read = ReceiptEvent("msg-1", "user-b", "device-b", "read", 20, "Dr B")
    delivered = ReceiptEvent("msg-1", "user-b", "device-b", "delivered", 20, "Dr B")
    step = EscalationEvent("thread-1", "msg-1", "renotify", 1, 0, "user-b", 30)
    assert memory.note_receipt(read) and memory.note_receipt(delivered)
    assert memory.note_step(step)
    memory.note_filed(FiledEvent("img-1", "msg-1", "thread-1", 40, 940, "REF-9"))
    memory.note_acknowledged("msg-1")
    memory.remember_name(SENDER, "Dr Intern")

    again = _reopened(vault)
    view = again.view(_message(Body(text="wrist")))
    # delivered before read at the same second, whatever order the notices came in
    assert [r.kind for r in view.receipts] == ["delivered", "read"]
    assert view.escalations == (step,)
    assert view.acknowledged_by_me
    assert again.filed["img-1"].record_ref == "REF-9"
    assert again.display_name(SENDER) == "Dr Intern"
    assert again.display_name(ME) == "you"
    assert again.display_name("user-unknown-123") == "user-unk"


def test_an_acknowledgement_waiting_for_the_relay_survives_a_restart_with_its_statement(
        vault: Vault) -> None:
    """Kept with its signed receipt until it has gone (the next run sends it, clients/sdk/
    receiving.py); once gone, acknowledged; refused, not acknowledged, and no longer waiting."""
    memory = Memory(vault, lambda: ME)
    memory.acknowledging("msg-1", "signed.statement")
    again = _reopened(vault)
    assert again.waiting_acknowledgements() == {"msg-1": "signed.statement"}
    view = again.view(_message(Body(text="wrist")))
    assert view.acknowledged_by_me and view.acknowledgement_waiting
    again.note_acknowledged("msg-1")
    sent = _reopened(vault)
    assert sent.waiting_acknowledgements() == {}
    assert sent.view(_message(Body(text="wrist"))).acknowledged_by_me
    sent.acknowledging("msg-1", "signed.again")
    sent.note_acknowledgement_refused("msg-1", "not_on_ladder: not on the ladder")
    refused = _reopened(vault)
    assert refused.waiting_acknowledgements() == {}
    view = refused.view(_message(Body(text="wrist")))
    assert not view.acknowledged_by_me
    assert view.acknowledgement_refused == "not_on_ladder: not on the ladder"


def test_a_delivered_or_read_receipt_waiting_to_go_survives_a_restart_until_sent(
        vault: Vault) -> None:
    """Kept with its signed statement until written to the relay (clients/sdk/receiving.py
    sends what a restart finds); once sent, no longer kept."""
    memory = Memory(vault, lambda: ME)
    memory.receipt_waiting("msg-1", "read", "signed.read")
    memory.receipt_waiting("msg-2", "delivered", "signed.delivered")
    again = _reopened(vault)
    assert again.waiting_receipts() == {("msg-1", "read"): "signed.read",
                                        ("msg-2", "delivered"): "signed.delivered"}
    again.receipt_sent("msg-1", "read")
    again.receipt_sent("msg-1", "read")  # twice: harmless
    assert _reopened(vault).waiting_receipts() == {("msg-2", "delivered"): "signed.delivered"}


def test_a_redelivered_notice_is_news_once(vault: Vault) -> None:
    memory = Memory(vault, lambda: ME)
    receipt = ReceiptEvent("msg-1", "user-b", "device-b", "delivered", 20)
    step = EscalationEvent("thread-1", "msg-1", "released", 2, 1, "user-b", 30)
    assert memory.note_receipt(receipt) and not memory.note_receipt(receipt)
    assert memory.note_step(step) and not memory.note_step(step)
    assert not _reopened(vault).note_receipt(receipt)  # nor after a restart


def test_an_image_not_yet_fetched_is_pending_and_an_expired_one_shredded(vault: Vault) -> None:
    memory = Memory(vault, lambda: ME)
    descriptor = AttachmentDescriptor(attachment_id="img-1", key=b"k" * 32, sha256=b"s" * 32,
                                      size=10, media_type="image/jpeg", width=4, height=3)
    message = _message(Body(text="film", attachments=[descriptor]))
    assert [s.state for s in memory.view(message).images] == ["pending"]
    memory.image_state["img-1"] = ("failed", "the relay is away")
    assert memory.image_status("img-1").reason == "the relay is away"
    vault.expire("img-1", record_reference="REF-1")
    status = memory.image_status("img-1")
    assert (status.state, status.record_ref) == ("shredded", "REF-1")


def test_an_unreadable_body_is_none_and_a_plain_text_one_is_read(vault: Vault) -> None:
    garbled = VaultMessage(message_id="m", thread_id="t", sender_user_id=SENDER,
                           sender_device_id="d", sent_at=1.0, body="", content=b"\xc1")
    assert body_of(garbled) is None
    plain = VaultMessage(message_id="m", thread_id="t", sender_user_id=SENDER,
                         sender_device_id="d", sent_at=1.0, body="hello")
    assert body_of(plain) == Body(text="hello")
