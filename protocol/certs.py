"""Certificates, signed prekeys and revocation lists (docs/ARCHITECTURE.md §4, docs/PROTOCOL.md §4).

Why: the relay must not be able to mint identities. Every key a client encrypts to or accepts a
signature from chains to a pinned organisation key:

    organisation key --signs--> user certificate (identity key)
    identity key     --signs--> device certificate (device Ed25519 + X25519 keys)
    device key       --signs--> signed prekey, one-time prekeys
    organisation key --signs--> revocation list

Each artefact is a frozen msgspec struct encoded as RFC 8785 canonical JSON and carried in the
compact signed format of :mod:`protocol.canonical` with its own domain label. Every failure of
:func:`verify_chain` and friends raises :class:`~protocol.errors.VerificationError` with a
specific code (CERTIFICATE_INVALID / _EXPIRED / _REVOKED / _UNTRUSTED, LICENCE_EXPIRED); the
detailed reason is in ``.reason`` for local logs only. Times are injected (``at=``).

One-time prekeys are signed too: it costs one Ed25519 signature per key and stops a relay from
substituting a key of its own choosing for a device's one-time prekey.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Annotated, Final, TypeVar

import msgspec

from protocol import canonical
from protocol.canonical import Bytes32, Signer, Timestamp, UuidStr
from protocol.errors import DecodeError, ErrorCode, VerificationError
from protocol.model import DeviceKind

__all__ = [
    "CERTIFICATE_VERSION",
    "MAX_CERTIFICATE_LENGTH",
    "MAX_REVOCATION_LIST_LENGTH",
    "ROLE_RECORD_GATEWAY",
    "AccountKind",
    "DeviceCertificate",
    "Licence",
    "OneTimePrekey",
    "RevocationEntry",
    "RevocationList",
    "RevocationSet",
    "RevocationSubject",
    "SignedPrekey",
    "UserCertificate",
    "VerifiedDevice",
    "issue_device_certificate",
    "issue_one_time_prekey",
    "issue_revocation_list",
    "issue_signed_prekey",
    "issue_user_certificate",
    "verify_chain",
    "verify_device_certificate",
    "verify_one_time_prekey",
    "verify_revocation_list",
    "verify_signed_prekey",
    "verify_user_certificate",
]

T = TypeVar("T")

CERTIFICATE_VERSION: Final = 1
MAX_CERTIFICATE_LENGTH: Final = 8 * 1024  # compact certificate or prekey, characters
MAX_REVOCATION_LIST_LENGTH: Final = 4 * 1024 * 1024  # about 20 000 entries
MAX_REVOCATION_ENTRIES: Final = 20_000
ROLE_RECORD_GATEWAY: Final = "record_gateway"

OrgId = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9.-]{0,62}$")]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Role = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
PrekeyId = Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)]
Version = Annotated[int, msgspec.Meta(ge=1, le=255)]


class AccountKind(enum.StrEnum):
    """A person with a professional licence, or a service (e.g. the record gateway)."""

    CLINICIAN = "clinician"
    SERVICE = "service"


class RevocationSubject(enum.StrEnum):
    USER = "user"
    DEVICE = "device"


class Licence(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A clinician's professional registration (e.g. GMC, NMC, state medical board)."""

    type: Text
    number: Text
    jurisdiction: Text
    expires_at: Timestamp


