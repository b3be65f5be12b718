"""protocol.certs: the organisation -> user -> device chain, prekeys and revocation."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import canonical, certs, keys
from protocol.certs import (
    AccountKind,
    RevocationEntry,
    RevocationList,
    RevocationSet,
    RevocationSubject,
    verify_chain,
    verify_user_certificate,
)
from protocol.errors import ErrorCode, VerificationError
from protocol.model import DeviceKind
from tests.protocol.crypto_world import ORG_ID, T0, DeterministicRng, flip_char_bit, world

FAST = settings(max_examples=80, deadline=None)


def _trusted() -> dict[str, bytes]:
    return world().trusted_orgs


def _reject(code: ErrorCode, user: str, device: str, *, at: int = T0, **kw: object) -> None:
    with pytest.raises(VerificationError) as info:
        verify_chain(
            user,
            device,
            trusted_orgs=kw.pop("trusted_orgs", _trusted()),  # type: ignore[arg-type]
            at=at,
            revocations=kw.pop("revocations", None),  # type: ignore[arg-type]
        )
    assert info.value.code is code, info.value.reason
    assert str(info.value) == "verification failed"  # opaque to peers


def _user(**changes: object) -> str:
    body = msgspec.structs.replace(world().alice.user, **changes)
    return certs.issue_user_certificate(body, world().org)


def _device(identity: keys.Ed25519KeyPair | None = None, **changes: object) -> str:
    body = msgspec.structs.replace(world().alice.device, **changes)
    return certs.issue_device_certificate(body, identity or world().alice.identity)


def _revocations(*entries: RevocationEntry, number: int = 1) -> RevocationSet:
    rl = RevocationList(v=1, org_id=ORG_ID, number=number, issued_at=T0, entries=list(entries))
    token = certs.issue_revocation_list(rl, world().org)
    return RevocationSet([certs.verify_revocation_list(token, trusted_orgs=_trusted())])


def _entry(subject: RevocationSubject, id_: str) -> RevocationEntry:
    return RevocationEntry(subject=subject, id=id_, revoked_at=T0 - 1, reason="lost", wipe=True)


def test_valid_chain_verifies_and_returns_both_bodies() -> None:
    a = world().alice
    verified = verify_chain(
        a.user_token, a.device_token, trusted_orgs=_trusted(), at=T0, revocations=None
    )
    assert verified.user == a.user and verified.device == a.device
    assert verified.device_id == a.device_keys.device_id
    assert verified.signing_key == a.device_keys.signing.public
    assert verified.dh_key == a.device_keys.dh.public


def test_record_gateway_service_account_without_licence_verifies() -> None:
    gw = world().gateway
    verified = verify_chain(
        gw.user_token, gw.device_token, trusted_orgs=_trusted(), at=T0, revocations=None
    )
    assert verified.user.is_record_gateway and verified.user.licence is None
    assert verified.device.kind is DeviceKind.GATEWAY


def test_user_certificate_before_not_before_is_rejected_as_expired() -> None:
    _reject(ErrorCode.CERTIFICATE_EXPIRED, _user(not_before=T0 + 1), world().alice.device_token)


def test_user_certificate_at_not_after_is_rejected_as_expired() -> None:
    _reject(ErrorCode.CERTIFICATE_EXPIRED, _user(not_after=T0), world().alice.device_token)


def test_device_certificate_past_not_after_is_rejected_as_expired() -> None:
    _reject(ErrorCode.CERTIFICATE_EXPIRED, world().alice.user_token, _device(not_after=T0 - 1))


def test_device_certificate_issued_in_the_future_is_rejected_as_expired() -> None:
    _reject(ErrorCode.CERTIFICATE_EXPIRED, world().alice.user_token, _device(issued_at=T0 + 60))


def test_clinician_with_expired_licence_is_rejected_with_licence_expired() -> None:
    current = world().alice.user.licence
    assert current is not None
    licence = msgspec.structs.replace(current, expires_at=T0)
    _reject(ErrorCode.LICENCE_EXPIRED, _user(licence=licence), world().alice.device_token)


def test_issuing_a_clinician_certificate_without_licence_is_refused() -> None:
    with pytest.raises(VerificationError):
        _user(licence=None)


def test_clinician_certificate_without_licence_signed_anyway_is_rejected() -> None:
    body = msgspec.structs.replace(world().alice.user, licence=None)
    token = canonical.sign_compact(
        canonical.LABEL_USER_CERTIFICATE, canonical.encode_struct(body), world().org
    )
    _reject(ErrorCode.CERTIFICATE_INVALID, token, world().alice.device_token)


def test_revoked_user_is_rejected_as_revoked() -> None:
    revs = _revocations(_entry(RevocationSubject.USER, world().alice.user.user_id))
    _reject(
        ErrorCode.CERTIFICATE_REVOKED,
        world().alice.user_token,
        world().alice.device_token,
        revocations=revs,
    )


def test_revoked_device_is_rejected_as_revoked() -> None:
    revs = _revocations(_entry(RevocationSubject.DEVICE, world().alice.device_keys.device_id))
    _reject(
        ErrorCode.CERTIFICATE_REVOKED,
        world().alice.user_token,
        world().alice.device_token,
        revocations=revs,
    )


def test_revocation_of_another_device_does_not_affect_this_one() -> None:
    revs = _revocations(_entry(RevocationSubject.DEVICE, world().bob.device_keys.device_id))
    a = world().alice
    assert (
        verify_chain(
            a.user_token, a.device_token, trusted_orgs=_trusted(), at=T0, revocations=revs
        ).device_id
        == a.device_keys.device_id
    )


def test_revocation_list_of_another_organisation_cannot_revoke_our_users() -> None:
    other = keys.OrganisationKey.generate(DeterministicRng(b"other-org"))
    rl = RevocationList(
        v=1,
        org_id="other-org",
        number=1,
        issued_at=T0,
        entries=[_entry(RevocationSubject.USER, world().alice.user.user_id)],
    )
    token = certs.issue_revocation_list(rl, other)
    revs = RevocationSet(
        [certs.verify_revocation_list(token, trusted_orgs={"other-org": other.public})]
    )
    a = world().alice
    verify_chain(a.user_token, a.device_token, trusted_orgs=_trusted(), at=T0, revocations=revs)


def test_user_certificate_signed_by_another_organisations_key_is_rejected() -> None:
    other = keys.OrganisationKey.generate(DeterministicRng(b"other-org"))
    token = certs.issue_user_certificate(world().alice.user, other)
    _reject(ErrorCode.CERTIFICATE_INVALID, token, world().alice.device_token)


def test_user_certificate_of_an_unpinned_organisation_is_untrusted() -> None:
    _reject(
        ErrorCode.CERTIFICATE_UNTRUSTED,
        world().alice.user_token,
        world().alice.device_token,
        trusted_orgs={"another": world().org.public},
    )


def test_device_certificate_signed_by_another_users_identity_key_is_rejected() -> None:
    _reject(
        ErrorCode.CERTIFICATE_INVALID,
        world().alice.user_token,
        _device(identity=world().bob.identity),
    )


def test_device_certificate_naming_another_user_is_rejected_even_if_validly_signed() -> None:
    _reject(
        ErrorCode.CERTIFICATE_INVALID,
        world().alice.user_token,
        _device(user_id=world().bob.user.user_id),
    )


def test_gateway_device_of_a_clinician_account_is_rejected() -> None:
    _reject(
        ErrorCode.CERTIFICATE_INVALID, world().alice.user_token, _device(kind=DeviceKind.GATEWAY)
    )


def test_user_certificate_presented_as_device_certificate_is_rejected() -> None:
    a = world().alice
    _reject(ErrorCode.CERTIFICATE_INVALID, a.user_token, a.user_token)


def test_unsupported_certificate_version_is_rejected() -> None:
    body = msgspec.structs.replace(world().alice.user, v=2)
    token = canonical.sign_compact(
        canonical.LABEL_USER_CERTIFICATE, canonical.encode_struct(body), world().org
    )
    _reject(ErrorCode.CERTIFICATE_INVALID, token, world().alice.device_token)


def test_oversize_certificate_is_rejected_as_invalid() -> None:
    _reject(ErrorCode.CERTIFICATE_INVALID, "A" * 100_000, world().alice.device_token)


@FAST
@given(st.data())
def test_any_single_bit_flip_in_either_certificate_is_rejected(data: st.DataObject) -> None:
    a = world().alice
    which = data.draw(st.sampled_from(["user", "device"]))
    token = a.user_token if which == "user" else a.device_token
    bit = data.draw(st.integers(0, len(token) * 8 - 1))
    flipped = flip_char_bit(token, bit)
    user, device = (flipped, a.device_token) if which == "user" else (a.user_token, flipped)
    with pytest.raises(VerificationError):
        verify_chain(user, device, trusted_orgs=_trusted(), at=T0, revocations=None)


def test_verify_user_certificate_alone_returns_the_body() -> None:
    body = verify_user_certificate(world().bob.user_token, trusted_orgs=_trusted(), at=T0)
    assert body == world().bob.user and body.account_kind is AccountKind.CLINICIAN


# --- prekeys -----------------------------------------------------------------------------------


def test_signed_and_one_time_prekeys_verify_under_their_device_key() -> None:
    bob = world().bob
    spk = certs.verify_signed_prekey(bob.signed_prekey_token, bob.verified())
    otk = certs.verify_one_time_prekey(bob.one_time_prekey_tokens[0], bob.verified())
    assert spk.public == bob.signed_prekey.public
    assert otk.public == bob.one_time_prekeys[0].public


def test_prekey_presented_for_another_device_is_rejected() -> None:
    with pytest.raises(VerificationError):
        certs.verify_signed_prekey(world().bob.signed_prekey_token, world().alice.verified())
    with pytest.raises(VerificationError):
        certs.verify_one_time_prekey(
            world().bob.one_time_prekey_tokens[0], world().alice.verified()
        )


def test_prekey_naming_another_device_but_signed_by_this_one_is_rejected() -> None:
    bob, alice = world().bob, world().alice
    body = certs.SignedPrekey(
        device_id=bob.device_keys.device_id, prekey_id=9, public=bytes(32), created_at=T0
    )
    token = certs.issue_signed_prekey(body, alice.device_keys.signing)
    with pytest.raises(VerificationError):
        certs.verify_signed_prekey(token, alice.verified())


def test_signed_prekey_cannot_pass_as_one_time_prekey() -> None:
    bob = world().bob
    with pytest.raises(VerificationError):
        certs.verify_one_time_prekey(bob.signed_prekey_token, bob.verified())


@FAST
@given(st.data())
def test_any_single_bit_flip_in_a_prekey_is_rejected(data: st.DataObject) -> None:
    bob = world().bob
    token = data.draw(st.sampled_from([bob.signed_prekey_token, bob.one_time_prekey_tokens[0]]))
    flipped = flip_char_bit(token, data.draw(st.integers(0, len(token) * 8 - 1)))
    with pytest.raises(VerificationError):
        certs.verify_signed_prekey(flipped, bob.verified())
    with pytest.raises(VerificationError):
        certs.verify_one_time_prekey(flipped, bob.verified())


# --- revocation lists --------------------------------------------------------------------------


def _rl_token(
    number: int, *entries: RevocationEntry, org: keys.OrganisationKey | None = None
) -> str:
    rl = RevocationList(v=1, org_id=ORG_ID, number=number, issued_at=T0, entries=list(entries))
    return certs.issue_revocation_list(rl, org or world().org)


def test_revocation_list_signed_by_another_key_is_rejected() -> None:
    other = keys.OrganisationKey.generate(DeterministicRng(b"other-org"))
    with pytest.raises(VerificationError):
        certs.verify_revocation_list(_rl_token(1, org=other), trusted_orgs=_trusted())


def test_revocation_set_refuses_to_roll_back_to_an_older_list() -> None:
    revs = RevocationSet()
    assert revs.add(certs.verify_revocation_list(_rl_token(5), trusted_orgs=_trusted()))
    assert not revs.add(certs.verify_revocation_list(_rl_token(5), trusted_orgs=_trusted()))
    with pytest.raises(VerificationError):
        revs.add(certs.verify_revocation_list(_rl_token(4), trusted_orgs=_trusted()))
    assert revs.number(ORG_ID) == 5


def test_revocation_set_refuses_two_different_lists_with_the_same_number() -> None:
    revs = RevocationSet([certs.verify_revocation_list(_rl_token(5), trusted_orgs=_trusted())])
    forked = _rl_token(5, _entry(RevocationSubject.USER, world().bob.user.user_id))
    with pytest.raises(VerificationError):
        revs.add(certs.verify_revocation_list(forked, trusted_orgs=_trusted()))


def test_newer_revocation_list_replaces_the_older_one() -> None:
    bob_user = world().bob.user.user_id
    revs = RevocationSet(
        [
            certs.verify_revocation_list(
                _rl_token(1, _entry(RevocationSubject.USER, bob_user)), trusted_orgs=_trusted()
            )
        ]
    )
    assert revs.user_entry(ORG_ID, bob_user) is not None
    revs.add(certs.verify_revocation_list(_rl_token(2), trusted_orgs=_trusted()))
    assert revs.user_entry(ORG_ID, bob_user) is None


@FAST
@given(st.integers(min_value=0))
def test_any_single_bit_flip_in_a_revocation_list_is_rejected(bit: int) -> None:
    token = _rl_token(3, _entry(RevocationSubject.DEVICE, world().bob.device_keys.device_id))
    with pytest.raises(VerificationError):
        certs.verify_revocation_list(flip_char_bit(token, bit), trusted_orgs=_trusted())
