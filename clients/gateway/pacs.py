"""An async DICOMweb client for the record gateway: STOW-RS, QIDO-RS and WADO-RS (PS3.18).

Why (docs/ARCHITECTURE.md §6, issue 7 items 1 and 6): the gateway stores each object with STOW-RS
(PS3.18 §10.5), finds it again with QIDO-RS (§10.6) and reads it back with WADO-RS (§10.4) to
prove the PACS holds exactly the pixels that were sent before anything on a device expires.
Issue 10 item 7 uses :meth:`PacsClient.find_studies` to find the original study a photo of a film
stands for.

Every failure of the transport or of the PACS maps to one exception, in one place
(:func:`_raise_for_status` and :meth:`PacsClient._request`), so the gateway can decide what to do:
retry later, alert the sender, or fix its settings. Retrying is the caller's policy;
:func:`retrying` is a small helper for it that retries only :class:`PacsUnavailable`.

Responses are parsed with pydicom's DICOM JSON model reader (PS3.18 Annex F) and, for WADO-RS
``multipart/related``, with the standard library's :mod:`email` parser.

Behaviour of the PACS we test against (Orthanc 1.10 + DICOMweb plugin, docs/OPERATIONS.md):
storing the same SOP Instance UID twice for the same patient answers 200 and keeps the first copy
(so only :meth:`PacsClient.verify_stored` notices when the second differed); a part that is not
DICOM answers 400 with no failure reason; an instance outside the study named in the URL answers
409 with Failure Reason 0110H.

Exceptions::

    PacsError                     base; ``retryable`` says whether trying again may help
     ├── PacsUnavailable          unreachable, timed out, 5xx, 408, 429 (retryable)
     ├── PacsAuthError            401 or 403: the gateway's PACS credentials are wrong
     ├── PacsRejected             the PACS refused the object (``reason``, ``status``, ``result``)
     ├── PacsNotFound             WADO-RS has no such instance
     ├── PacsConflict             several instances answer to one SOP Instance UID
     ├── PacsProtocolError        the answer is not what DICOMweb specifies
     └── PacsVerificationFailed   the read-back copy is missing or differs from what was sent
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.message
import email.policy
import io
import json
import os
import secrets
import ssl
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, time
from pathlib import Path
from typing import Any, Final, TypeVar

import httpx
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from clients.gateway.dicom import DicomInstance, is_uid
from clients.gateway.httpio import HttpService, bounded_request

__all__ = [
    "FailedInstance",
    "InstanceRef",
    "PacsAuthError",
    "PacsClient",
    "PacsConflict",
    "PacsError",
    "PacsNotFound",
    "PacsProtocolError",
    "PacsRejected",
    "PacsSettings",
    "PacsUnavailable",
    "PacsVerificationFailed",
    "StoreResult",
    "StoredInstance",
    "StudyRef",
    "retrying",
]

DICOM_JSON: Final = "application/dicom+json"
# WADO-RS: "transfer-syntax=*" asks for the stored bytes; without it Orthanc transcodes to
# Explicit VR Little Endian (PS3.18 §8.7.3.5.2) and the pixel data would not compare.
WADO_ACCEPT: Final = 'multipart/related; type="application/dicom"; transfer-syntax=*'
DEFAULT_TIMEOUT: Final = 30.0
DEFAULT_MAX_RESPONSE_BYTES: Final = 256 * 1024 * 1024

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

# Attributes verify_stored compares besides the UIDs and the pixel data / document.
PATIENT_KEYS: Final = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
                       "PatientSex")
UID_KEYS: Final = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


# --- exceptions ----------------------------------------------------------------------------


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


# --- results -------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class PacsSettings:
    """Where the gateway files and how it logs in. The password never appears in a repr.

    From the environment (:meth:`from_env`): ``LIGHTBOX_PACS_URL`` (the DICOMweb root, e.g.
    ``https://pacs.example.org/dicom-web``), ``LIGHTBOX_PACS_USERNAME``,
    ``LIGHTBOX_PACS_PASSWORD_FILE`` (a file holding the password; preferred) or
    ``LIGHTBOX_PACS_PASSWORD``, ``LIGHTBOX_PACS_TIMEOUT`` (seconds, 30),
    ``LIGHTBOX_PACS_CA_FILE`` (a CA bundle for a private PKI) and
    ``LIGHTBOX_PACS_MAX_RESPONSE_BYTES`` (the largest answer read, 256 MiB)."""

    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT
    ca_file: Path | None = None
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PacsSettings:
        env = os.environ if env is None else env
        url = env.get("LIGHTBOX_PACS_URL", "").strip()
        if not url:
            raise ValueError("LIGHTBOX_PACS_URL is not set")
        password = env.get("LIGHTBOX_PACS_PASSWORD")
        if pw_file := env.get("LIGHTBOX_PACS_PASSWORD_FILE"):
            password = Path(pw_file).read_text().strip()
        ca = env.get("LIGHTBOX_PACS_CA_FILE")
        return cls(
            url=url,
            username=env.get("LIGHTBOX_PACS_USERNAME") or None,
            password=password,
            timeout=float(env.get("LIGHTBOX_PACS_TIMEOUT", DEFAULT_TIMEOUT)),
            ca_file=Path(ca) if ca else None,
            max_response_bytes=int(env.get("LIGHTBOX_PACS_MAX_RESPONSE_BYTES",
                                           DEFAULT_MAX_RESPONSE_BYTES)),
        )


# --- the client ----------------------------------------------------------------------------


class PacsClient(HttpService):
    """DICOMweb against one PACS. Use as ``async with PacsClient(settings) as pacs``."""

    def __init__(
        self, settings: PacsSettings, *, transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        url = httpx.URL(settings.url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("the PACS URL must be an http(s) URL of the DICOMweb root")
        if (settings.username is None) != (settings.password is None):
            raise ValueError("give both a PACS username and password, or neither")
        self._root = str(url).rstrip("/")
        self._max = settings.max_response_bytes
        auth = (httpx.BasicAuth(settings.username, settings.password)
                if settings.username is not None and settings.password is not None else None)
        verify: ssl.SSLContext | bool = True
        if settings.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(settings.ca_file))
        self._http = httpx.AsyncClient(
            auth=auth, timeout=settings.timeout, transport=transport, verify=verify,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"PacsClient({self._root!r})"

    # STOW-RS -------------------------------------------------------------------------------

    async def store(
        self, instances: Sequence[DicomInstance | bytes], *, study_instance_uid: str | None = None,
    ) -> StoreResult:
        """Store Part-10 objects in one STOW-RS request (PS3.18 §10.5).

        Raises :class:`PacsRejected` unless every instance is acknowledged; its ``result`` says
        which were stored anyway (a STOW-RS request is not atomic)."""
        if not instances:
            raise ValueError("nothing to store")
        parts = [i.data if isinstance(i, DicomInstance) else bytes(i) for i in instances]
        body, content_type = _multipart_related(parts)
        url = f"{self._root}/studies"
        if study_instance_uid is not None:
            url += "/" + _uid(study_instance_uid)
        response = await self._request(
            "POST", url, content=body,
            headers={"Content-Type": content_type, "Accept": DICOM_JSON},
        )
        status = response.status_code
        if status in (401, 403) or status >= 500 or status in (408, 429):
            _raise_for_status(response)
        if status < 200 or 300 <= status < 400 or (status < 300 and status not in (200, 202)):
            raise PacsProtocolError(f"unexpected STOW-RS status {status}")
        result = _store_result(response)
        if status in (200, 202) and not result.failed and not _unacknowledged(parts, result):
            return result
        raise PacsRejected(_rejection_reason(parts, result, response), status=status,
                           result=result)

    # QIDO-RS -------------------------------------------------------------------------------

    async def find_instance(
        self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str,
    ) -> InstanceRef | None:
        """The instance, found by QIDO-RS (PS3.18 §10.6), or None when the PACS has not got it."""
        url = (f"{self._root}/studies/{_uid(study_instance_uid)}"
               f"/series/{_uid(series_instance_uid)}/instances")
        found = await self._qido(url, {"SOPInstanceUID": _uid(sop_instance_uid)})
        matches = [d for d in found if _text(d, "SOPInstanceUID") == sop_instance_uid]
        if not matches:
            return None
        if len(matches) > 1:
            raise PacsConflict(f"{len(matches)} instances share SOP Instance UID "
                               f"{sop_instance_uid}")
        ds = matches[0]
        return InstanceRef(
            study_instance_uid=_text(ds, "StudyInstanceUID") or study_instance_uid,
            series_instance_uid=_text(ds, "SeriesInstanceUID") or series_instance_uid,
            sop_instance_uid=sop_instance_uid,
            sop_class_uid=_text(ds, "SOPClassUID"),
            retrieve_url=_text(ds, "RetrieveURL"),
        )

    async def find_studies(
        self, patient_id: str, *, issuer_of_patient_id: str | None = None,
        study_date: date | None = None, study_dates: tuple[date, date] | None = None,
        limit: int = 100,
    ) -> list[StudyRef]:
        """The patient's studies (on ``study_date``, or within the inclusive range
        ``study_dates``, when given), by QIDO-RS (a range is PS3.4 §C.2.2.2.5 range matching).

        QIDO matching treats ``*`` and ``?`` as wildcards and has no escape, so an ID holding
        them is refused rather than matching other patients; results are checked for an exact
        Patient ID (and issuer, when given) on this side too."""
        if not patient_id or any(c in patient_id for c in "*?\\"):
            raise ValueError("patient_id must be non-empty without *, ? or backslash")
        params: list[tuple[str, str]] = [
            ("PatientID", patient_id),
            # Not default study attributes (PS3.18 Table 10.6.3-3); one includefield each,
            # as Orthanc does not split a comma-separated list.
            ("includefield", "00100021"),  # IssuerOfPatientID
            ("includefield", "00081030"),  # StudyDescription
            ("limit", str(limit)),
        ]
        if study_date is not None:
            params.append(("StudyDate", study_date.strftime("%Y%m%d")))
        elif study_dates is not None:
            first, last = study_dates
            params.append(("StudyDate", f"{first:%Y%m%d}-{last:%Y%m%d}"))
        found = await self._qido(f"{self._root}/studies", params)
        studies = []
        for ds in found:
            if _text(ds, "PatientID") != patient_id:
                continue
            issuer = _text(ds, "IssuerOfPatientID")
            if issuer_of_patient_id is not None and issuer not in (None, issuer_of_patient_id):
                continue
            study_uid = _text(ds, "StudyInstanceUID")
            if study_uid is None:
                raise PacsProtocolError("QIDO-RS study without a Study Instance UID")
            studies.append(StudyRef(
                study_instance_uid=study_uid,
                patient_id=patient_id,
                issuer_of_patient_id=issuer,
                study_date=_date(_text(ds, "StudyDate")),
                study_time=_time(_text(ds, "StudyTime")),
                study_description=_text(ds, "StudyDescription"),
                accession_number=_text(ds, "AccessionNumber"),
                modalities=tuple(str(m) for m in _values(ds, "ModalitiesInStudy")),
                number_of_instances=_int(ds, "NumberOfStudyRelatedInstances"),
                retrieve_url=_text(ds, "RetrieveURL"),
            ))
        return studies

    async def _qido(
        self, url: str, params: Mapping[str, str] | Sequence[tuple[str, str]],
    ) -> list[Dataset]:
        response = await self._request("GET", url, params=params, headers={"Accept": DICOM_JSON})
        _raise_for_status(response)
        if response.status_code == 204 or not response.content.strip():
            return []
        try:
            items = json.loads(response.content)
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise TypeError("not a JSON array of objects")
            return [Dataset.from_json(item) for item in items]
        except (ValueError, TypeError, KeyError) as exc:
            raise PacsProtocolError("QIDO-RS answer is not a DICOM JSON array") from exc

    # WADO-RS -------------------------------------------------------------------------------

    async def retrieve_instance(
        self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str,
    ) -> bytes:
        """The stored Part-10 bytes, by WADO-RS (PS3.18 §10.4), in the stored transfer syntax."""
        url = (f"{self._root}/studies/{_uid(study_instance_uid)}"
               f"/series/{_uid(series_instance_uid)}/instances/{_uid(sop_instance_uid)}")
        response = await self._request("GET", url, headers={"Accept": WADO_ACCEPT})
        if response.status_code == 404:
            raise PacsNotFound(f"no instance {sop_instance_uid} in the PACS")
        _raise_for_status(response)
        parts = _multipart_parts(response)
        if len(parts) != 1:
            raise PacsProtocolError(f"WADO-RS returned {len(parts)} parts for one instance")
        return parts[0]

    async def verify_stored(self, instance: DicomInstance) -> InstanceRef:
        """Prove the PACS holds ``instance``: QIDO-RS finds it, WADO-RS returns it, and its
        UIDs, patient attributes and pixel data (or encapsulated document) equal what was
        sent, byte for byte. Returns the QIDO reference for the filing receipt.

        Every way the read-back can fail to prove the filing (absent, ambiguous, different)
        raises :class:`PacsVerificationFailed`; transport and credential failures raise as
        elsewhere, so the caller can retry those."""
        try:
            ref = await self.find_instance(instance.study_instance_uid,
                                           instance.series_instance_uid, instance.sop_instance_uid)
        except PacsConflict as exc:
            raise PacsVerificationFailed(str(exc)) from exc
        if ref is None:
            raise PacsVerificationFailed(f"QIDO-RS does not find {instance.sop_instance_uid}")
        try:
            stored = await self.retrieve_instance(
                instance.study_instance_uid, instance.series_instance_uid,
                instance.sop_instance_uid,
            )
        except PacsNotFound as exc:
            raise PacsVerificationFailed(str(exc)) from exc
        sent_ds = _parse(instance.data, "the sent object")
        try:
            got_ds = _parse(stored, "the stored object")
        except PacsProtocolError as exc:
            raise PacsVerificationFailed(str(exc)) from exc
        for key in (*UID_KEYS, *PATIENT_KEYS):
            if str(sent_ds.get(key, "")) != str(got_ds.get(key, "")):
                raise PacsVerificationFailed(f"stored {key} differs from what was sent")
        payload = "PixelData" if "PixelData" in sent_ds else "EncapsulatedDocument"
        if payload not in sent_ds or sent_ds[payload].value != got_ds.get(payload, None):
            raise PacsVerificationFailed(f"stored {payload} differs from what was sent")
        return ref

    # transport -----------------------------------------------------------------------------

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request, read up to the response limit; transport failures → PacsUnavailable."""
        return await bounded_request(
            self._http, method, url, limit=self._max, name="PACS", too_large=PacsProtocolError,
            unavailable=PacsUnavailable, **kwargs)


