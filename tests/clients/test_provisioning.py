"""clients/admin/provisioning.py: what IT's tool signs, and clients/sdk/identity.py's offline checks
(prekeys, the pairing result a new device accepts)."""

from __future__ import annotations

import hashlib

import msgspec
import pytest

from clients.admin.csvio import LicenceFields, UserRow
from clients.admin.provisioning import (
    next_revocation_list,
    provision_user,
    reissue_user,
    renew_licence,
)
from clients.sdk import identity
from clients.sdk.errors import FlowError
from protocol import api, certs, pairing
from protocol.canonical import (
    LABEL_ONE_TIME_PREKEY,
    LABEL_SIGNED_PREKEY,
    b64url_decode,
    b64url_encode,
    decode_struct,
    open_compact,
)
from protocol.keys import (
    CHEAP_PROFILE,
    DeviceKeys,
    IdentityKey,
    OrganisationKey,
    normalise_enrolment_code,
    open_with_passphrase,
)
from protocol.model import DeviceKind

NOW = 1767225600
ORG = OrganisationKey.generate()
ROW = UserRow(line=2, name="Ada Byron", login="ada.byron", roles=("physician",),
              specialty="orthopaedics", department=None,
              licence=LicenceFields("MD", "GMC-1", "UK", NOW + 86400 * 365))


def test_provisioned_user_certificate_and_sealed_bundle() -> None:
    p = provision_user(ROW, org_id="st-elsewhere", org_key=ORG, now=NOW, kdf=CHEAP_PROFILE)
    user = certs.verify_user_certificate(p.certificate, trusted_orgs={"st-elsewhere": ORG.public},
                                         at=NOW)
    assert (user.user_id, user.display_name, user.roles) == (p.user_id, "Ada Byron",
                                                              ["physician"])
    assert user.licence is not None and user.licence.number == "GMC-1"
    norm = normalise_enrolment_code(p.code)
    assert b64url_decode(p.request.enrolment_token_hash) == hashlib.sha256(
        api.enrolment_token(norm)).digest()
    bundle = decode_struct(open_with_passphrase(b64url_decode(p.request.sealed_identity), norm),
                           api.EnrolmentBundle)
    assert IdentityKey.from_seed(b64url_decode(bundle.identity_seed)).public == user.identity_key
    assert b64url_decode(bundle.org_public_key) == ORG.public
    assert p.request.enrolment_expires_at == NOW + 72 * 3600
    assert p.code not in repr(p)


def test_service_accounts_have_no_licence() -> None:
    row = UserRow(line=0, name="Record gateway", login="gateway", roles=("record_gateway",),
                  specialty=None, department=None, licence=None, service=True)
    p = provision_user(row, org_id="st-elsewhere", org_key=ORG, now=NOW, kdf=CHEAP_PROFILE)
    user = certs.verify_user_certificate(p.certificate, trusted_orgs={"st-elsewhere": ORG.public},
                                         at=NOW)
    assert user.is_record_gateway and user.licence is None


def test_a_reissue_keeps_the_user_with_a_new_identity_key_code_and_serial() -> None:
    p = provision_user(ROW, org_id="st-elsewhere", org_key=ORG, now=NOW, kdf=CHEAP_PROFILE)
    old = certs.verify_user_certificate(p.certificate, trusted_orgs={"st-elsewhere": ORG.public},
                                        at=NOW)
    later = NOW + 86400 * 5
    r = reissue_user(old, "ada.byron", org_key=ORG, now=later, code_valid_hours=24,
                     kdf=CHEAP_PROFILE)
    new = certs.verify_user_certificate(r.certificate, trusted_orgs={"st-elsewhere": ORG.public},
                                        at=later)
    assert r.user_id == new.user_id == old.user_id
    kept = ("org_id", "display_name", "account_kind", "roles", "specialty", "department",
            "licence")
    assert [getattr(new, f) for f in kept] == [getattr(old, f) for f in kept]
    assert new.identity_key != old.identity_key and new.serial != old.serial
    assert new.issued_at == later and new.not_before < later < new.not_after
    assert r.code != p.code and r.request.enrolment_expires_at == later + 24 * 3600
    assert (r.row.name, r.row.login, r.row.licence) == (ROW.name, ROW.login, ROW.licence)
    norm = normalise_enrolment_code(r.code)
    assert b64url_decode(r.request.enrolment_token_hash) == hashlib.sha256(
        api.enrolment_token(norm)).digest()
    bundle = decode_struct(open_with_passphrase(b64url_decode(r.request.sealed_identity), norm),
                           api.EnrolmentBundle)
    assert (bundle.user_id, bundle.login, bundle.org_id) == (old.user_id, "ada.byron",
                                                              "st-elsewhere")
    assert IdentityKey.from_seed(b64url_decode(bundle.identity_seed)).public == new.identity_key


