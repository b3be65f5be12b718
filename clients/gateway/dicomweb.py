"""DICOMweb on the wire, without I/O: the errors a PACS answer maps to, what a store or a query
returns, and the reading of its answers (multipart/related bodies, PS3.18 §8.6; STOW-RS
response data sets, PS3.18 §10.5.3; DICOM JSON, PS3.18 Annex F) and the building of a
``multipart/related`` request (RFC 2387).
"""

from __future__ import annotations

import contextlib
import email
import email.message
import email.policy
import io
import json
import secrets
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, time
from typing import Any, Final

import httpx
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.valuerep import PersonName

from clients.gateway.dicom import is_uid

__all__ = [
    "FAILURE_REASONS",
    "FailedInstance",
    "InstanceRef",
    "PacsAuthError",
    "PacsConflict",
    "PacsError",
    "PacsNotFound",
    "PacsProtocolError",
    "PacsRejected",
    "PacsUnavailable",
    "PacsVerificationFailed",
    "StoreResult",
    "StoredInstance",
    "StudyRef",
    "checked_uid",
    "da_date",
    "dicom_json",
    "ds_int",
    "ds_text",
    "ds_values",
    "error_text",
    "is_tag",
    "multipart_parts",
    "multipart_related",
    "orthanc_message",
    "parse_part",
    "raise_for_status",
    "rejection_reason",
    "sent_uid",
    "store_result",
    "tm_time",
    "unacknowledged",
]


# PS3.4 Annex GG.4 / PS3.18 Table 10.5.3-2: STOW-RS failure and warning reasons.
FAILURE_REASONS: Final[Mapping[int, str]] = {
    0x0110: "processing failure",
    0x0122: "SOP class not supported",
    0x0124: "not authorized",
    0xA700: "out of resources",
    0xA900: "data set does not match SOP class",
    0xC000: "cannot understand",
    0xC122: "transfer syntax not supported",
    0xB000: "coercion of data elements",
    0xB006: "elements discarded",
    0xB007: "data set does not match SOP class (warning)",
}


class PacsError(Exception):
    """Base of every PACS failure."""

    retryable: bool = False


class PacsUnavailable(PacsError):
    """The PACS cannot be reached or is failing; the same request may succeed later."""

    retryable = True


class PacsAuthError(PacsError):
    """The PACS refused the gateway's credentials (401) or its permissions (403)."""


class PacsRejected(PacsError):
    """The PACS refused the request or the object; sending it again will not help."""

    def __init__(self, reason: str, *, status: int, result: StoreResult | None = None) -> None:
        super().__init__(f"PACS rejected the request (HTTP {status}): {reason}")
        self.reason = reason
        self.status = status
        self.result = result


class PacsNotFound(PacsError):
    """The PACS holds no such instance."""


class PacsConflict(PacsError):
    """More than one instance answers to one SOP Instance UID (Orthanc keeps a separate copy
    per Patient ID, so the same UIDs filed under two patients are ambiguous)."""


class PacsProtocolError(PacsError):
    """The PACS answered with something DICOMweb does not allow (wrong type, bad JSON...)."""


class PacsVerificationFailed(PacsError):
    """Reading the object back did not return what was sent."""


@dataclass(frozen=True)
class StoredInstance:
    sop_class_uid: str
    sop_instance_uid: str
    retrieve_url: str | None
    warning_reason: int | None = None


@dataclass(frozen=True)
class FailedInstance:
    sop_class_uid: str | None
    sop_instance_uid: str | None
    failure_reason: int | None

    def describe(self) -> str:
        what = self.sop_instance_uid or "an instance"
        if self.failure_reason is None:
            return f"{what}: no failure reason given"
        words = FAILURE_REASONS.get(self.failure_reason, "unknown reason")
        return f"{what}: {words} ({self.failure_reason:04X}H)"


@dataclass(frozen=True)
class StoreResult:
    """What STOW-RS acknowledged (PS3.18 §10.5.3)."""

    stored: tuple[StoredInstance, ...]
    failed: tuple[FailedInstance, ...]
    study_retrieve_url: str | None = None


