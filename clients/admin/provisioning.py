"""What IT's tool signs with the organisation key: user certificates, enrolment packages (and
their re-issue), licence renewals and revocation lists (docs/PROTOCOL.md §4).

Why here and not on the relay: a relay that could sign certificates could mint identities.
Everything in this module runs on IT's workstation with the unsealed organisation key; the
relay receives only signed certificates, hashes of enrolment tokens and sealed packages.

An enrolment package is :class:`protocol.api.EnrolmentBundle` (the user's identity key seed and
the organisation key to pin) sealed with :func:`protocol.keys.seal_with_passphrase` under the
100-bit enrolment code; the relay gets ``b64url(SHA-256(enrolment_token(code)))`` to find it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Iterable
from typing import Any

import msgspec

from clients.admin.csvio import LicenceFields, UserRow
from clients.sdk.kdf import passphrase_profile
from protocol import api, certs
from protocol.canonical import b64url_encode, encode_struct
from protocol.keys import (
    DEFAULT_PROFILE,
    IdentityKey,
    OrganisationKey,
    PassphraseProfile,
    generate_enrolment_code,
    normalise_enrolment_code,
    seal_with_passphrase,
)

__all__ = [
    "CERTIFICATE_VALIDITY_DAYS",
    "CLOCK_SKEW",
    "ENROLMENT_VALIDITY_HOURS",
    "Provisioned",
    "next_revocation_list",
    "provision_user",
    "reissue_user",
    "renew_certificate",
    "renew_licence",
]

CERTIFICATE_VALIDITY_DAYS = 730
ENROLMENT_VALIDITY_HOURS = 72
CLOCK_SKEW = 300  # certificates start this many seconds early: clocks of relays and devices drift


@dataclasses.dataclass(frozen=True)
class Provisioned:
    """A user ready to post, with what the handout needs. ``code`` is the secret to print."""

    row: UserRow
    user_id: str
    code: str
    certificate: str
    request: api.ProvisionUser

    def __repr__(self) -> str:
        return f"Provisioned(login={self.row.login!r}, user_id={self.user_id!r})"


def _enrolment(
    body: certs.UserCertificate, identity: IdentityKey, row: UserRow, *,
    org_key: OrganisationKey, now: int, code_valid_hours: int, kdf: PassphraseProfile | None,
) -> Provisioned:
    """Sign ``body`` and seal the user's identity key under a fresh enrolment code."""
    certificate = certs.issue_user_certificate(body, org_key)
    code = generate_enrolment_code()
    norm = normalise_enrolment_code(code)
    bundle = api.EnrolmentBundle(user_id=body.user_id, login=row.login, org_id=body.org_id,
                                 org_public_key=b64url_encode(org_key.public),
                                 identity_seed=b64url_encode(identity.seed.reveal()))
    profile = kdf or passphrase_profile(DEFAULT_PROFILE)
    sealed = seal_with_passphrase(encode_struct(bundle), norm, opslimit=profile.opslimit,
                                  memlimit=profile.memlimit)
    token_hash = hashlib.sha256(api.enrolment_token(norm)).digest()
    request = api.ProvisionUser(
        login=row.login, user_certificate=certificate,
        enrolment_token_hash=b64url_encode(token_hash), sealed_identity=b64url_encode(sealed),
        enrolment_expires_at=now + code_valid_hours * 3600,
    )
    return Provisioned(row=row, user_id=body.user_id, code=code, certificate=certificate,
                       request=request)


def provision_user(
    row: UserRow,
    *,
    org_id: str,
    org_key: OrganisationKey,
    now: int,
    validity_days: int = CERTIFICATE_VALIDITY_DAYS,
    code_valid_hours: int = ENROLMENT_VALIDITY_HOURS,
    kdf: PassphraseProfile | None = None,
) -> Provisioned:
    """Make the user's identity key, sign their certificate, seal the enrolment package."""
    identity = IdentityKey.generate()
    licence = None if row.licence is None else certs.Licence(
        type=row.licence.type, number=row.licence.number,
        jurisdiction=row.licence.jurisdiction, expires_at=row.licence.expires_at)
    body = certs.UserCertificate(
        v=certs.CERTIFICATE_VERSION, serial=str(uuid.uuid4()), user_id=str(uuid.uuid4()),
        org_id=org_id, display_name=row.name,
        account_kind=certs.AccountKind.SERVICE if row.service else certs.AccountKind.CLINICIAN,
        roles=list(row.roles), specialty=row.specialty, department=row.department,
        licence=licence, identity_key=identity.public, not_before=now - CLOCK_SKEW,
        not_after=now + validity_days * 86400, issued_at=now,
    )
    return _enrolment(body, identity, row, org_key=org_key, now=now,
                      code_valid_hours=code_valid_hours, kdf=kdf)


