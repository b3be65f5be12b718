"""Shared wire structs and enums used across protocol/ (and by the relay and clients).

Conventions (docs/PROTOCOL.md §1): identifiers are lowercase UUID strings; times are integer
seconds since the Unix epoch (UTC); binary values are raw ``bin`` in MessagePack and base64url
without padding (RFC 4648 §5) in JSON. Structs are frozen, reject unknown fields and are
encoded with ``array_like=False`` (maps keyed by field name) so other languages can read them.
"""

from __future__ import annotations

import enum

import msgspec

__all__ = [
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "DeviceKind",
    "EmergencyCategory",
    "MessageHeader",
    "Priority",
    "Purpose",
    "SealedMessage",
    "WrappedKey",
]

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)


class Purpose(enum.StrEnum):
    """Why a message or image is shared (docs/ARCHITECTURE.md §5 policy table)."""

    DIRECT_CARE = "direct_care"
    EXTERNAL_CONSULT = "external_consult"
    TEACHING = "teaching"
    PUBLICATION = "publication"
    RESEARCH = "research"


class EmergencyCategory(enum.StrEnum):
    """Why a message is sent without a consent (break-glass, docs/PROTOCOL.md §17): the only
    part of the declaration the relay reads. The clinician's own words travel sealed in the
    body (``Body.emergency_reason``), since they may name the patient."""

    UNCONSCIOUS = "unconscious"  # the patient cannot be asked
    LACKS_CAPACITY = "lacks_capacity"  # cannot decide, and no representative can be reached
    TIME_CRITICAL = "time_critical"  # asking first would delay life- or limb-saving care
    OTHER = "other"


class Priority(enum.StrEnum):
    ROUTINE = "routine"
    URGENT = "urgent"


class DeviceKind(enum.StrEnum):
    MOBILE = "mobile"
    DESKTOP = "desktop"
    GATEWAY = "gateway"


class MessageHeader(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What the relay may read about a message. Its canonical bytes are the AEAD associated
    data of the body and part of what the sender device signs."""

    v: int
    message_id: str
    thread_id: str
    sender_user_id: str
    sender_device_id: str
    sent_at: int
    purpose: Purpose
    priority: Priority
    consent_id: str | None
    attachment_ids: list[str]
    recipient_devices: list[str]
    external: bool = False  # server-visible "external consult" flag (clinical necessity sealed)
    # Break-glass: sent in an emergency without a consent (docs/PROTOCOL.md §17); the reason's
    # category only, its words are sealed.
    emergency: EmergencyCategory | None = None
    body_size: int = 0


class WrappedKey(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The message's content key wrapped for one recipient device."""

    device_id: str
    signed_prekey_id: int
    one_time_prekey_id: int | None
    ephemeral_public: bytes  # X25519, 32 bytes
    nonce: bytes  # XChaCha20-Poly1305, 24 bytes
    wrapped: bytes  # AEAD(content key), 32 + 16 bytes


class SealedMessage(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A message as the relay stores and forwards it: header, one body ciphertext, the content
    key wrapped per recipient device, and the sender device's Ed25519 signature."""

    header: MessageHeader
    nonce: bytes  # 24 bytes
    ciphertext: bytes
    keys: list[WrappedKey]
    signature: bytes  # 64 bytes