# --- retries -------------------------------------------------------------------------------

T = TypeVar("T")


async def retrying(
    fn: Callable[[], Awaitable[T]],
    attempts: int = 5,
    base_delay: float = 1.0,
    *,
    max_delay: float = 300.0,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    on_retry: Callable[[int, float, PacsUnavailable], object] | None = None,
) -> T:
    """Call ``fn`` until it succeeds, retrying only :class:`PacsUnavailable`.

    Waits ``base_delay * 2**n`` (capped at ``max_delay``) between attempts; after ``attempts``
    calls the last PacsUnavailable propagates. Every other error propagates at once: a
    rejection or a credentials problem does not improve with time. ``sleep`` is injectable so
    tests do not wait."""
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    for n in range(attempts):
        try:
            return await fn()
        except PacsUnavailable as exc:
            if n == attempts - 1:
                raise
            delay = min(max_delay, base_delay * (2**n))
            if on_retry is not None:
                on_retry(n + 1, delay, exc)
            await sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


# --- helpers -------------------------------------------------------------------------------


def _raise_for_status(response: httpx.Response) -> None:
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
    raise PacsRejected(_error_text(response), status=status)


def _multipart_related(parts: Sequence[bytes]) -> tuple[bytes, str]:
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


def _multipart_parts(response: httpx.Response) -> list[bytes]:
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


