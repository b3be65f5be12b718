"""protocol.vectors: the published vectors are exactly what the generator produces, and they
are self-consistent (decrypt and verify using only the JSON)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from protocol import certs, keys, statements, vectors
from protocol.attachments import decrypt_attachment
from protocol.canonical import b64url_decode
from protocol.envelope import MemorySeenSet, decode_sealed, open_message


@pytest.fixture(scope="module")
def published() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(vectors.VECTORS_PATH.read_text(encoding="utf-8"))
    return data


def test_regenerated_vectors_are_byte_identical_to_the_published_file() -> None:
    assert vectors.render() == vectors.VECTORS_PATH.read_text(encoding="utf-8"), (
        "protocol/vectors/v1.json is stale: run python -m protocol.vectors --write"
    )


def test_check_mode_reports_success_for_the_published_file() -> None:
    assert vectors.main(["--check"]) == 0


def test_deterministic_rng_is_reproducible_and_split_independent() -> None:
    a, b = vectors.DeterministicRng(b"s"), vectors.DeterministicRng(b"s")
    assert a(10) + a(40) == b(50)
    assert vectors.DeterministicRng(b"t")(50) != b(50)


def test_register_section_refuses_to_replace_an_existing_section() -> None:
    with pytest.raises(ValueError):
        vectors.register_section("keys", lambda ctx: {})


def test_published_sealed_message_opens_with_keys_taken_from_the_json(
    published: dict[str, Any],
) -> None:
    k = published["keys"]
    trusted = {k["organisation"]["org_id"]: b64url_decode(k["organisation"]["public"])}
    at = published["certificates"]["verify_at"]
    alice = certs.verify_chain(
        k["alice"]["user_certificate"],
        k["alice"]["device_certificate"],
        trusted_orgs=trusted,
        at=at,
        revocations=None,
    )
    bob = k["bob"]
    me = keys.DeviceKeys(
        device_id=bob["device_id"],
        signing=keys.Ed25519KeyPair.from_seed(b64url_decode(bob["device_signing_seed"])),
        dh=keys.X25519KeyPair.from_secret(b64url_decode(bob["device_dh_secret"])),
    )
    store = keys.MemoryPrekeyStore(
        [
            keys.Prekey(
                bob["signed_prekey"]["id"],
                keys.X25519KeyPair.from_secret(b64url_decode(bob["signed_prekey"]["secret"])),
            )
        ],
        [
            keys.Prekey(p["id"], keys.X25519KeyPair.from_secret(b64url_decode(p["secret"])))
            for p in bob["one_time_prekeys"]
        ],
    )
    sm = published["sealed_message"]
    sealed = decode_sealed(b64url_decode(sm["msgpack"]))
    body = open_message(sealed, me=me, prekeys=store, sender=alice, seen=MemorySeenSet())
    assert body.decode() == sm["body"]
    assert [r["device_id"] for r in sm["recipients"]] == sealed.header.recipient_devices
    assert sm["recipients"][0]["dh_one_time_prekey"] != ""
    assert sm["recipients"][1]["dh_one_time_prekey"] == ""


def test_published_attachment_decrypts_to_its_plaintext(published: dict[str, Any]) -> None:
    small = published["attachment"]["small"]
    plain = decrypt_attachment(
        b64url_decode(small["ciphertext"]),
        b64url_decode(small["key"]),
        expected_sha256=b64url_decode(small["plaintext_sha256"]),
    )
    assert plain == b64url_decode(small["plaintext"])


def test_published_passphrase_seal_opens(published: dict[str, Any]) -> None:
    seal = published["keys"]["passphrase_seal"]
    opened = keys.open_with_passphrase(b64url_decode(seal["sealed"]), seal["passphrase"])
    assert opened == b64url_decode(seal["secret"])


def test_published_statements_verify(published: dict[str, Any]) -> None:
    k = published["keys"]
    trusted = {k["organisation"]["org_id"]: b64url_decode(k["organisation"]["public"])}
    rl = certs.verify_revocation_list(published["revocation"]["token"], trusted_orgs=trusted)
    assert rl.number == 7
    filing = statements.verify_filing_statement(
        published["filing_statement"]["token"],
        b64url_decode(k["gateway"]["device_signing_public"]),
        device_id=k["gateway"]["device_id"],
    )
    assert filing.filed_at == published["time"]


def test_published_request_proof_verifies_from_the_json_and_binds_every_field(
    published: dict[str, Any],
) -> None:
    """A second implementation rebuilds ``Lightbox-Proof``'s signing input from the JSON alone;
    a proof moved to another body, query, method or token no longer verifies."""
    import hashlib

    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    from protocol.api import request_proof_input

    v = published["request_proof"]
    nonce = b64url_decode(v["nonce"])
    body = v["body"].encode()
    assert hashlib.sha256(body).hexdigest() == v["body_sha256"]
    rebuilt = request_proof_input(v["method"], v["target"], v["timestamp"], nonce, body,
                                  v["access_token"])
    assert rebuilt == b64url_decode(v["signing_input"])
    key = VerifyKey(b64url_decode(v["device_signing_public"]))
    signature = b64url_decode(v["signature"])
    key.verify(rebuilt, signature)
    assert v["header"] == f'{v["timestamp"]}.{v["nonce"]}.{v["signature"]}'
    target_without_query = v["target"].split("?")[0]
    for changed in (
        request_proof_input(v["method"], v["target"], v["timestamp"], nonce, b'{"users":[]}',
                            v["access_token"]),
        request_proof_input(v["method"], target_without_query, v["timestamp"], nonce, body,
                            v["access_token"]),
        request_proof_input("PUT", v["target"], v["timestamp"], nonce, body, v["access_token"]),
        request_proof_input(v["method"], v["target"], v["timestamp"], bytes(16), body,
                            v["access_token"]),
        request_proof_input(v["method"], v["target"], v["timestamp"], nonce, body, "other"),
    ):
        with pytest.raises(BadSignatureError):
            key.verify(changed, signature)


@pytest.mark.parametrize(("nonce", "target"), [(bytes(15), "/v1/x"), (bytes(16), "/v1/\x00")])
def test_request_proof_input_refuses_ambiguous_fields(nonce: bytes, target: str) -> None:
    from protocol.api import request_proof_input

    with pytest.raises(ValueError):
        request_proof_input("GET", target, 1, nonce, b"", "tok")