def reissue_user(
    current: certs.UserCertificate, login: str, *, org_key: OrganisationKey, now: int,
    validity_days: int = CERTIFICATE_VALIDITY_DAYS,
    code_valid_hours: int = ENROLMENT_VALIDITY_HOURS, kdf: PassphraseProfile | None = None,
) -> Provisioned:
    """A new enrolment for a user who never enrolled. IT keeps no identity keys, so the user
    gets a new one and a new certificate (same user id, organisation, name, roles and licence;
    new serial, issued now) sealed under a new code; ``request`` is what the relay needs."""
    identity = IdentityKey.generate()
    body = msgspec.structs.replace(
        current, serial=str(uuid.uuid4()), identity_key=identity.public, issued_at=now,
        not_before=now - CLOCK_SKEW, not_after=now + validity_days * 86400)
    licence = None if current.licence is None else LicenceFields(
        type=current.licence.type, number=current.licence.number,
        jurisdiction=current.licence.jurisdiction, expires_at=current.licence.expires_at)
    row = UserRow(line=0, name=current.display_name, login=login, roles=tuple(current.roles),
                  specialty=current.specialty, department=current.department, licence=licence,
                  service=current.account_kind is certs.AccountKind.SERVICE)
    return _enrolment(body, identity, row, org_key=org_key, now=now,
                      code_valid_hours=code_valid_hours, kdf=kdf)


def renew_licence(
    current: certs.UserCertificate, *, org_key: OrganisationKey, expires_at: int, now: int,
    validity_days: int = CERTIFICATE_VALIDITY_DAYS,
) -> str:
    """A new certificate for the same user and identity key with a new licence expiry (and a
    new serial and validity period)."""
    if current.licence is None:
        raise ValueError("this account has no licence (a service account?)")
    if expires_at <= now:
        raise ValueError("the new licence expiry is in the past")
    return renew_certificate(
        current, org_key=org_key, now=now, validity_days=validity_days,
        licence=msgspec.structs.replace(current.licence, expires_at=expires_at))


def renew_certificate(
    current: certs.UserCertificate, *, org_key: OrganisationKey, now: int,
    validity_days: int = CERTIFICATE_VALIDITY_DAYS, **changes: Any,
) -> str:
    """The same user and identity key with ``changes`` (a licence, a display name, roles),
    a new serial and a validity period from now (never shorter than the one held).

    The relay keeps a renewal only if it was issued after the certificate it replaces
    (server/provisioning.py), and ``issued_at`` counts whole seconds: a certificate renewed in
    the second it was issued (a directory rename just after signing) is dated one second after
    the one it replaces."""
    issued_at = max(now, current.issued_at + 1)
    body = msgspec.structs.replace(
        current, serial=str(uuid.uuid4()), issued_at=issued_at, not_before=now - CLOCK_SKEW,
        not_after=max(current.not_after, now + validity_days * 86400), **changes)
    return certs.issue_user_certificate(body, org_key)


def next_revocation_list(
    current: certs.RevocationList | None,
    *,
    org_id: str,
    now: int,
    add: Iterable[certs.RevocationEntry] = (),
    remove_users: Iterable[str] = (),
) -> certs.RevocationList:
    """The next cumulative list: number + 1, previous entries kept except the users resumed
    (``remove_users``), ``add`` appended (replacing an entry for the same subject)."""
    removed = set(remove_users)
    additions = list(add)
    replaced = {(e.subject, e.id) for e in additions}
    entries = [] if current is None else [
        e for e in current.entries
        if not (e.subject is certs.RevocationSubject.USER and e.id in removed)
        and (e.subject, e.id) not in replaced
    ]
    return certs.RevocationList(
        v=certs.CERTIFICATE_VERSION, org_id=org_id,
        number=1 if current is None else current.number + 1, issued_at=now,
        entries=entries + additions,
    )