def _store_result(response: httpx.Response) -> StoreResult:
    """The STOW-RS response data set; Orthanc omits the Content-Type on 400, so the body is
    read as DICOM JSON whenever it parses as one."""
    ds = _dicom_json(response)
    if ds is None:
        return StoreResult(stored=(), failed=())
    stored = tuple(
        StoredInstance(
            sop_class_uid=_text(item, "ReferencedSOPClassUID") or "",
            sop_instance_uid=_text(item, "ReferencedSOPInstanceUID") or "",
            retrieve_url=_text(item, "RetrieveURL"),
            warning_reason=_int(item, "WarningReason"),
        )
        for item in ds.get("ReferencedSOPSequence", None) or []
    )
    failed = tuple(
        FailedInstance(
            sop_class_uid=_text(item, "ReferencedSOPClassUID"),
            sop_instance_uid=_text(item, "ReferencedSOPInstanceUID"),
            failure_reason=_int(item, "FailureReason"),
        )
        for item in ds.get("FailedSOPSequence", None) or []
    )
    return StoreResult(stored=stored, failed=failed, study_retrieve_url=_text(ds, "RetrieveURL"))


def _dicom_json(response: httpx.Response) -> Dataset | None:
    if not response.content.strip():
        return None
    try:
        obj = json.loads(response.content)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not all(_is_tag(k) for k in obj):
        return None  # e.g. Orthanc's own error document
    try:
        return Dataset.from_json(obj)
    except (ValueError, TypeError, KeyError) as exc:
        raise PacsProtocolError("STOW-RS answer is not a DICOM JSON object") from exc


