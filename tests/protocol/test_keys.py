"""protocol.keys: key types, key ids, secrets that never print, passphrase sealing."""

from __future__ import annotations

import pickle
import struct
from typing import Any

import pytest

from protocol import keys
from protocol.errors import DecodeError, ErrorCode, ProtocolError, VerificationError
from protocol.keys import (
    CHEAP_PROFILE,
    DeviceKeys,
    Ed25519KeyPair,
    OrganisationKey,
    SecretBytes,
    X25519KeyPair,
    generate_enrolment_code,
    key_id,
    normalise_enrolment_code,
    open_with_passphrase,
    seal_with_passphrase,
)
from tests.protocol.crypto_world import DeterministicRng, flip_bit

CHEAP: dict[str, Any] = {"opslimit": CHEAP_PROFILE.opslimit, "memlimit": CHEAP_PROFILE.memlimit}


def test_ed25519_matches_rfc8032_test_vector_1() -> None:
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    key = Ed25519KeyPair.from_seed(seed)
    assert key.public.hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert key.sign(b"").hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )


def test_x25519_matches_rfc7748_section_6_1() -> None:
    alice = X25519KeyPair.from_secret(
        bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    )
    bob = X25519KeyPair.from_secret(
        bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    )
    assert alice.public.hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    assert alice.dh(bob.public).hex() == shared
    assert bob.dh(alice.public).hex() == shared


def test_x25519_refuses_a_low_order_peer_key() -> None:
    key = X25519KeyPair.generate()
    with pytest.raises(VerificationError):
        key.dh(bytes(32))


def test_keys_are_reproducible_from_an_injected_rng() -> None:
    a = DeviceKeys.generate("d", DeterministicRng(b"seed"))
    b = DeviceKeys.generate("d", DeterministicRng(b"seed"))
    assert a.signing.public == b.signing.public and a.dh.public == b.dh.public
    assert a.signing.seed == b.signing.seed


def test_secrets_never_appear_in_repr_or_str() -> None:
    org = OrganisationKey.generate()
    dev = DeviceKeys.generate("d")
    seed = org.seed.reveal()
    for text in (repr(org), str(org.seed), repr(dev), repr(dev.dh), f"{dev.signing}"):
        assert seed.hex() not in text and repr(seed) not in text
        assert dev.dh.secret.reveal().hex() not in text
        assert repr(dev.dh.secret.reveal()) not in text
    assert "*" in repr(SecretBytes(b"x"))


def test_secret_bytes_cannot_be_pickled_or_hashed() -> None:
    with pytest.raises(TypeError):
        pickle.dumps(SecretBytes(b"secret"))
    with pytest.raises(TypeError):
        hash(SecretBytes(b"secret"))


def test_key_id_is_b64url_of_the_first_16_bytes_of_sha256() -> None:
    public = bytes(32)
    # SHA-256 of 32 zero bytes starts 66687aadf862bd776c8fc18b8e9f8e20
    assert key_id(public) == "Zmh6rfhivXdsj8GLjp-OIA"
    assert OrganisationKey.from_seed(bytes(32)).key_id == key_id(
        OrganisationKey.from_seed(bytes(32)).public
    )


def test_passphrase_seal_round_trips_and_stores_its_parameters() -> None:
    sealed = seal_with_passphrase(b"org seed" * 4, "correct horse", **CHEAP)
    assert sealed[:4] == b"LBPW"
    assert struct.unpack(">IQ", sealed[6:18]) == (CHEAP["opslimit"], CHEAP["memlimit"])
    assert open_with_passphrase(sealed, "correct horse") == b"org seed" * 4


def test_passphrase_seal_with_a_wrong_passphrase_raises_verification_error() -> None:
    sealed = seal_with_passphrase(b"secret", "correct horse", **CHEAP)
    with pytest.raises(VerificationError):
        open_with_passphrase(sealed, "correct horsf")


def test_passphrase_seal_normalises_unicode_passphrases_nfkc() -> None:
    sealed = seal_with_passphrase(b"secret", "\ufb01le", **CHEAP)  # "ﬁle" ligature
    assert open_with_passphrase(sealed, "file") == b"secret"


def test_passphrase_seal_detects_every_single_bit_flip() -> None:
    sealed = seal_with_passphrase(b"s" * 32, "pw", **CHEAP)
    for bit in range(len(sealed) * 8):
        with pytest.raises(ProtocolError):
            open_with_passphrase(flip_bit(sealed, bit), "pw")


def test_passphrase_open_refuses_forged_huge_parameters_before_hashing() -> None:
    sealed = bytearray(seal_with_passphrase(b"secret", "pw", **CHEAP))
    struct.pack_into(">Q", sealed, 10, 1 << 40)  # 1 TiB memlimit
    with pytest.raises(DecodeError):
        open_with_passphrase(bytes(sealed), "pw")


@pytest.mark.parametrize("data", [b"", b"LBPW", b"XXXX" + bytes(100)])
def test_passphrase_open_rejects_malformed_input_with_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        open_with_passphrase(data, "pw")


def test_identity_key_sealed_under_an_enrolment_code_opens_with_the_typed_code() -> None:
    rng = DeterministicRng(b"enrol")
    code = generate_enrolment_code(rng)
    identity = keys.IdentityKey.generate(rng)
    sealed = seal_with_passphrase(identity.seed.reveal(), code, **CHEAP, rng=rng)
    typed = code.lower().replace("-", " ").replace("0", "o")
    opened = open_with_passphrase(sealed, normalise_enrolment_code(typed))
    assert keys.IdentityKey.from_seed(opened).public == identity.public


def test_enrolment_codes_carry_100_bits_in_20_crockford_symbols() -> None:
    codes = {generate_enrolment_code() for _ in range(50)}
    assert len(codes) == 50
    for code in codes:
        assert len(code) == 24 and code.count("-") == 4
        assert normalise_enrolment_code(code) == code
    assert keys.ENROLMENT_CODE_BITS == 100


@pytest.mark.parametrize(
    "typed", ["", "ABCD", "ABCD-EFGH-JKMN-PQRS-TVWX-Y", "ABCD-EFGH-JKMN-PQRS-TVW!"]
)
def test_malformed_enrolment_codes_are_rejected_with_their_code(typed: str) -> None:
    with pytest.raises(DecodeError) as info:
        normalise_enrolment_code(typed)
    assert info.value.code is ErrorCode.ENROLMENT_CODE_INVALID


def test_memory_prekey_store_forgets_deleted_one_time_prekeys() -> None:
    rng = DeterministicRng(b"store")
    spk = keys.Prekey.generate(1, rng)
    otks = keys.generate_one_time_prekeys(10, 3, rng)
    store = keys.MemoryPrekeyStore([spk], otks)
    assert [p.prekey_id for p in otks] == [10, 11, 12]
    assert store.one_time_prekey(11) == otks[1].keypair
    store.delete_one_time(11)
    assert store.one_time_prekey(11) is None
    assert store.signed_prekey(1) == spk.keypair
