"""HTTP API bodies (JSON) shared by the relay and its clients: identity, keys and directory.

Every body is a frozen struct that refuses unknown fields, with size limits on every string and
list, so that the relay rejects bad input at the edge and the clients build exactly what the
relay accepts. Binary values are base64url strings without padding (RFC 4648 §5), decoded with
:func:`protocol.canonical.b64url_decode`; certificates, prekeys and revocation lists are the
compact signed strings of :mod:`protocol.canonical`. docs/PROTOCOL.md §11 lists the routes.

Device-bound requests: an access token (RFC 7519 JWT, EdDSA, RFC 8037) is bound to the device's
Ed25519 key by a ``cnf`` claim (RFC 7800 §3.1) holding ``jkt`` = b64url(SHA-256(signing key)).
Every HTTP request carrying it also carries a ``Lightbox-Proof`` header, a compact proof of
possession in the spirit of DPoP (RFC 9449): ``<unix seconds>.<b64url nonce>.<b64url
signature>`` where the device signs :func:`request_proof_input`: the method, the request target
(path *and* query), a digest of the body (the idea of RFC 9530's ``Content-Digest``), the time,
a fresh 16-byte nonce and the token's hash. The relay keeps the nonces it has accepted for the
clock-skew window, so a captured proof cannot be replayed, with the same body or another. A
token presented without a valid proof by the device it names is refused
(``token_device_mismatch``); a proof seen before, ``proof_replayed``.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Final

import msgspec

from protocol.certs import MAX_CERTIFICATE_LENGTH, MAX_REVOCATION_LIST_LENGTH
from protocol.model import DeviceKind

__all__ = [
    "ACCESS_TOKEN_AUDIENCE",
    "ADMIN_TOKEN_AUDIENCE",
    "BREAK_GLASS_OUTCOMES",
    "LABEL_ENROLMENT_TOKEN",
    "LABEL_LOGIN",
    "LABEL_PAIRING_MAC",
    "LABEL_REQUEST_PROOF",
    "MAX_BATCH_USERS",
    "MAX_CLAIM_DEVICES",
    "MAX_LADDER",
    "MAX_PREKEY_BATCH",
    "MAX_SHIFTS",
    "NO_CONSENT_REASONS",
    "PROOF_NONCE_BYTES",
    "AdminLogin",
    "AdminToken",
    "BreakGlassCase",
    "BreakGlassClose",
    "BreakGlassFollowUp",
    "BreakGlassList",
    "BreakGlassReport",
    "BreakGlassUse",
    "CertificateRenewal",
    "ClaimedKey",
    "ClaimedKeys",
    "ConsentCopy",
    "ConsentInfo",
    "ConsentList",
    "ConsentMismatch",
    "ConsentRegister",
    "ConsentRevoke",
    "ConsentRevoked",
    "ConsentWithdrawal",
    "DeviceBundle",
    "DeviceKeys",
    "DeviceSummary",
    "DirectoryEntry",
    "DirectoryResult",
    "EnrolComplete",
    "EnrolFetch",
    "EnrolPackage",
    "Enrolled",
    "EnrolmentBundle",
    "EnrolmentReissue",
    "EnrolmentReissued",
    "EscalationInfo",
    "EscalationList",
    "EscalationStep",
    "KeyClaim",
    "LadderMember",
    "LoginChallenge",
    "LoginRequest",
    "OnCall",
    "OncallRoleInfo",
    "OncallRoleList",
    "OncallRoleSet",
    "PairingCertificate",
    "PairingClaim",
    "PairingOffer",
    "PairingPending",
    "PairingResult",
    "Participants",
    "PrekeyCount",
    "PrekeyUpload",
    "ProvisionResult",
    "ProvisionUser",
    "ProvisionUsers",
    "ReadMark",
    "ReceiptInfo",
    "ReceiptList",
    "RefreshRequest",
    "RevocationLists",
    "RevocationUpload",
    "ShiftIn",
    "ShiftInfo",
    "ShiftList",
    "ShiftRemoved",
    "ShiftResult",
    "ShiftResults",
    "SignedPrekeyUpload",
    "ThreadCreate",
    "ThreadInfo",
    "ThreadList",
    "ThreadRecipients",
    "TokenPair",
    "UploadCreate",
    "UploadFinalise",
    "UploadStatus",
    "UserDetail",
    "UserDevices",
    "UserList",
    "UserSummary",
    "enrolment_token",
    "key_thumbprint",
    "login_signing_input",
    "request_proof_input",
]

ACCESS_TOKEN_AUDIENCE: Final = "lightbox-relay"  # noqa: S105 - an audience, not a secret
ADMIN_TOKEN_AUDIENCE: Final = "lightbox-admin"  # noqa: S105 - an audience, not a secret

LABEL_ENROLMENT_TOKEN: Final = b"lightbox/v1/enrolment-token"
LABEL_LOGIN: Final = b"lightbox/v1/login"
LABEL_REQUEST_PROOF: Final = b"lightbox/v1/request-proof/2"
PROOF_NONCE_BYTES: Final = 16
LABEL_PAIRING_MAC: Final = b"lightbox/v1/pairing-mac"

MAX_PREKEY_BATCH: Final = 100
MAX_CLAIM_DEVICES: Final = 64
MAX_BATCH_USERS: Final = 500

# Canonical unpadded base64url (protocol/canonical.py b64url_decode): whole groups of four, then
# two or three characters whose unused trailing bits are zero. The OpenAPI document carries the
# patterns, so it refuses exactly what the relay refuses.
_B64_TAIL2 = "[A-Za-z0-9_-][AQgw]"
_B64_TAIL3 = "[A-Za-z0-9_-]{2}[AEIMQUYcgkosw048]"
_B64_ANY = f"(?:[A-Za-z0-9_-]{{4}})*(?:{_B64_TAIL2}|{_B64_TAIL3})?"
_B64_32 = f"[A-Za-z0-9_-]{{40}}{_B64_TAIL3}"  # 32 bytes: 43 characters
_B64_64 = f"[A-Za-z0-9_-]{{84}}{_B64_TAIL2}"  # 64 bytes: 86 characters
B64 = Annotated[str, msgspec.Meta(pattern=f"^{_B64_ANY}$", max_length=8192)]
B64Key = Annotated[str, msgspec.Meta(pattern=f"^{_B64_32}$", min_length=43, max_length=43,
                                     description="32 bytes, canonical unpadded base64url")]
B64Signature = Annotated[str, msgspec.Meta(pattern=f"^{_B64_64}$", min_length=86, max_length=86,
                                           description="64 bytes, canonical unpadded base64url")]
# A signed artefact: base64url(canonical JSON body) "." base64url(Ed25519 signature).
Compact = Annotated[str, msgspec.Meta(pattern=f"^{_B64_ANY}\\.{_B64_64}$", min_length=88,
                                      max_length=MAX_CERTIFICATE_LENGTH)]
Id = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-"
                                         r"[0-9a-f]{12}$")]
Login = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9._-]{1,63}$")]
Password = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
Short = Annotated[str, msgspec.Meta(max_length=200)]


# --- helpers for the exact bytes -----------------------------------------------------------------


def enrolment_token(normalised_code: str) -> bytes:
    """What the client proves knowledge of the enrolment code with, without revealing it:
    SHA-256(label || 0x00 || code). The relay stores only SHA-256 of this token, and the
    identity key is sealed under Argon2id(code), which this value does not help to compute."""
    return hashlib.sha256(LABEL_ENROLMENT_TOKEN + b"\x00" + normalised_code.encode()).digest()


def key_thumbprint(signing_key: bytes) -> bytes:
    """The ``cnf.jkt`` value of an access token bound to this Ed25519 public key."""
    return hashlib.sha256(signing_key).digest()


def login_signing_input(nonce: bytes, login: str, device_id: str) -> bytes:
    """Bytes the device signs to log in: label || 0x00 || nonce[32] || login || 0x00 ||
    device_id."""
    return LABEL_LOGIN + b"\x00" + nonce + login.encode() + b"\x00" + device_id.encode()


def request_proof_input(method: str, target: str, timestamp: int, nonce: bytes, body: bytes,
                        access_token: str) -> bytes:
    """Bytes the device signs for ``Lightbox-Proof``::

        label || 0x00 || METHOD || 0x00 || target || 0x00 || decimal timestamp || 0x00 ||
        nonce[16] || SHA-256(body)[32] || SHA-256(access token)[32]

    ``target`` is the request target as sent: the path, and ``?`` and the query string when
    there is one, percent-encoding untouched (RFC 9110 §7.1, origin-form). The body is the exact
    bytes sent (empty for none). The three digests and the nonce have fixed lengths after the
    last separator, and no field before them can hold a 0x00 byte, so the input parses one way
    only."""
    if len(nonce) != PROOF_NONCE_BYTES:
        raise ValueError(f"a proof nonce is {PROOF_NONCE_BYTES} bytes")
    if "\x00" in method or "\x00" in target:
        raise ValueError("a request method or target cannot contain NUL")
    return b"\x00".join([
        LABEL_REQUEST_PROOF, method.upper().encode(), target.encode(), str(timestamp).encode(),
        nonce + hashlib.sha256(body).digest() + hashlib.sha256(access_token.encode()).digest(),
    ])


# --- admin -----------------------------------------------------------------------------------


class AdminLogin(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    login: Login
    password: Password


class AdminToken(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    token: str
    expires_at: int


class ProvisionUser(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A user provisioned by IT's tool: the certificate it signed with the organisation key,
    the login name, and the first-device enrolment package sealed under the enrolment code."""

    login: Login
    user_certificate: Compact
    enrolment_token_hash: B64Key  # b64url(SHA-256(enrolment_token(code)))
    sealed_identity: B64  # protocol.keys.seal_with_passphrase(bundle, code)
    enrolment_expires_at: int