def test_renewal_keeps_user_and_identity_key() -> None:
    p = provision_user(ROW, org_id="st-elsewhere", org_key=ORG, now=NOW, kdf=CHEAP_PROFILE)
    old = certs.verify_user_certificate(p.certificate, trusted_orgs={"st-elsewhere": ORG.public},
                                        at=NOW)
    later = NOW + 86400 * 400  # the old licence has expired by now
    token = renew_licence(old, org_key=ORG, expires_at=later + 86400 * 365, now=later)
    new = certs.verify_user_certificate(token, trusted_orgs={"st-elsewhere": ORG.public},
                                        at=later)
    assert (new.user_id, new.identity_key) == (old.user_id, old.identity_key)
    assert new.serial != old.serial
    assert new.licence is not None and new.licence.expires_at == later + 86400 * 365
    with pytest.raises(ValueError, match="past"):
        renew_licence(old, org_key=ORG, expires_at=NOW - 1, now=NOW)


def test_a_renewal_in_the_second_of_issue_is_dated_after_the_one_it_replaces() -> None:
    """The relay keeps only a renewal issued after the certificate held, to the second: a
    renewal signed in the same second (a directory rename just after signing) is dated the next
    one, still valid from now."""
    p = provision_user(ROW, org_id="st-elsewhere", org_key=ORG, now=NOW, kdf=CHEAP_PROFILE)
    old = certs.verify_user_certificate(p.certificate, trusted_orgs={"st-elsewhere": ORG.public},
                                        at=NOW)
    token = renew_licence(old, org_key=ORG, expires_at=NOW + 86400 * 365 * 3, now=NOW)
    new = certs.verify_user_certificate(token, trusted_orgs={"st-elsewhere": ORG.public},
                                        at=NOW)
    assert (old.issued_at, new.issued_at) == (NOW, NOW + 1)
    later = renew_licence(new, org_key=ORG, expires_at=NOW + 86400 * 365 * 3, now=NOW + 60)
    assert certs.verify_user_certificate(
        later, trusted_orgs={"st-elsewhere": ORG.public}, at=NOW + 60).issued_at == NOW + 60


def _entry(subject: certs.RevocationSubject, id_: str) -> certs.RevocationEntry:
    return certs.RevocationEntry(subject=subject, id=id_, revoked_at=NOW, reason="r", wipe=False)


def test_revocation_lists_are_cumulative_and_resume_removes_the_user() -> None:
    u1, d1 = "00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-0000000000d1"
    first = next_revocation_list(None, org_id="o", now=NOW,
                                 add=[_entry(certs.RevocationSubject.USER, u1)])
    assert first.number == 1
    second = next_revocation_list(first, org_id="o", now=NOW,
                                  add=[_entry(certs.RevocationSubject.DEVICE, d1)])
    assert second.number == 2 and [e.id for e in second.entries] == [u1, d1]
    third = next_revocation_list(second, org_id="o", now=NOW, remove_users=[u1])
    assert third.number == 3 and [e.id for e in third.entries] == [d1]
    token = certs.issue_revocation_list(third, ORG)
    assert certs.verify_revocation_list(token, trusted_orgs={"o": ORG.public}) == third


