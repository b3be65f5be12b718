"""protocol/body.py: the sealed body round-trips, and every malformed, oversize or
inconsistent body is refused with its code."""

from __future__ import annotations

import uuid

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.attachments import AttachmentDescriptor
from protocol.body import (
    MAX_TEXT,
    Body,
    BodyKind,
    BurnedInIdentifiers,
    ConsentFiling,
    FilingReceipt,
    HandoverOf,
    IdentifierKind,
    OriginalStudy,
    RecordData,
    Sex,
    decode_body,
    encode_body,
)
from protocol.errors import DecodeError, ErrorCode, LimitExceeded


def _descriptor(aid: str | None = None) -> AttachmentDescriptor:
    return AttachmentDescriptor(attachment_id=aid or str(uuid.uuid4()), key=bytes(range(32)),
                                sha256=bytes(32), size=1234, media_type="image/jpeg",
                                width=640, height=480)


def _record() -> RecordData:
    return RecordData(patient_name="Doe^Jane", patient_id="MRN-1", issuer_of_patient_id="STE",
                      birth_date="1960-02-01", sex=Sex.FEMALE, accession_number="ACC1",
                      anatomic_region="wrist")


def test_an_image_consult_round_trips_with_record_data_and_consent() -> None:
    body = Body(text="Distal radius?", attachments=[_descriptor()], consent_token="a.b.c",
                record=_record(), necessity=None, reply_to=str(uuid.uuid4()),
                quality_warnings=["blur"])
    assert decode_body(encode_body(body)) == body


def test_a_filing_receipt_round_trips() -> None:
    receipt = FilingReceipt(attachment_id=str(uuid.uuid4()), message_id=str(uuid.uuid4()),
                            study_instance_uid="1.2.3", series_instance_uid="1.2.3.4",
                            sop_instance_uid="1.2.3.4.5", filed_at=1767225600,
                            retrieve_url="http://pacs/studies/1.2.3", record_ref="ACC1")
    body = Body(kind=BodyKind.FILING_RECEIPT, filing=receipt)
    assert decode_body(encode_body(body)).filing == receipt


@given(st.text(min_size=1, max_size=200).filter(lambda s: s.strip() and s.isprintable()))
def test_any_printable_text_round_trips(text: str) -> None:
    assert decode_body(encode_body(Body(text=text))).text == text


def test_repr_hides_text_keys_and_patient_data() -> None:
    body = Body(text="secret words", attachments=[_descriptor()], record=_record())
    shown = repr(body) + repr(body.record) + repr(body.attachments[0])
    assert "secret" not in shown and "Doe" not in shown and "MRN" not in shown


@pytest.mark.parametrize(("raw", "code"), [
    (b"\xc1", ErrorCode.VALIDATION_FAILED),  # not MessagePack
    (msgspec.msgpack.encode({"v": 1, "kind": "text", "text": "x", "surprise": 1}),
     ErrorCode.VALIDATION_FAILED),  # unknown field
    (msgspec.msgpack.encode({"v": 1, "kind": "gossip", "text": "x"}),
     ErrorCode.VALIDATION_FAILED),  # unknown kind
    (msgspec.msgpack.encode({"v": 2, "kind": "text", "text": "x"}),
     ErrorCode.UNSUPPORTED_VERSION),
    (msgspec.msgpack.encode({"kind": "text", "text": "x" * (MAX_TEXT + 1)}),
     ErrorCode.VALIDATION_FAILED),  # oversize text
    (msgspec.msgpack.encode({"kind": "text", "text": "  "}), ErrorCode.VALIDATION_FAILED),
    (msgspec.msgpack.encode({"kind": "subject"}), ErrorCode.VALIDATION_FAILED),
    (msgspec.msgpack.encode({"kind": "filing_receipt"}), ErrorCode.VALIDATION_FAILED),
    (msgspec.msgpack.encode({"kind": "text", "text": "x", "reply_to": "not-a-uuid"}),
     ErrorCode.VALIDATION_FAILED),
    (msgspec.msgpack.encode({"kind": "text", "text": "bell\x07"}), ErrorCode.VALIDATION_FAILED),
])
def test_malformed_bodies_are_refused_with_their_code(raw: bytes, code: ErrorCode) -> None:
    with pytest.raises(DecodeError) as err:
        decode_body(raw)
    assert err.value.code == code


def test_oversize_input_is_refused_before_parsing() -> None:
    with pytest.raises(LimitExceeded) as err:
        decode_body(b"\x00" * (256 * 1024 + 1))
    assert err.value.code == ErrorCode.MESSAGE_TOO_LARGE


def test_record_data_without_an_image_is_refused() -> None:
    with pytest.raises(DecodeError):
        encode_body(Body(text="x", record=_record()))


def test_a_handed_over_copy_whose_images_expired_keeps_its_patient_data() -> None:
    """docs/PROTOCOL.md §14 "record": the incoming clinician still sees whom it is about."""
    copy = Body(text="x", record=_record(), handover_of=HandoverOf(
        message_id=str(uuid.uuid4()), sender_user_id=str(uuid.uuid4()),
        sender_device_id=str(uuid.uuid4()), sent_at=1))
    assert decode_body(encode_body(copy)) == copy


def test_the_same_attachment_twice_is_refused() -> None:
    d = _descriptor()
    with pytest.raises(DecodeError):
        encode_body(Body(attachments=[d, d]))


def test_a_newline_in_the_patient_name_is_refused() -> None:
    bad = msgspec.structs.replace(_record(), patient_name="Doe^Jane\nX")
    with pytest.raises(DecodeError):
        encode_body(Body(attachments=[_descriptor()], record=bad))


