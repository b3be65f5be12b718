"""One valid instance of every websocket frame type, shared by the frame and session tests."""

from __future__ import annotations

from protocol import frames as f
from protocol.errors import ErrorCode
from protocol.model import MessageHeader, Priority, Purpose, SealedMessage, WrappedKey

U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"
U3 = "33333333-3333-4333-8333-333333333333"
T0 = 1_767_225_600


def sealed(*, ciphertext: bytes = b"c" * 64, devices: int = 1) -> SealedMessage:
    header = MessageHeader(
        v=1,
        message_id=U1,
        thread_id=U2,
        sender_user_id=U3,
        sender_device_id=U3,
        sent_at=T0,
        purpose=Purpose.DIRECT_CARE,
        priority=Priority.URGENT,
        consent_id=None,
        attachment_ids=[],
        recipient_devices=[U2] * devices,
    )
    key = WrappedKey(
        device_id=U2,
        signed_prekey_id=1,
        one_time_prekey_id=7,
        ephemeral_public=b"e" * 32,
        nonce=b"n" * 24,
        wrapped=b"w" * 48,
    )
    return SealedMessage(
        header=header,
        nonce=b"n" * 24,
        ciphertext=ciphertext,
        keys=[key] * devices,
        signature=b"s" * 64,
    )


def sample_frames() -> list[f.Frame]:
    """One instance of every frame type of the catalogue."""
    return [
        f.Hello(versions=[1], access_token="tok", device_id=U1, client="cli", client_version="1.0"),
        f.Challenge(version=1, nonce=b"\x01" * 32, server_time=T0),
        f.Auth(signature=b"\x02" * 64),
        f.Ready(
            session_id=U1,
            device_id=U2,
            user_id=U3,
            version=1,
            server_time=T0,
            heartbeat=30,
            expires_at=T0 + 3600,
            limits=f.Limits(),
        ),
        f.Send(req_id="r1", message=sealed()),
        f.Accepted(
            req_id="r1",
            message_id=U1,
            thread_id=U2,
            thread_seq=1,
            server_time=T0,
            duplicate=False,
        ),
        f.Deliver(
            delivery_id=U1,
            thread_seq=5,
            priority=Priority.URGENT,
            received_at=T0,
            message=sealed(),
        ),
        f.Ack(delivery_ids=[U1, U2]),
        f.QueueEmpty(pending=0, server_time=T0),
        f.Withdrawn(message_id=U1, thread_id=U2, reason=f.WithdrawReason.CONSENT_REVOKED, at=T0),
        f.Receipt(req_id="r2", statement="eyJhIjoxfQ.c2ln"),
        f.ReceiptNotice(
            message_id=U1,
            device_id=U2,
            user_id=U3,
            kind=f.ReceiptKind.READ,
            at=T0,
            statement="eyJhIjoxfQ.c2ln",
        ),
        f.Error(
            req_id="r1",
            code=ErrorCode.DEVICE_SET_MISMATCH,
            detail="devices",
            retry_after=1.5,
            missing=[U1],
            extra=[U2],
            stale=[],
            fatal=False,
        ),
        f.Filing(statement="eyJmIjoxfQ.c2ln"),
        f.FiledNotice(
            attachment_id=U1,
            message_id=U2,
            thread_id=U3,
            filed_at=T0,
            expires_at=T0 + 86400,
            record_ref="1.2.826.0.1.3680043.2.1125.1",
        ),
        f.ExpireOrder(
            order_id=U1,
            attachment_id=U2,
            thread_id=U3,
            reason=f.ExpiryReason.FILED,
            record_ref=None,
            issued_at=T0,
        ),
        f.NotReceived(
            message_id=U1,
            thread_id=U2,
            attachment_id=U3,
            user_id=U1,
            reason=f.ExpiryReason.FILED,
            at=T0,
        ),
        f.ExpiryConfirm(req_id="r3", statement="eyJlIjoxfQ.c2ln"),
        f.WipeConfirm(statement="eyJlIjoxfQ.c2ln"),
        f.WipeOrder(order_id=U1, issued_at=T0, revocation="eyJyIjoxfQ.c2ln"),
        f.KeysLow(remaining=3, target=100),
        f.Revoked(subject=f.RevocationSubject.DEVICE, id=U1, reason="lost", at=T0),
        f.EscalationNotice(
            thread_id=U1,
            message_id=U2,
            step=1,
            level=2,
            user_id=U3,
            at=T0,
            kind=f.EscalationKind.RELEASED,
        ),
        f.ResealRequest(thread_id=U1, message_id=U2, devices=[U3], deadline=T0 + 600),
        f.Ping(nonce=b"p" * 8),
        f.Pong(nonce=b"p" * 8),
        f.Bundle(frames=[f.encode_frame(f.Ping(nonce=b"b1")),
                         f.encode_frame(f.Pong(nonce=b"b2"))]),
    ]
