"""An async DICOMweb client for the record gateway: STOW-RS, QIDO-RS and WADO-RS (PS3.18).

Why (docs/ARCHITECTURE.md §6, PROTOCOL.md §15): the gateway stores each object with STOW-RS
(PS3.18 §10.5), finds it again with QIDO-RS (§10.6) and reads it back with WADO-RS (§10.4) to
prove the PACS holds exactly the pixels that were sent before anything on a device expires.
CLINICAL_SAFETY.md uses :meth:`PacsClient.find_studies` to find the original study a photo of a film
stands for.

Every failure of the transport or of the PACS maps to one exception, in one place
(:func:`raise_for_status` and :meth:`PacsClient._request`), so the gateway can decide what to do:
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
import json
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Final, TypeVar

import httpx
from pydicom.dataset import Dataset

from clients.gateway.dicom import DicomInstance
from clients.gateway.dicomweb import (
    FailedInstance,
    InstanceRef,
    PacsAuthError,
    PacsConflict,
    PacsError,
    PacsNotFound,
    PacsProtocolError,
    PacsRejected,
    PacsUnavailable,
    PacsVerificationFailed,
    StoredInstance,
    StoreResult,
    StudyRef,
    checked_uid,
    da_date,
    ds_int,
    ds_text,
    ds_values,
    multipart_parts,
    multipart_related,
    parse_part,
    raise_for_status,
    rejection_reason,
    store_result,
    tm_time,
    unacknowledged,
)
from clients.gateway.httpio import (
    HttpService,
    bounded_request,
    read_secret,
    service_limits,
    service_settings,
)

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


# Attributes verify_stored compares besides the UIDs and the pixel data / document.
PATIENT_KEYS: Final = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
                       "PatientSex")
UID_KEYS: Final = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


# --- exceptions ----------------------------------------------------------------------------


# --- results -------------------------------------------------------------------------------


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
        """Settings from ``env`` (default: the process environment). Raises ValueError, naming
        the variable, when one is missing, unreadable or malformed: checked before the gateway
        starts, so a typo stops it with that sentence (clients/gateway/cli.py)."""
        env = os.environ if env is None else env
        url = env.get("LIGHTBOX_PACS_URL", "").strip()
        if not url:
            raise ValueError("LIGHTBOX_PACS_URL is not set")
        if not _dicomweb_root(url):
            raise ValueError("LIGHTBOX_PACS_URL must be an http(s) URL of the DICOMweb root, "
                             "such as https://pacs.example.org/dicom-web")
        password = env.get("LIGHTBOX_PACS_PASSWORD")
        if pw_file := env.get("LIGHTBOX_PACS_PASSWORD_FILE"):
            password = read_secret("LIGHTBOX_PACS_PASSWORD_FILE", pw_file).strip()
        username = env.get("LIGHTBOX_PACS_USERNAME") or None
        if (username is None) != (password is None):
            raise ValueError("set both LIGHTBOX_PACS_USERNAME and LIGHTBOX_PACS_PASSWORD_FILE, "
                             "or neither")
        return cls(url=url, username=username, password=password, **service_settings(
            env, "LIGHTBOX_PACS", timeout=DEFAULT_TIMEOUT,
            max_response_bytes=DEFAULT_MAX_RESPONSE_BYTES))


def _dicomweb_root(url: str) -> bool:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.host)


# --- the client ----------------------------------------------------------------------------


class PacsClient(HttpService):
    """DICOMweb against one PACS. Use as ``async with PacsClient(settings) as pacs``."""

    def __init__(
        self, settings: PacsSettings, *, transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not _dicomweb_root(settings.url):
            raise ValueError("the PACS URL must be an http(s) URL of the DICOMweb root")
        url = httpx.URL(settings.url)
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
            follow_redirects=False, limits=service_limits(),
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
        body, content_type = multipart_related(parts)
        url = f"{self._root}/studies"
        if study_instance_uid is not None:
            url += "/" + checked_uid(study_instance_uid)
        response = await self._request(
            "POST", url, content=body,
            headers={"Content-Type": content_type, "Accept": DICOM_JSON},
        )
        status = response.status_code
        if status in (401, 403) or status >= 500 or status in (408, 429):
            raise_for_status(response)
        if status < 200 or 300 <= status < 400 or (status < 300 and status not in (200, 202)):
            raise PacsProtocolError(f"unexpected STOW-RS status {status}")
        result = store_result(response)
        if status in (200, 202) and not result.failed and not unacknowledged(parts, result):
            return result
        raise PacsRejected(rejection_reason(parts, result, response), status=status,
                           result=result)

    # QIDO-RS -------------------------------------------------------------------------------

    async def find_instance(
        self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str,
    ) -> InstanceRef | None:
        """The instance, found by QIDO-RS (PS3.18 §10.6), or None when the PACS has not got it."""
        url = (f"{self._root}/studies/{checked_uid(study_instance_uid)}"
               f"/series/{checked_uid(series_instance_uid)}/instances")
        found = await self._qido(url, {"SOPInstanceUID": checked_uid(sop_instance_uid)})
        matches = [d for d in found if ds_text(d, "SOPInstanceUID") == sop_instance_uid]
        if not matches:
            return None
        if len(matches) > 1:
            raise PacsConflict(f"{len(matches)} instances share SOP Instance UID "
                               f"{sop_instance_uid}")
        ds = matches[0]
        return InstanceRef(
            study_instance_uid=ds_text(ds, "StudyInstanceUID") or study_instance_uid,
            series_instance_uid=ds_text(ds, "SeriesInstanceUID") or series_instance_uid,
            sop_instance_uid=sop_instance_uid,
            sop_class_uid=ds_text(ds, "SOPClassUID"),
            retrieve_url=ds_text(ds, "RetrieveURL"),
        )

    async def find_instances(self, sop_instance_uid: str) -> list[InstanceRef]:
        """Every instance the PACS holds under ``sop_instance_uid``, in any study or series
        (QIDO-RS over all instances, PS3.18 §10.6.1): how the gateway learns an image is
        already filed before it stores it, whatever patient or study it was filed under."""
        found = await self._qido(f"{self._root}/instances",
                                 {"SOPInstanceUID": checked_uid(sop_instance_uid)})
        refs = []
        for ds in found:
            if ds_text(ds, "SOPInstanceUID") != sop_instance_uid:
                continue
            study, series = ds_text(ds, "StudyInstanceUID"), ds_text(ds, "SeriesInstanceUID")
            if study is None or series is None:
                raise PacsProtocolError("QIDO-RS instance without its study or series UID")
            refs.append(InstanceRef(study_instance_uid=study, series_instance_uid=series,
                                    sop_instance_uid=sop_instance_uid,
                                    sop_class_uid=ds_text(ds, "SOPClassUID"),
                                    retrieve_url=ds_text(ds, "RetrieveURL")))
        return refs

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
            ("includefield", "00100010"),  # PatientName
            ("includefield", "00100030"),  # PatientBirthDate
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
            if ds_text(ds, "PatientID") != patient_id:
                continue
            issuer = ds_text(ds, "IssuerOfPatientID")
            if issuer_of_patient_id is not None and issuer not in (None, issuer_of_patient_id):
                continue
            study_uid = ds_text(ds, "StudyInstanceUID")
            if study_uid is None:
                raise PacsProtocolError("QIDO-RS study without a Study Instance UID")
            studies.append(StudyRef(
                study_instance_uid=study_uid,
                patient_id=patient_id,
                issuer_of_patient_id=issuer,
                study_date=da_date(ds_text(ds, "StudyDate")),
                study_time=tm_time(ds_text(ds, "StudyTime")),
                study_description=ds_text(ds, "StudyDescription"),
                accession_number=ds_text(ds, "AccessionNumber"),
                modalities=tuple(str(m) for m in ds_values(ds, "ModalitiesInStudy")),
                number_of_instances=ds_int(ds, "NumberOfStudyRelatedInstances"),
                retrieve_url=ds_text(ds, "RetrieveURL"),
                patient_name=ds_text(ds, "PatientName"),
                patient_birth_date=da_date(ds_text(ds, "PatientBirthDate")),
            ))
        return studies

    async def _qido(
        self, url: str, params: Mapping[str, str] | Sequence[tuple[str, str]],
    ) -> list[Dataset]:
        response = await self._request("GET", url, params=params, headers={"Accept": DICOM_JSON})
        raise_for_status(response)
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
        url = (f"{self._root}/studies/{checked_uid(study_instance_uid)}"
               f"/series/{checked_uid(series_instance_uid)}/instances/{checked_uid(sop_instance_uid)}")
        response = await self._request("GET", url, headers={"Accept": WADO_ACCEPT})
        if response.status_code == 404:
            raise PacsNotFound(f"no instance {sop_instance_uid} in the PACS")
        raise_for_status(response)
        parts = multipart_parts(response)
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
            # QIDO found it, WADO-RS did not: Orthanc resolves a WADO-RS instance by its SOP
            # Instance UID alone and answers 404 for every copy once it holds two (in other
            # series or studies). Say so: the object IS stored, and not "missing".
            copies = await self.find_instances(instance.sop_instance_uid)
            if len(copies) > 1:
                raise PacsVerificationFailed(
                    f"the PACS holds {len(copies)} instances with SOP Instance UID "
                    f"{instance.sop_instance_uid} (studies "
                    f"{', '.join(sorted({c.study_instance_uid for c in copies}))}) and cannot "
                    "return any of them") from exc
            raise PacsVerificationFailed(str(exc)) from exc
        sent_ds = parse_part(instance.data, "the sent object")
        try:
            got_ds = parse_part(stored, "the stored object")
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