@dataclass(frozen=True)
class InstanceRef:
    """One instance as QIDO-RS reports it; ``retrieve_url`` goes into the filing receipt."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str | None
    retrieve_url: str | None


@dataclass(frozen=True)
class StudyRef:
    """One study as QIDO-RS reports it (PS3.18 Table 10.6.3-3 default attributes)."""

    study_instance_uid: str
    patient_id: str
    issuer_of_patient_id: str | None
    study_date: date | None
    study_time: time | None
    study_description: str | None
    accession_number: str | None
    modalities: tuple[str, ...]
    number_of_instances: int | None
    retrieve_url: str | None
    # The patient as this study records them (PS3.18 Table 10.6.3-3 default attributes): what
    # the record gateway's wrong-patient check compares with the typed identity.
    patient_name: str | None = None
    patient_birth_date: date | None = None


def raise_for_status(response: httpx.Response) -> None:
    """Map an HTTP error status to the exception tree; 2xx returns."""
    status = response.status_code
    if status < 300:
        return
    if status in (401, 403):
        raise PacsAuthError(f"PACS refused the credentials (HTTP {status})")
    if status >= 500 or status in (408, 429):
        raise PacsUnavailable(f"PACS failed (HTTP {status})")
    if status == 404:
        raise PacsNotFound("PACS answered 404 Not Found")
    raise PacsRejected(error_text(response), status=status)


def multipart_related(parts: Sequence[bytes]) -> tuple[bytes, str]:
    """A ``multipart/related; type="application/dicom"`` body (RFC 2387, PS3.18 §8.6.1.2)."""
    while True:
        boundary = "lightbox-" + secrets.token_hex(20)
        marker = b"--" + boundary.encode("ascii")
        if not any(marker in p for p in parts):
            break
    out = io.BytesIO()
    for p in parts:
        out.write(marker + b"\r\nContent-Type: application/dicom\r\n")
        out.write(b"Content-Length: %d\r\n\r\n" % len(p))
        out.write(p)
        out.write(b"\r\n")
    out.write(marker + b"--\r\n")
    content_type = f'multipart/related; type="application/dicom"; boundary="{boundary}"'
    return out.getvalue(), content_type


def multipart_parts(response: httpx.Response) -> list[bytes]:
    """The bodies of a ``multipart/related`` answer, parsed by :mod:`email` (RFC 2046)."""
    content_type = response.headers.get("Content-Type", "")
    if content_type.split(";")[0].strip().lower() == "application/dicom":
        return [response.content]
    head = b"Content-Type: " + content_type.encode("latin-1") + b"\r\nMIME-Version: 1.0\r\n\r\n"
    message = email.message_from_bytes(head + response.content, policy=email.policy.compat32)
    if not message.is_multipart() or message.get_content_type() != "multipart/related":
        raise PacsProtocolError(f"expected multipart/related, got {content_type or 'nothing'}")
    if message.defects:
        raise PacsProtocolError(f"malformed multipart answer ({message.defects[0]!r})")
    parts = []
    for part in message.get_payload():
        if not isinstance(part, email.message.Message) or part.is_multipart():
            raise PacsProtocolError("nested multipart answer")
        if part.get_content_type() != "application/dicom":
            raise PacsProtocolError(f"unexpected part type {part.get_content_type()}")
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            raise PacsProtocolError("empty multipart part")
        parts.append(payload)
    return parts


def store_result(response: httpx.Response) -> StoreResult:
    """The STOW-RS response data set; Orthanc omits the Content-Type on 400, so the body is
    read as DICOM JSON whenever it parses as one."""
    ds = dicom_json(response)
    if ds is None:
        return StoreResult(stored=(), failed=())
    stored = tuple(
        StoredInstance(
            sop_class_uid=ds_text(item, "ReferencedSOPClassUID") or "",
            sop_instance_uid=ds_text(item, "ReferencedSOPInstanceUID") or "",
            retrieve_url=ds_text(item, "RetrieveURL"),
            warning_reason=ds_int(item, "WarningReason"),
        )
        for item in ds.get("ReferencedSOPSequence", None) or []
    )
    failed = tuple(
        FailedInstance(
            sop_class_uid=ds_text(item, "ReferencedSOPClassUID"),
            sop_instance_uid=ds_text(item, "ReferencedSOPInstanceUID"),
            failure_reason=ds_int(item, "FailureReason"),
        )
        for item in ds.get("FailedSOPSequence", None) or []
    )
    return StoreResult(stored=stored, failed=failed, study_retrieve_url=ds_text(ds, "RetrieveURL"))


def dicom_json(response: httpx.Response) -> Dataset | None:
    if not response.content.strip():
        return None
    try:
        obj = json.loads(response.content)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not all(is_tag(k) for k in obj):
        return None  # e.g. Orthanc's own error document
    try:
        return Dataset.from_json(obj)
    except (ValueError, TypeError, KeyError) as exc:
        raise PacsProtocolError("STOW-RS answer is not a DICOM JSON object") from exc


def is_tag(key: str) -> bool:
    return len(key) == 8 and all(c in "0123456789abcdefABCDEF" for c in key)


def sent_uid(part: bytes) -> str | None:
    """The SOP Instance UID of a part, or None when it is not a readable Part-10 file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # best effort: this only names the part in a reason
            ds = dcmread(io.BytesIO(part), stop_before_pixels=True,
                         specific_tags=["SOPInstanceUID"])
    except Exception:  # any unreadable part is "not Part-10"
        return None
    value = ds.get("SOPInstanceUID")
    return str(value) if value else None


