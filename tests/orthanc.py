"""A real Orthanc PACS for the record gateway's tests (NOTES.md, "Orthanc").

Debian's ``orthanc`` and ``orthanc-dicomweb`` packages (``make system-deps``). Each
:class:`OrthancServer` gets its own temporary storage and index folders, a free loopback HTTP
port, the DICOM port off, remote access off, HTTP basic authentication on with a random user, and
the DICOMweb plugin enabled. ``DicomWeb.Host`` stays unset: set, the plugin writes that host into
every RetrieveURL and the port is lost.

Orthanc 1.10 has no bind-address option: it listens on every interface and refuses non-local
clients because ``RemoteAccessAllowed`` is false.

:meth:`OrthancServer.stop` and :meth:`OrthancServer.start` let a test take the PACS away mid-way
and bring it back on the same port and the same storage.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom

from tests.helpers import seconds
from tests.servers import ServerProcess, free_port, running_in_data_dir

__all__ = ["DICOMWEB_PLUGIN", "OrthancMissing", "OrthancServer", "original_study",
           "require_orthanc", "running_orthanc"]

BINARY = "Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
INSTALL_HINT = (
    "the record gateway's tests need a real Orthanc with its DICOMweb plugin (Debian packages "
    "orthanc and orthanc-dicomweb); install them with `make system-deps` (as root), which runs "
    "`.ci/system-deps orthanc orthanc-dicomweb`"
)


class OrthancMissing(RuntimeError):
    """The Orthanc binary or its DICOMweb plugin is not installed."""


def require_orthanc() -> str:
    """The Orthanc binary's path; :class:`OrthancMissing` (saying how to install) if absent."""
    binary = shutil.which(BINARY)
    if binary is None:
        raise OrthancMissing(f"`{BINARY}` is not on PATH: {INSTALL_HINT}")
    if not DICOMWEB_PLUGIN.exists():
        raise OrthancMissing(f"{DICOMWEB_PLUGIN} is missing: {INSTALL_HINT}")
    return binary


class OrthancServer(ServerProcess):
    """One Orthanc process on a loopback port; start, stop and start again on the same data."""

    name = "Orthanc"

    def __init__(self, workdir: Path, *, port: int | None = None,
                 username: str | None = None) -> None:
        super().__init__(workdir, "orthanc.log")
        self.binary = require_orthanc()
        # Orthanc binds every interface, so ask for a port that is free on all of them.
        self.port = port or free_port()
        self.username = username or "lbx-test-" + secrets.token_hex(4)
        self.password = secrets.token_urlsafe(24)
        self.config_path = workdir / "orthanc.json"
        self._write_config()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root (QIDO-RS, WADO-RS and STOW-RS live under it)."""
        return f"{self.base_url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        return (self.username, self.password)

    def _write_config(self) -> None:
        storage = self.workdir / "storage"
        index = self.workdir / "index"
        storage.mkdir(exist_ok=True)
        index.mkdir(exist_ok=True)
        config = {
            "Name": "LIGHTBOX-TEST",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(index),
            "StorageCompression": False,
            "HttpServerEnabled": True,
            "HttpPort": self.port,
            "HttpThreadsCount": 8,
            "HttpDescribeErrors": True,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.username: self.password},
            "ConcurrentJobs": 1,
            "SaveJobs": False,
            "OverwriteInstances": False,
            "ExecuteLuaEnabled": False,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        }
        self.config_path.write_text(json.dumps(config, indent=2))
        self.config_path.chmod(0o600)

    def start(self, *, timeout: float | None = None) -> None:
        """Start Orthanc and wait until its REST API answers an authenticated request."""
        if not self.running:
            self._launch([self.binary, str(self.config_path)],
                         ready_url=f"{self.base_url}/system",
                         client=httpx.Client(auth=self.auth, timeout=seconds(2)),
                         timeout=timeout if timeout is not None else seconds(20))


@contextlib.contextmanager
def running_orthanc(*, username: str | None = None) -> Iterator[OrthancServer]:
    """An Orthanc in a fresh folder under .data/, always stopped and removed afterwards; its
    user is ``username`` (random by default)."""
    def make(workdir: Path) -> OrthancServer:
        return OrthancServer(workdir, username=username)

    with running_in_data_dir("test-orthanc-", make, OrthancServer.start) as server:
        yield server


def original_study(patient_id: str, issuer: str, study_date: dt.date, *,
                   modality: str = "CR", description: str = "XR WRIST 2 VIEWS",
                   patient_name: str = "TEST^ORIGINAL",
                   birth_date: dt.date | None = None) -> bytes:
    """A Part-10 acquisition object (a small Computed Radiography image by default) for a
    test patient: what the imaging department filed before anyone photographed the film.
    CLINICAL_SAFETY.md gateway search must find it by patient and date."""
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.UID("1.2.840.10008.5.1.4.1.1.1")  # CR Storage
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = pydicom.dataset.FileDataset("", pydicom.dataset.Dataset(), file_meta=meta,
                                     preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, \
        meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.PatientName, ds.PatientID, ds.IssuerOfPatientID = patient_name, patient_id, issuer
    if birth_date is not None:
        ds.PatientBirthDate = birth_date.strftime("%Y%m%d")
    ds.StudyDate = ds.SeriesDate = study_date.strftime("%Y%m%d")
    ds.StudyTime = "083000"
    ds.Modality, ds.StudyDescription = modality, description
    ds.AccessionNumber, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "", "1", 1, 1
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = bytes(range(64))
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