class UserCertificate(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Signed by the organisation key: who the user is and their identity key."""

    v: Version
    serial: UuidStr
    user_id: UuidStr
    org_id: OrgId
    display_name: Text
    account_kind: AccountKind
    roles: Annotated[list[Role], msgspec.Meta(max_length=32)]
    specialty: Text | None
    department: Text | None
    licence: Licence | None
    identity_key: Bytes32  # Ed25519 public key
    not_before: Timestamp
    not_after: Timestamp
    issued_at: Timestamp

    @property
    def is_record_gateway(self) -> bool:
        return self.account_kind is AccountKind.SERVICE and ROLE_RECORD_GATEWAY in self.roles


class DeviceCertificate(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Signed by the user's identity key: one of the user's devices and its keys."""

    v: Version
    device_id: UuidStr
    user_id: UuidStr
    org_id: OrgId
    kind: DeviceKind
    signing_key: Bytes32  # Ed25519 public key
    dh_key: Bytes32  # X25519 public key
    issued_at: Timestamp
    not_after: Timestamp


class SignedPrekey(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Signed by the device key: the device's current medium-term X25519 prekey."""

    device_id: UuidStr
    prekey_id: PrekeyId
    public: Bytes32
    created_at: Timestamp


class OneTimePrekey(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Signed by the device key: an X25519 prekey the relay hands out exactly once."""

    device_id: UuidStr
    prekey_id: PrekeyId
    public: Bytes32


class RevocationEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    subject: RevocationSubject
    id: UuidStr
    revoked_at: Timestamp
    reason: Annotated[str, msgspec.Meta(max_length=200)]
    wipe: bool  # ask the device to erase its local data when it next connects


class RevocationList(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Signed by the organisation key. Cumulative: list ``number`` N contains every entry of
    list N-1; numbers only grow, so a relay cannot roll a client back to an older list."""

    v: Version
    org_id: OrgId
    number: Annotated[int, msgspec.Meta(ge=0, le=canonical.MAX_SAFE_INTEGER)]
    issued_at: Timestamp
    entries: Annotated[list[RevocationEntry], msgspec.Meta(max_length=MAX_REVOCATION_ENTRIES)]


class VerifiedDevice(msgspec.Struct, frozen=True, kw_only=True):
    """A device whose certificate chain verified (output of :func:`verify_chain` only)."""

    user: UserCertificate
    device: DeviceCertificate

    @property
    def device_id(self) -> str:
        return self.device.device_id

    @property
    def user_id(self) -> str:
        return self.user.user_id

    @property
    def org_id(self) -> str:
        return self.user.org_id

    @property
    def signing_key(self) -> bytes:
        return self.device.signing_key

    @property
    def dh_key(self) -> bytes:
        return self.device.dh_key


class RevocationSet:
    """The latest verified revocation list of each organisation, indexed for lookups."""

    def __init__(self, lists: Iterable[RevocationList] = ()) -> None:
        self._lists: dict[str, RevocationList] = {}
        self._index: dict[tuple[str, RevocationSubject, str], RevocationEntry] = {}
        for rl in lists:
            self.add(rl)

    def add(self, rl: RevocationList) -> bool:
        """Take a newer list for its organisation. Returns False if already current; raises
        VerificationError (CERTIFICATE_REVOKED) for an older list: a rollback attempt."""
        current = self._lists.get(rl.org_id)
        if current is not None:
            if rl.number == current.number:
                if rl != current:
                    raise VerificationError(
                        "two different revocation lists with the same number",
                        code=ErrorCode.CERTIFICATE_REVOKED,
                    )
                return False
            if rl.number < current.number:
                raise VerificationError(
                    "revocation list older than the one held", code=ErrorCode.CERTIFICATE_REVOKED
                )
        self._lists[rl.org_id] = rl
        for key in [k for k in self._index if k[0] == rl.org_id]:
            del self._index[key]
        for entry in rl.entries:
            self._index[(rl.org_id, entry.subject, entry.id)] = entry
        return True

    def number(self, org_id: str) -> int | None:
        """Number of the list held for ``org_id`` (None if none)."""
        rl = self._lists.get(org_id)
        return None if rl is None else rl.number

    def user_entry(self, org_id: str, user_id: str) -> RevocationEntry | None:
        return self._index.get((org_id, RevocationSubject.USER, user_id))

    def device_entry(self, org_id: str, device_id: str) -> RevocationEntry | None:
        return self._index.get((org_id, RevocationSubject.DEVICE, device_id))


# --- helpers -----------------------------------------------------------------------------------

OrgSigned = TypeVar("OrgSigned", UserCertificate, RevocationList)
Prekey = TypeVar("Prekey", SignedPrekey, OneTimePrekey)


def _fail(reason: str, code: ErrorCode = ErrorCode.CERTIFICATE_INVALID) -> VerificationError:
    return VerificationError(reason, code=code)


def _open(
    label: bytes, token: str, cls: type[T], key: bytes, *, max_length: int = MAX_CERTIFICATE_LENGTH
) -> T:
    try:
        return canonical.open_compact(label, token, cls, key, max_length=max_length)
    except DecodeError as exc:
        raise _fail(f"malformed {cls.__name__}: {exc}") from exc
    except VerificationError as exc:
        raise _fail(exc.reason) from exc


def _open_for_org(
    label: bytes,
    token: str,
    cls: type[OrgSigned],
    trusted_orgs: Mapping[str, bytes],
    *,
    what: str,
    max_length: int = MAX_CERTIFICATE_LENGTH,
) -> OrgSigned:
    """Open a token the organisation key signed: read which organisation it claims (unverified),
    take that organisation's pinned key (UNTRUSTED if none), then verify under it (INVALID)."""
    try:
        claimed = canonical.peek_compact(token, cls, max_length=max_length)
    except DecodeError as exc:
        raise _fail(f"malformed {what}: {exc}") from exc
    key = _trusted_key(trusted_orgs, claimed.org_id)
    return _open(label, token, cls, key, max_length=max_length)


def _open_prekey(
    label: bytes, token: str, cls: type[Prekey], device: VerifiedDevice, *, what: str
) -> Prekey:
    """Open a prekey under a verified device's key; it must name that device."""
    body = _open(label, token, cls, device.signing_key)
    if body.device_id != device.device_id:
        raise _fail(f"{what} belongs to another device")
    return body


def _sign(label: bytes, body: msgspec.Struct, signer: Signer) -> str:
    return canonical.sign_compact(label, canonical.encode_struct(body), signer)


def _check_list_body(body: RevocationList) -> None:
    if body.v != CERTIFICATE_VERSION:
        raise _fail(f"unsupported revocation list version {body.v}")


def _check_user_body(body: UserCertificate) -> None:
    if body.v != CERTIFICATE_VERSION:
        raise _fail(f"unsupported user certificate version {body.v}")
    if body.not_after <= body.not_before:
        raise _fail("user certificate validity period is empty")
    if body.account_kind is AccountKind.CLINICIAN and body.licence is None:
        raise _fail("clinician certificate without a licence")


def _check_device_body(body: DeviceCertificate) -> None:
    if body.v != CERTIFICATE_VERSION:
        raise _fail(f"unsupported device certificate version {body.v}")
    if body.not_after <= body.issued_at:
        raise _fail("device certificate validity period is empty")


def _trusted_key(trusted_orgs: Mapping[str, bytes], org_id: str) -> bytes:
    key = trusted_orgs.get(org_id)
    if key is None:
        raise _fail(f"organisation {org_id!r} is not trusted", ErrorCode.CERTIFICATE_UNTRUSTED)
    return key


# --- user certificates -------------------------------------------------------------------------


def issue_user_certificate(body: UserCertificate, org_key: Signer) -> str:
    """Sign a user certificate with the organisation key (IT's provisioning tool)."""
    _check_user_body(body)
    return _sign(canonical.LABEL_USER_CERTIFICATE, body, org_key)


def verify_user_certificate(
    token: str,
    *,
    trusted_orgs: Mapping[str, bytes],
    at: int,
    revocations: RevocationSet | None = None,
) -> UserCertificate:
    """Verify a user certificate against the pinned organisation keys at time ``at``.

    Checks, in order: well-formed, organisation pinned (UNTRUSTED), signature (INVALID),
    revocation (REVOKED), ``not_before <= at < not_after`` (EXPIRED), and for clinicians
    ``at < licence.expires_at`` (LICENCE_EXPIRED).
    """
    body = _open_for_org(
        canonical.LABEL_USER_CERTIFICATE,
        token,
        UserCertificate,
        trusted_orgs,
        what="user certificate",
    )
    _check_user_body(body)
    if revocations is not None and revocations.user_entry(body.org_id, body.user_id) is not None:
        raise _fail(f"user {body.user_id} is revoked", ErrorCode.CERTIFICATE_REVOKED)
    if not body.not_before <= at < body.not_after:
        raise _fail("user certificate outside its validity period", ErrorCode.CERTIFICATE_EXPIRED)
    if body.account_kind is AccountKind.CLINICIAN:
        assert body.licence is not None  # _check_user_body
        if at >= body.licence.expires_at:
            raise _fail("licence expired", ErrorCode.LICENCE_EXPIRED)
    return body


# --- device certificates -----------------------------------------------------------------------


def issue_device_certificate(body: DeviceCertificate, identity_key: Signer) -> str:
    """Sign a device certificate with the user's identity key (on an already enrolled device)."""
    _check_device_body(body)
    return _sign(canonical.LABEL_DEVICE_CERTIFICATE, body, identity_key)


def verify_device_certificate(
    token: str,
    *,
    user: UserCertificate,
    at: int,
    revocations: RevocationSet | None = None,
) -> DeviceCertificate:
    """Verify a device certificate against an already verified user certificate."""
    body = _open(canonical.LABEL_DEVICE_CERTIFICATE, token, DeviceCertificate, user.identity_key)
    _check_device_body(body)
    if body.user_id != user.user_id or body.org_id != user.org_id:
        raise _fail("device certificate names another user or organisation")
    if body.kind is DeviceKind.GATEWAY and user.account_kind is not AccountKind.SERVICE:
        raise _fail("a gateway device must belong to a service account")
    if (
        revocations is not None
        and revocations.device_entry(body.org_id, body.device_id) is not None
    ):
        raise _fail(f"device {body.device_id} is revoked", ErrorCode.CERTIFICATE_REVOKED)
    if not body.issued_at <= at < body.not_after:
        raise _fail("device certificate outside its validity period", ErrorCode.CERTIFICATE_EXPIRED)
    return body


def verify_chain(
    user_cert: str,
    device_cert: str,
    *,
    trusted_orgs: Mapping[str, bytes],
    at: int,
    revocations: RevocationSet | None,
) -> VerifiedDevice:
    """Verify organisation -> user -> device at time ``at``; the only way to get a
    :class:`VerifiedDevice`, which :mod:`protocol.envelope` requires before encrypting to a
    device or accepting its signature. ``revocations=None`` must be passed explicitly."""
    user = verify_user_certificate(
        user_cert, trusted_orgs=trusted_orgs, at=at, revocations=revocations
    )
    device = verify_device_certificate(device_cert, user=user, at=at, revocations=revocations)
    return VerifiedDevice(user=user, device=device)


# --- prekeys -----------------------------------------------------------------------------------


def issue_signed_prekey(body: SignedPrekey, device_key: Signer) -> str:
    """Sign a signed prekey with the device's Ed25519 key."""
    return _sign(canonical.LABEL_SIGNED_PREKEY, body, device_key)


def verify_signed_prekey(token: str, device: VerifiedDevice) -> SignedPrekey:
    """Verify a signed prekey under a verified device's key (CERTIFICATE_INVALID otherwise)."""
    return _open_prekey(
        canonical.LABEL_SIGNED_PREKEY, token, SignedPrekey, device, what="signed prekey"
    )


def issue_one_time_prekey(body: OneTimePrekey, device_key: Signer) -> str:
    """Sign a one-time prekey with the device's Ed25519 key."""
    return _sign(canonical.LABEL_ONE_TIME_PREKEY, body, device_key)


def verify_one_time_prekey(token: str, device: VerifiedDevice) -> OneTimePrekey:
    """Verify a one-time prekey under a verified device's key (CERTIFICATE_INVALID otherwise)."""
    return _open_prekey(
        canonical.LABEL_ONE_TIME_PREKEY, token, OneTimePrekey, device, what="one-time prekey"
    )


# --- revocation --------------------------------------------------------------------------------


def issue_revocation_list(body: RevocationList, org_key: Signer) -> str:
    """Sign a revocation list with the organisation key."""
    _check_list_body(body)
    return _sign(canonical.LABEL_REVOCATION_LIST, body, org_key)


def verify_revocation_list(token: str, *, trusted_orgs: Mapping[str, bytes]) -> RevocationList:
    """Verify a revocation list under its pinned organisation key. Feed the result to
    :meth:`RevocationSet.add`, which refuses rollbacks."""
    body = _open_for_org(
        canonical.LABEL_REVOCATION_LIST,
        token,
        RevocationList,
        trusted_orgs,
        what="revocation list",
        max_length=MAX_REVOCATION_LIST_LENGTH,
    )
    _check_list_body(body)
    return body