def _is_tag(key: str) -> bool:
    return len(key) == 8 and all(c in "0123456789abcdefABCDEF" for c in key)


def _sent_uid(part: bytes) -> str | None:
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


def _unacknowledged(parts: Sequence[bytes], result: StoreResult) -> list[tuple[int, str | None]]:
    known = {s.sop_instance_uid for s in result.stored}
    known |= {f.sop_instance_uid for f in result.failed if f.sop_instance_uid}
    missing = []
    for n, part in enumerate(parts, 1):
        uid = _sent_uid(part)
        if uid is None or uid not in known:
            missing.append((n, uid))
    return missing


def _rejection_reason(
    parts: Sequence[bytes], result: StoreResult, response: httpx.Response,
) -> str:
    reasons = [f.describe() for f in result.failed]
    message = _orthanc_message(response)
    if message:
        reasons.append(message)
    for n, uid in _unacknowledged(parts, result):
        if uid is None:
            reasons.append(f"part {n} of {len(parts)} is not a DICOM Part-10 object")
        else:
            reasons.append(f"part {n} of {len(parts)} ({uid}) was not stored")
    if not reasons:
        reasons.append(_error_text(response))
    return "; ".join(reasons)


def _error_text(response: httpx.Response) -> str:
    """A short reason from an error answer: the PACS's message, or the status line."""
    return _orthanc_message(response) or (
        f"HTTP {response.status_code} {response.reason_phrase}".strip())