def _link_fixture() -> tuple[identity.PendingLink, api.PairingResult]:
    p = provision_user(ROW, org_id="st-elsewhere", org_key=ORG, now=NOW, kdf=CHEAP_PROFILE)
    norm = normalise_enrolment_code(p.code)
    bundle = decode_struct(open_with_passphrase(b64url_decode(p.request.sealed_identity), norm),
                           api.EnrolmentBundle)
    ident = IdentityKey.from_seed(b64url_decode(bundle.identity_seed))
    user = certs.verify_user_certificate(p.certificate, trusted_orgs={"st-elsewhere": ORG.public},
                                         at=NOW)
    code = pairing.generate_pairing_code()
    keys = DeviceKeys.generate("0b6f7c1e-58a4-4b8e-9f00-2d5a1c9e7b31")
    public = api.DeviceKeys(device_id=keys.device_id, kind=DeviceKind.DESKTOP,
                            signing_key=b64url_encode(keys.signing.public),
                            dh_key=b64url_encode(keys.dh.public))
    pending = identity.PendingLink(code=code, secret=pairing.PairingSecret(code), keys=keys,
                                   kind=DeviceKind.DESKTOP, public=public)
    device_cert = certs.issue_device_certificate(certs.DeviceCertificate(
        v=1, device_id=keys.device_id, user_id=user.user_id, org_id=user.org_id,
        kind=DeviceKind.DESKTOP, signing_key=keys.signing.public, dh_key=keys.dh.public,
        issued_at=NOW, not_after=NOW + 86400), ident)
    mac = pairing.result_mac(code, p.certificate, device_cert, ORG.public)
    result = api.PairingResult(user_certificate=p.certificate, device_certificate=device_cert,
                               org_public_key=b64url_encode(ORG.public), mac=b64url_encode(mac),
                               login="ada.byron")
    return pending, result


def test_a_genuine_pairing_result_verifies() -> None:
    pending, result = _link_fixture()
    verified, org_key = identity._verify_link_result(pending, result, NOW)
    assert org_key == ORG.public
    assert verified.device_id == pending.keys.device_id


def test_a_relay_cannot_substitute_the_organisation_key() -> None:
    pending, result = _link_fixture()
    rogue = OrganisationKey.generate()
    user = certs.verify_user_certificate(result.user_certificate,
                                         trusted_orgs={"st-elsewhere": ORG.public}, at=NOW)
    forged_user = certs.issue_user_certificate(user, rogue)
    forged = msgspec.structs.replace(result, user_certificate=forged_user,
                                     org_public_key=b64url_encode(rogue.public))
    with pytest.raises(FlowError) as exc:
        identity._verify_link_result(pending, forged, NOW)
    assert exc.value.code == "pairing_code_invalid"


def test_a_certificate_for_other_keys_is_refused_even_with_a_valid_mac() -> None:
    pending, result = _link_fixture()
    other = DeviceKeys.generate(pending.keys.device_id)
    swapped = identity.PendingLink(code=pending.code, secret=pending.secret, keys=other,
                                   kind=pending.kind, public=pending.public)
    with pytest.raises(FlowError) as exc:
        identity._verify_link_result(swapped, result, NOW)
    assert exc.value.code == "certificate_invalid"


def test_prekeys_are_signed_by_the_device_with_consecutive_ids() -> None:
    keys = DeviceKeys.generate("0b6f7c1e-58a4-4b8e-9f00-2d5a1c9e7b31")
    batch = identity.make_prekeys(keys, first_id=7, one_time=3, signed=True, now=NOW)
    assert batch.signed_secret is not None and batch.signed_secret.prekey_id == 7
    assert [s.prekey_id for s in batch.one_time_secrets] == [8, 9, 10]
    assert batch.next_prekey_id == 11
    first = open_compact(LABEL_ONE_TIME_PREKEY, batch.one_time_tokens[0], certs.OneTimePrekey,
                         keys.signing.public)
    assert (first.device_id, first.prekey_id) == (keys.device_id, 8)
    assert batch.signed_token is not None
    spk = open_compact(LABEL_SIGNED_PREKEY, batch.signed_token, certs.SignedPrekey,
                       keys.signing.public)
    assert (spk.prekey_id, spk.created_at) == (7, NOW)