def test_a_receipt_on_a_text_body_is_refused() -> None:
    receipt = FilingReceipt(attachment_id=str(uuid.uuid4()), message_id=str(uuid.uuid4()),
                            study_instance_uid="1.2", series_instance_uid="1.3",
                            sop_instance_uid="1.4", filed_at=1)
    with pytest.raises(DecodeError):
        encode_body(Body(text="x", filing=receipt))


def _consent_filing() -> ConsentFiling:
    return ConsentFiling(consent_id=str(uuid.uuid4()), message_id=str(uuid.uuid4()),
                         decision="refused", study_instance_uid="2.25.7", filed_at=1)


def test_a_consent_record_and_its_receipt_round_trip() -> None:
    """A consent filed without images, and the gateway's answer."""
    record = Body(kind=BodyKind.CONSENT_RECORD, consent_token="a.b.c", record=_record())
    assert decode_body(encode_body(record)) == record
    filed = Body(kind=BodyKind.CONSENT_FILED, consent_filing=_consent_filing())
    assert decode_body(encode_body(filed)) == filed


@pytest.mark.parametrize("body", [
    Body(kind=BodyKind.CONSENT_RECORD, record=_record()),  # no token
    Body(kind=BodyKind.CONSENT_RECORD, consent_token="a.b.c"),  # no patient
    Body(kind=BodyKind.CONSENT_RECORD, consent_token="a.b.c", record=_record(),
         attachments=[_descriptor()]),  # a consent record carries no image
    Body(kind=BodyKind.CONSENT_FILED),  # no receipt
    Body(kind=BodyKind.CONSENT_FILED, consent_filing=_consent_filing(), record=_record()),
    Body(text="x", consent_filing=_consent_filing()),  # a receipt on a text body
], ids=["no-token", "no-record", "with-image", "no-receipt", "receipt-with-record",
        "receipt-on-text"])
def test_inconsistent_consent_bodies_are_refused(body: Body) -> None:
    with pytest.raises(DecodeError) as err:
        encode_body(body)
    assert err.value.code == ErrorCode.VALIDATION_FAILED


def test_an_original_study_link_must_be_http() -> None:
    """The viewer shows the link; a receiver refuses anything but http(s)."""
    def receipt(url: str) -> bytes:
        return msgspec.msgpack.encode(Body(kind=BodyKind.FILING_RECEIPT, filing=FilingReceipt(
            attachment_id=str(uuid.uuid4()), message_id=str(uuid.uuid4()),
            study_instance_uid="1.2", series_instance_uid="1.3", sop_instance_uid="1.4",
            filed_at=1, original_studies=[OriginalStudy(study_instance_uid="1.9", url=url)])))

    assert decode_body(receipt("https://pacs.example.org/v?s=1.9")).filing is not None
    assert decode_body(receipt("")).filing is not None
    for bad in ("javascript:alert(1)", "data:text/html,x", "https://a b", "//pacs/x"):
        with pytest.raises(DecodeError) as err:
            decode_body(receipt(bad))
        assert err.value.code == ErrorCode.VALIDATION_FAILED


# --- identifiers burned into an image --------------------------------------------------------


def test_burned_in_identifier_kinds_travel_with_their_image() -> None:
    image = _descriptor()
    flagged = BurnedInIdentifiers(attachment_id=image.attachment_id,
                                  kinds=[IdentifierKind.NAME, IdentifierKind.DATE_OF_BIRTH])
    body = Body(text="wrist?", attachments=[image], burned_in_identifiers=[flagged])
    assert decode_body(encode_body(body)).burned_in_identifiers == [flagged]


def test_a_body_from_before_burned_in_identifiers_decodes_with_none() -> None:
    older = msgspec.msgpack.encode({"v": 1, "kind": "text", "text": "hello"})
    assert decode_body(older).burned_in_identifiers == []


def _raw_with_flags(flags: object, aid: str) -> bytes:
    image = msgspec.to_builtins(_descriptor(aid), builtin_types=(bytes,))
    return msgspec.msgpack.encode({"v": 1, "text": "x", "attachments": [image],
                                   "burned_in_identifiers": flags})


@pytest.mark.parametrize("flags", [
    [{"attachment_id": "A", "kinds": ["date_of_birth"]}],  # not a uuid
    [{"attachment_id": "OTHER", "kinds": ["name"]}],  # not an attachment of this body
    [{"attachment_id": "SAME", "kinds": []}],  # no kind
    [{"attachment_id": "SAME", "kinds": ["birthday"]}],  # not a kind
    [{"attachment_id": "SAME", "kinds": ["name", "name"]}],  # a kind twice
    [{"attachment_id": "SAME", "kinds": ["name"]}, {"attachment_id": "SAME", "kinds": ["age"]}],
    [{"attachment_id": "SAME", "kinds": ["name"], "text": "DOE^JOHN"}],  # never the text
    "name",
])
def test_malformed_burned_in_identifiers_are_refused(flags: object) -> None:
    aid = str(uuid.uuid4())
    valid = decode_body(_raw_with_flags([{"attachment_id": aid, "kinds": ["age"]}], aid))
    assert valid.burned_in_identifiers[0].kinds == [IdentifierKind.AGE]
    concrete = msgspec.json.decode(msgspec.json.encode(flags).replace(
        b'"SAME"', f'"{aid}"'.encode()).replace(b'"OTHER"', f'"{uuid.uuid4()}"'.encode()))
    with pytest.raises(DecodeError) as exc:
        decode_body(_raw_with_flags(concrete, aid))
    assert exc.value.code is ErrorCode.VALIDATION_FAILED