def unacknowledged(parts: Sequence[bytes], result: StoreResult) -> list[tuple[int, str | None]]:
    known = {s.sop_instance_uid for s in result.stored}
    known |= {f.sop_instance_uid for f in result.failed if f.sop_instance_uid}
    missing = []
    for n, part in enumerate(parts, 1):
        uid = sent_uid(part)
        if uid is None or uid not in known:
            missing.append((n, uid))
    return missing


def rejection_reason(
    parts: Sequence[bytes], result: StoreResult, response: httpx.Response,
) -> str:
    reasons = [f.describe() for f in result.failed]
    message = orthanc_message(response)
    if message:
        reasons.append(message)
    for n, uid in unacknowledged(parts, result):
        if uid is None:
            reasons.append(f"part {n} of {len(parts)} is not a DICOM Part-10 object")
        else:
            reasons.append(f"part {n} of {len(parts)} ({uid}) was not stored")
    if not reasons:
        reasons.append(error_text(response))
    return "; ".join(reasons)


def error_text(response: httpx.Response) -> str:
    """A short reason from an error answer: the PACS's message, or the status line."""
    return orthanc_message(response) or (
        f"HTTP {response.status_code} {response.reason_phrase}".strip())


def orthanc_message(response: httpx.Response) -> str | None:
    """Orthanc's JSON error document's ``Message`` and ``Details``, at most 300 characters.
    Never the whole body: it may echo the request."""
    with contextlib.suppress(ValueError):
        doc = json.loads(response.content)
        if isinstance(doc, dict) and isinstance(doc.get("Message"), str):
            detail = doc.get("Details")
            text = str(doc["Message"]) + (f": {detail}" if isinstance(detail, str) else "")
            return text[:300]
    return None


def parse_part(data: bytes, what: str) -> Dataset:
    try:
        return dcmread(io.BytesIO(data))
    except (InvalidDicomError, OSError, ValueError, TypeError, EOFError, KeyError) as exc:
        raise PacsProtocolError(f"{what} is not a readable DICOM Part-10 file") from exc


def checked_uid(value: str) -> str:
    """A UID safe to put in a URL path (PS3.5 §9.1: digits and dots)."""
    if not is_uid(value):
        raise ValueError(f"not a valid DICOM UID: {value!r}")
    return value


def ds_values(ds: Dataset, keyword: str) -> list[Any]:
    value = ds.get(keyword, None)
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes | int | float | PersonName):
        return [value]  # one value (a PersonName iterates over its characters)
    return list(value)


def ds_text(ds: Dataset, keyword: str) -> str | None:
    values = ds_values(ds, keyword)
    return str(values[0]) if values else None


def ds_int(ds: Dataset, keyword: str) -> int | None:
    values = ds_values(ds, keyword)
    try:
        return int(values[0]) if values else None
    except (TypeError, ValueError):
        return None


def da_date(value: str | None) -> date | None:
    if not value or len(value) != 8 or not value.isdigit():
        return None
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return None


def tm_time(value: str | None) -> time | None:
    """A DICOM TM (HHMMSS.FFFFFF, trailing parts optional) as a time, or None."""
    if not value:
        return None
    whole, _, frac = value.partition(".")
    if not whole.isdigit() or len(whole) not in (2, 4, 6) or (frac and not frac.isdigit()):
        return None
    hh, mm, ss = int(whole[:2]), int(whole[2:4] or 0), int(whole[4:6] or 0)
    try:
        return time(hh, mm, min(ss, 59), int((frac + "000000")[:6]) if frac else 0)
    except ValueError:
        return None
