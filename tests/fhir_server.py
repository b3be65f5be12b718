"""A real FHIR R4 server for gateway/fhir.py's tests: SEKMET FHIR R4 Tester (``sekmet-fhir``).

Installed from PyPI by the dev extras (``pip install -e '.[dev]'``, which ``make test`` runs).
It is a complete FHIR R4 server on a SQLite store (FastAPI under uvicorn): create, conditional
create (``If-None-Exist``), read, search with token parameters, structural validation of what it
is sent (fhir.resources models), and inbound bearer / HTTP Basic authentication, with TLS when
given a certificate. We run it as its own process, as an operator would run a FHIR server, not
inside the test process (it reconfigures logging on start).

Each :class:`FhirServer` gets its own temporary folder (config, SQLite database, log), a free
loopback port, authentication on (a random bearer token and a random Basic user), the workflow
simulator off (it would react to the resources we file) and the traffic log off.
``/fhir/metadata`` answers without credentials; everything else needs them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.util
import ipaddress
import json
import os
import secrets
import ssl
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.helpers import seconds
from tests.servers import ServerProcess, free_port, running_in_data_dir

__all__ = ["FhirServer", "FhirServerMissing", "TlsFiles", "make_tls_files",
           "require_fhir_server", "running_fhir_server"]

INSTALL_HINT = (
    "gateway/fhir.py's tests need a real FHIR R4 server: the PyPI package sekmet-fhir, in the "
    "dev extras; install them with `.venv/bin/pip install -e '.[dev]'` (`make test` does)"
)


class FhirServerMissing(RuntimeError):
    """The sekmet-fhir package is not installed in this environment."""


def require_fhir_server() -> None:
    """Raise :class:`FhirServerMissing` (saying how to install it) if sekmet is absent."""
    if importlib.util.find_spec("sekmet") is None:
        raise FhirServerMissing(f"the `sekmet` module is missing: {INSTALL_HINT}")


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA and a server certificate it signed for 127.0.0.1 (PEM files)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A private CA and a server certificate for 127.0.0.1 and localhost, valid for a day."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Lightbox test FHIR CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    files.server_key.chmod(0o600)
    return files


class FhirServer(ServerProcess):
    """One SEKMET process on a loopback port, HTTP or (with ``tls``) HTTPS."""

    name = "the FHIR server"

    def __init__(self, workdir: Path, *, tls: TlsFiles | None = None) -> None:
        super().__init__(workdir, "sekmet.log")
        require_fhir_server()
        self.tls = tls
        self.port = free_port()
        self.token = secrets.token_urlsafe(32)
        self.username = "lbx-test-" + secrets.token_hex(4)
        self.password = secrets.token_urlsafe(24)
        self.config_path = workdir / "sekmet.yaml"
        self._write_config()

    @property
    def base_url(self) -> str:
        """The FHIR base (``[base]`` in the FHIR R4 http spec)."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}/fhir"

    def _write_config(self) -> None:
        config: dict[str, object] = {
            "base_url": self.base_url,
            "host": "127.0.0.1",
            "port": self.port,
            "data_dir": str(self.workdir / "data"),
            "db_path": str(self.workdir / "data" / "sekmet.db"),
            "own_private_key_path": str(self.workdir / "keys" / "sekmet.pem"),
            "server_auth": {"types": ["bearer", "basic"], "tokens": [self.token],
                            "users": {self.username: self.password}},
            "validation": {"inbound": "strict"},
            "simulator": {"enabled": False},
            "log_inbound": False,
        }
        if self.tls is not None:
            config["tls_certfile"] = str(self.tls.server_cert)
            config["tls_keyfile"] = str(self.tls.server_key)
        # YAML is a superset of JSON: no YAML writer needed.
        self.config_path.write_text(json.dumps(config, indent=2))
        self.config_path.chmod(0o600)

    def start(self, *, timeout: float | None = None) -> None:
        """Start the server and wait until ``/fhir/metadata`` answers 200."""
        if self.running:
            return
        verify: ssl.SSLContext | bool = True
        if self.tls is not None:
            verify = ssl.create_default_context(cafile=str(self.tls.ca_cert))
        self._launch(
            [sys.executable, "-m", "sekmet.cli", "serve", "--config", str(self.config_path)],
            ready_url=f"{self.base_url}/metadata",
            client=httpx.Client(timeout=seconds(2), verify=verify),
            timeout=timeout if timeout is not None else seconds(30),
            env={k: v for k, v in os.environ.items() if not k.startswith("SEKMET_")})


@contextlib.contextmanager
def running_fhir_server(*, tls: bool = False) -> Iterator[FhirServer]:
    """A FHIR server in a fresh folder under .data/, always stopped and removed afterwards."""
    def make(workdir: Path) -> FhirServer:
        return FhirServer(workdir, tls=make_tls_files(workdir) if tls else None)

    with running_in_data_dir("test-fhir-", make, FhirServer.start) as server:
        yield server