def _orthanc_message(response: httpx.Response) -> str | None:
    """Orthanc's JSON error document's ``Message`` and ``Details``, at most 300 characters.
    Never the whole body: it may echo the request."""
    with contextlib.suppress(ValueError):
        doc = json.loads(response.content)
        if isinstance(doc, dict) and isinstance(doc.get("Message"), str):
            detail = doc.get("Details")
            text = str(doc["Message"]) + (f": {detail}" if isinstance(detail, str) else "")
            return text[:300]
    return None


def _parse(data: bytes, what: str) -> Dataset:
    try:
        return dcmread(io.BytesIO(data))
    except (InvalidDicomError, OSError, ValueError, TypeError, EOFError, KeyError) as exc:
        raise PacsProtocolError(f"{what} is not a readable DICOM Part-10 file") from exc



def _uid(value: str) -> str:
    """A UID safe to put in a URL path (PS3.5 §9.1: digits and dots)."""
    if not is_uid(value):
        raise ValueError(f"not a valid DICOM UID: {value!r}")
    return value


def _values(ds: Dataset, keyword: str) -> list[Any]:
    value = ds.get(keyword, None)
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes | int | float):
        return [value]
    return list(value)


def _text(ds: Dataset, keyword: str) -> str | None:
    values = _values(ds, keyword)
    return str(values[0]) if values else None


def _int(ds: Dataset, keyword: str) -> int | None:
    values = _values(ds, keyword)
    try:
        return int(values[0]) if values else None
    except (TypeError, ValueError):
        return None


def _date(value: str | None) -> date | None:
    if not value or len(value) != 8 or not value.isdigit():
        return None
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return None


def _time(value: str | None) -> time | None:
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