class ProvisionUsers(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    users: Annotated[list[ProvisionUser], msgspec.Meta(min_length=1, max_length=MAX_BATCH_USERS)]


class ProvisionResult(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    index: int
    user_id: str | None
    ok: bool
    code: str | None = None
    detail: str | None = None


class UserSummary(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    user_id: str
    org_id: str
    login: str
    display_name: str
    roles: list[str]
    specialty: str | None
    department: str | None
    status: str  # active | suspended | pending (not yet enrolled)
    licence_expires_at: int | None
    devices: int


class UserList(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    users: list[UserSummary]


class DeviceSummary(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    device_id: str
    kind: DeviceKind
    status: str  # active | revoked
    created_at: int
    last_seen_at: int | None


class UserDetail(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    user: UserSummary
    user_certificate: str
    devices: list[DeviceSummary]
    enrolment: str  # pending | used | expired | none
    enrolment_expires_at: int | None = None  # of the most recent code (None: none)


class RevocationUpload(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    revocation_list: Annotated[str, msgspec.Meta(max_length=MAX_REVOCATION_LIST_LENGTH)]


class RevocationLists(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    lists: list[str]


class CertificateRenewal(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    user_certificate: Compact


class EnrolmentReissue(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A new enrolment code for a user who has not enrolled yet (status ``pending``), or whose
    every device is revoked: a new certificate for the same user and organisation with a new
    identity key, and the package sealed under the new code, as in :class:`ProvisionUser`. It
    replaces the user's certificate and every unused code of theirs."""

    user_certificate: Compact
    enrolment_token_hash: B64Key  # b64url(SHA-256(enrolment_token(code)))
    sealed_identity: B64  # protocol.keys.seal_with_passphrase(bundle, code)
    enrolment_expires_at: int


class EnrolmentReissued(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Answer of a re-issue: the code's expiry as stored (the relay caps it at
    LIGHTBOX_ENROLMENT_CODE_TTL) and how many unused codes it replaced."""

    user_id: str
    login: str
    enrolment_expires_at: int
    replaced: int


# --- enrolment and pairing ---------------------------------------------------------------------


class EnrolmentBundle(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What IT's tool seals under the enrolment code (protocol.keys.seal_with_passphrase) for the
    first device: the user's identity key seed and the organisation key to pin. Encoded with
    protocol.canonical.encode_struct (binary fields as base64url). The relay stores it sealed and
    cannot open it, so it can neither learn the identity key nor swap the organisation key."""

    user_id: Id
    login: Login
    org_id: Annotated[str, msgspec.Meta(max_length=63)]
    org_public_key: B64
    identity_seed: B64


class EnrolFetch(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    enrolment_token: B64Key


class EnrolPackage(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    user_certificate: str
    sealed_identity: B64
    expires_at: int


class EnrolComplete(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    enrolment_token: B64Key
    device_certificate: Compact
    signed_prekey: Compact
    one_time_prekeys: Annotated[list[Compact], msgspec.Meta(max_length=MAX_PREKEY_BATCH)]
    password: Password


class Enrolled(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    user_id: str
    device_id: str
    login: str


class DeviceKeys(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    device_id: Id
    kind: DeviceKind
    signing_key: B64Key
    dh_key: B64Key


class PairingOffer(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Posted by the new device: its public keys, MACed with the pairing secret that the user
    carries to the enrolled device, so the relay cannot substitute keys."""

    pairing_token_hash: B64Key  # b64url(SHA-256(pairing token)); the token itself stays local
    keys: DeviceKeys
    mac: B64Key  # HMAC-SHA-256(pairing secret, LABEL_PAIRING_MAC || canonical(keys))


class PairingPending(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    keys: DeviceKeys
    mac: B64Key
    expires_at: int


class PairingCertificate(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Posted by the enrolled device: the new device's certificate signed by the identity key,
    the organisation key it pins, and a MAC over all of it (with the user certificate) so the
    new device can tell it came from its user's device and not from the relay."""

    device_certificate: Compact
    org_public_key: B64Key
    mac: B64Key


class PairingClaim(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Posted by the new device to collect its certificate: proves it knows the pairing token."""

    pairing_token: B64Key


class PairingResult(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    user_certificate: str
    device_certificate: str
    org_public_key: B64Key
    mac: B64Key
    login: str


# --- login -----------------------------------------------------------------------------------


class LoginChallenge(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    nonce: B64Key
    expires_at: int


class LoginRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    login: Login
    password: Password
    device_id: Id
    nonce: B64Key
    signature: B64Signature


class RefreshRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    refresh_token: Annotated[str, msgspec.Meta(max_length=200)]


class TokenPair(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    access_token: str
    expires_at: int
    refresh_token: str
    refresh_expires_at: int
    user_id: str
    device_id: str


# --- keys and directory ----------------------------------------------------------------------


class DeviceBundle(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    device_certificate: str
    signed_prekey: str | None


class UserDevices(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    user_certificate: str
    devices: list[DeviceBundle]


class KeyClaim(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    devices: Annotated[list[Id], msgspec.Meta(min_length=1, max_length=MAX_CLAIM_DEVICES)]


class ClaimedKey(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    device_id: str
    user_certificate: str
    device_certificate: str
    signed_prekey: str
    one_time_prekey: str | None  # None: none left, fall back to the signed prekey


class ClaimedKeys(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    keys: list[ClaimedKey]


class PrekeyUpload(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    prekeys: Annotated[list[Compact], msgspec.Meta(min_length=1, max_length=MAX_PREKEY_BATCH)]


class SignedPrekeyUpload(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    signed_prekey: Compact


class PrekeyCount(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    remaining: int
    low_water: int
    target: int


class DirectoryEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A colleague as the directory shows them: ``login`` is how people name each other
    (``--to user:LOGIN``); the user id is what protocol messages carry."""

    user_id: str
    org_id: str
    login: str
    display_name: str
    roles: list[str]
    specialty: str | None
    department: str | None


class DirectoryResult(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    users: list[DirectoryEntry]


# --- consult threads ---------------------------------------------------------------------------

Role = Annotated[str, msgspec.Meta(pattern=r"^(role:)?[a-z][a-z0-9_-]{0,63}$")]
"""A role address: ``orthopaedics_oncall``, ``orthopaedics-oncall`` or ``role:orthopaedics-oncall``
(the relay normalises it, protocol.oncall.normalise_role)."""
MAX_PARTICIPANTS: Final = 64


class ThreadCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Create a consult thread. The creator is always a participant. The subject is not here:
    it is the thread's first sealed message, so the relay never sees it."""

    thread_id: Id  # chosen by the client, so a retried create is idempotent
    users: Annotated[list[Id], msgspec.Meta(max_length=MAX_PARTICIPANTS)] = []
    roles: Annotated[list[Role], msgspec.Meta(max_length=16)] = []
    priority: Annotated[str, msgspec.Meta(pattern=r"^(routine|urgent)$")] = "routine"


class ThreadInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    thread_id: str
    priority: str
    created_by: str
    created_at: int
    last_seq: int
    unread: int
    members: list[str]
    roles: list[str]
    # Emergency messages of this thread still waiting for a consent, or a reason why none was
    # possible (PROTOCOL §17): the reminder every participant's client shows.
    break_glass_pending: int = 0


class ThreadList(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    threads: list[ThreadInfo]


class Participants(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    users: Annotated[list[Id], msgspec.Meta(max_length=MAX_PARTICIPANTS)] = []
    roles: Annotated[list[Role], msgspec.Meta(max_length=16)] = []


class ReadMark(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    seq: Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)]


class ThreadRecipients(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Every current participant with their certificates: what a sender seals a message for
    (the client verifies each chain against its pinned organisation keys)."""

    users: list[UserDevices]


# --- attachments (PROTOCOL §12) ----------------------------------------------------------------

Sha256Hex = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
ByteCount = Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)]


class UploadCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Start an upload of ``size`` bytes of attachment ciphertext (protocol.attachments:
    ``ciphertext_size(plaintext size)``)."""

    size: Annotated[int, msgspec.Meta(ge=1, le=2**53 - 1)]


class UploadStatus(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """An upload: the next chunk starts at ``committed``; chunks are at most ``chunk_size``."""

    attachment_id: Id
    size: ByteCount
    committed: ByteCount
    chunk_size: ByteCount
    finalised: bool


class UploadFinalise(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The SHA-256 (lowercase hex) of the whole ciphertext as uploaded."""

    sha256: Sha256Hex


# --- consent (PROTOCOL §13) --------------------------------------------------------------------

ConsentToken = Annotated[str, msgspec.Meta(min_length=3, max_length=16 * 1024)]


class ConsentRegister(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A consent token (compact JWS, PROTOCOL §7) to register; agreed and refused alike."""

    token: ConsentToken


class ConsentInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A registered consent. ``status``: active, refused, expired, not_yet_valid or revoked."""

    consent_id: Id
    token: str
    status: str
    issuer_user_id: Id
    org_id: str
    registered_at: int
    revoked_at: int | None = None


class ConsentList(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The consents the caller captured (issued), newest first."""

    consents: list[ConsentInfo]


WithdrawalReason = Annotated[str, msgspec.Meta(max_length=500)]


class ConsentRevoke(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Why a consent is withdrawn, for the audit log (no patient details: the relay keeps it).
    The clinician's route takes it optionally (an empty body is no reason); the privacy
    office's requires one."""

    reason: WithdrawalReason = ""


class ConsentRevoked(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Answer of a revocation: messages withdrawn before delivery, expiry orders issued.
    ``already``: the consent had been withdrawn before this request (nothing changed)."""

    consent_id: Id
    revoked_at: int
    withdrawn_messages: int
    expiry_orders: int
    already: bool = False


class ConsentCopy(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One device's copy of an image sent under a consent, and its expiry order: ``reason``
    ``consent_revoked`` for a withdrawal (or ``filed``, ``hard_limit``, ``wipe`` when another
    order came first); ``confirmed_at`` is when the device confirmed it destroyed the copy."""

    attachment_id: Id
    device_id: Id
    device_kind: str
    user_id: Id
    login: str
    display_name: str
    reason: str | None
    ordered_at: int | None
    confirmed_at: int | None


class ConsentWithdrawal(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A consent as the privacy office sees it (``GET /v1/admin/consents/{id}``): who captured
    it, its status, who withdrew it and why, the messages sent under it (and those withdrawn
    before delivery), and every copy of its images with its expiry order."""

    consent: ConsentInfo
    issuer_login: str
    issuer_name: str
    decision: str
    purposes: list[str]
    revoked_by: str | None
    reason: str | None
    messages: int
    withdrawn_message_ids: list[str]
    copies: list[ConsentCopy]


class ConsentMismatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A recipient's report: an image received under the consent is not one it names (or the
    token does not verify against the sender's chain). The image was not shown."""

    message_id: Id
    attachment_id: Id | None = None
    reason: Annotated[str, msgspec.Meta(pattern=r"^(image_not_named|token_invalid)$")] = (
        "image_not_named")


# --- on-call rotas, escalations and receipts (PROTOCOL §15) -------------------------------------

OncallRole = Annotated[str, msgspec.Meta(pattern=r"^(role:)?[a-z][a-z0-9_-]{0,63}$")]
Seconds = Annotated[int, msgspec.Meta(ge=30, le=7 * 86400)]
# Unix seconds up to 9999-12-31T23:59:59Z, the last instant a datetime can hold.
Time = Annotated[int, msgspec.Meta(ge=0, le=253_402_300_799)]
LadderRef = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]  # user id or login
MAX_LADDER: Final = 16
MAX_SHIFTS: Final = 1000


class OncallRoleSet(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Define (or update) an on-call role: its acknowledgement deadlines per priority."""

    display_name: Short = ""
    urgent_seconds: Seconds = 300
    routine_seconds: Seconds = 1800


class OncallRoleInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    org_id: str
    role: str
    display_name: str
    urgent_seconds: int
    routine_seconds: int


class OncallRoleList(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    roles: list[OncallRoleInfo]


class ShiftIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One shift: ``[starts_at, ends_at)``, and its ladder, primary first, then the backups in
    escalation order (user ids or logins). ``line`` is echoed in the result (file imports)."""

    starts_at: Time
    ends_at: Time
    ladder: Annotated[list[LadderRef], msgspec.Meta(max_length=MAX_LADDER)]
    line: int | None = None


class ShiftsUpload(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    shifts: Annotated[list[ShiftIn], msgspec.Meta(min_length=1, max_length=MAX_SHIFTS)]


class ShiftResult(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Per-shift verdict: good shifts are stored even when others are refused
    (``shift_overlap``, ``shift_empty``, ``rota_invalid``)."""

    index: int
    line: int | None
    ok: bool
    shift_id: str | None = None
    code: str | None = None
    detail: str | None = None


class ShiftResults(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    results: list[ShiftResult]


class ShiftRemoved(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A shift removed (answered when asked for: docs/PROTOCOL.md §16.4): ``handovers`` of its
    unacknowledged consults are handed over at once, to the shift covering the moment
    (``covered_now``), else deferred to the role's next shift, starting ``next_shift_at``
    (None: the rota has no later shift). Counts and times only."""

    shift_id: str
    handovers: int
    covered_now: bool
    next_shift_at: int | None = None


class LadderMember(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    level: int  # 0 = primary
    user_id: str
    display_name: str


class ShiftInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    shift_id: str
    role: str
    starts_at: int
    ends_at: int
    ladder: list[LadderMember]


class ShiftList(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    shifts: list[ShiftInfo]


class OnCall(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``GET /v1/oncall/{role}``: who is on call at ``at``. A consult to the role is sealed
    for the devices of every ladder member (``GET /v1/threads/{id}/recipients`` of a thread
    naming the role lists exactly them, with certificates)."""

    role: str
    org_id: str
    at: int
    urgent_seconds: int
    routine_seconds: int
    shift: ShiftInfo | None


class ReceiptInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A recipient device's signed receipt (``statement``: verify it, PROTOCOL §8)."""

    message_id: str
    device_id: str
    user_id: str
    kind: str  # delivered | read | acknowledged
    at: int
    statement: str


class ReceiptList(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    receipts: list[ReceiptInfo]


class EscalationStep(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    step: int
    kind: str  # renotify | released | handover | no_shift
    level: int
    user_id: str
    at: int
    next_shift_at: int | None = None  # no_shift: when the role's next shift starts, if known


class EscalationInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    message_id: str
    role: str
    state: str  # open | acknowledged | exhausted
    level: int
    ladder: list[str]
    due_at: int | None
    acknowledged_by: str | None
    acknowledged_at: int | None
    steps: list[EscalationStep]


class EscalationList(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    escalations: list[EscalationInfo]


# --- break-glass (PROTOCOL §17) ------------------------------------------------------------------

NO_CONSENT_REASONS: Final = ("patient_died", "no_capacity_no_representative",
                             "patient_unreachable", "other")
BREAK_GLASS_OUTCOMES: Final = ("appropriate", "inappropriate", "referred")


class BreakGlassFollowUp(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What the sender files after an emergency message: the consent sought afterwards (its id,
    registered first), or the category of reason why no consent was possible (its words go
    sealed into the thread). Exactly one of the two."""

    consent_id: Id | None = None
    no_consent: Annotated[str, msgspec.Meta(
        pattern=r"^(patient_died|no_capacity_no_representative|patient_unreachable|other)$"
    )] | None = None


class BreakGlassClose(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The privacy office's review of a case; ``note`` is audited (no patient details)."""

    outcome: Annotated[str, msgspec.Meta(pattern=r"^(appropriate|inappropriate|referred)$")]
    note: WithdrawalReason = ""


class BreakGlassCase(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    case_id: str
    message_id: str
    thread_id: str
    org_id: str
    sender_user_id: str
    sender_login: str
    sender_name: str
    sender_device_id: str
    category: str  # protocol.model.EmergencyCategory
    recipients: int  # users the message went to (record gateways not counted)
    attachments: int
    declared_at: int
    follow_up: str | None  # None (awaiting), consent, no_consent
    follow_up_consent: str | None
    follow_up_detail: str | None  # the consent's decision, or the no-consent category
    followed_up_at: int | None
    status: str  # open | closed
    outcome: str | None
    note: str | None
    closed_by: str | None
    closed_at: int | None


class BreakGlassList(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    cases: list[BreakGlassCase]


class BreakGlassUse(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    user_id: str
    login: str
    display_name: str
    cases: int
    awaiting_follow_up: int
    inappropriate: int


class BreakGlassReport(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Use of break-glass over [since, until): totals, by category, by review outcome and by
    clinician (most cases first)."""

    since: int
    until: int
    total: int
    open: int
    closed: int
    awaiting_follow_up: int
    by_category: dict[str, int]
    by_outcome: dict[str, int]
    by_clinician: list[BreakGlassUse]
