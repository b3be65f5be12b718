"""A relay whose TLS certificate comes from the hospital's own CA, behind a TLS-terminating
proxy as OPERATIONS.md "Deployment" sets it up: the clients check it with one set of CAs over
HTTPS and over the websocket alike (clients/sdk/addresses.py ``tls_context``). With the CA
named by ``SSL_CERT_FILE`` a clinician's device signs in, makes a consult and sends into it,
all through the proxy; without it, both the HTTPS request and the websocket are refused for
the certificate, and nothing reaches the relay. Before, HTTPS trusted certifi's bundle only
and the websocket the computer's store only, so no one place made both trust a hospital's
CA. Real relay, real SDK client, a real TLS proxy on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import certifi
import httpx
import msgspec
import pytest

from clients.sdk.addresses import tls_context
from clients.sdk.client import LightboxClient, MessageEvent
from clients.sdk.errors import causes
from clients.sdk.socket import RelaySocket
from tests.clinician_world import enrol_clinician
from tests.fhir_server import make_tls_files
from tests.helpers import seconds
from tests.identity_world import PASSWORD, World

ORTHO = "orthopaedics_oncall"


@dataclass
class TlsProxy:
    """TLS on loopback, certified by a CA of the test's own, in front of the relay's port."""

    url: str
    ca_file: Path
    handshakes: int = 0  # TLS handshakes completed, each a connection passed on to the relay
    writers: set[asyncio.StreamWriter] = field(default_factory=set)


@contextlib.asynccontextmanager
async def tls_proxy(tmp: Path, relay_port: int) -> AsyncIterator[TlsProxy]:
    files = make_tls_files(tmp)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.server_cert, files.server_key)
    proxy = TlsProxy(url="", ca_file=files.ca_cert)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        proxy.handshakes += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", relay_port)
        proxy.writers |= {writer, up_writer}
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(accept, "127.0.0.1", 0, ssl=context)
    proxy.url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield proxy
    finally:
        server.close()
        for writer in proxy.writers:
            writer.close()


def relay_port(world: World) -> int:
    port = httpx.URL(world.relay.base_url).port
    assert port is not None
    return port


def refused_for_its_certificate(exc: BaseException) -> bool:
    return any(isinstance(cause, ssl.SSLCertVerificationError) for cause in causes(exc))


async def test_a_relay_certified_by_the_hospitals_ca_in_ssl_cert_file_is_reached_both_ways(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    intern = await enrol_clinician(world, tmp_path, "intern", display_name="Dr Ada Intern")
    ortho = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,),
                                  display_name="Dr Bea Ortho")
    async with tls_proxy(tmp_path, relay_port(world)) as proxy:
        monkeypatch.setenv("SSL_CERT_FILE", str(proxy.ca_file))
        assert tls_context().get_ca_certs()[0]["subject"] == (
            (("commonName", "Lightbox test FHIR CA"),),)
        ortho.vault.save(msgspec.structs.replace(ortho.vault.state, server_url=proxy.url))
        over_tls = LightboxClient(ortho.vault, ortho.vault, password=PASSWORD,
                                  backoff_base=0.05, backoff_max=0.5)
        events = intern.client.subscribe()
        await intern.client.start(wait_connected=seconds(10))
        try:
            await over_tls.start(wait_connected=seconds(10))  # HTTPS sign-in, then wss
            thread = await over_tls.create_thread(users=[intern.user.user_id])
            await over_tls.send_text(thread.thread_id, "Seen on the desktop, over TLS.")
            async with asyncio.timeout(seconds(15)):
                while True:
                    event = await events.get()
                    if isinstance(event, MessageEvent):
                        break
            assert event.body.text == "Seen on the desktop, over TLS."
            assert event.message.sender_user_id == ortho.user.user_id
        finally:
            await over_tls.close()
            await intern.client.close()
    assert proxy.handshakes >= 2, proxy.handshakes  # an HTTPS connection and the websocket


async def test_without_the_hospitals_ca_https_and_the_websocket_refuse_the_relay(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ortho = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,))
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    async with tls_proxy(tmp_path, relay_port(world)) as proxy:
        ortho.vault.save(msgspec.structs.replace(ortho.vault.state, server_url=proxy.url))
        client = LightboxClient(ortho.vault, ortho.vault, password=PASSWORD,
                                backoff_base=0.05, backoff_max=0.5)
        try:
            with pytest.raises(Exception) as https:
                await client.start(wait_connected=seconds(10))  # its sign-in, over HTTPS
            assert refused_for_its_certificate(https.value), repr(https.value)
        finally:
            await client.close()
        with pytest.raises(Exception) as wss:
            await RelaySocket.connect(proxy.url.replace("https:", "wss:") + "/v1/ws",
                                      access_token="unused", device_id=ortho.vault.state.device_id,
                                      sign=lambda data: b"")
        assert refused_for_its_certificate(wss.value), repr(wss.value)
    assert proxy.handshakes == 0  # no connection got past TLS to the relay


def _subjects(context: ssl.SSLContext) -> set[object]:
    return {(repr(c["subject"]), repr(c["serialNumber"])) for c in context.get_ca_certs()}


def test_by_default_the_computers_store_and_certifis_bundle_are_both_trusted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    trusted = _subjects(tls_context())
    mozilla = ssl.create_default_context(cafile=certifi.where())
    assert _subjects(mozilla) <= trusted
    store = ssl.get_default_verify_paths().cafile
    assert store is not None, "this computer has no CA store file (ca-certificates)"
    computer = ssl.create_default_context(cafile=store)
    assert _subjects(computer) <= trusted
    assert tls_context().verify_mode == ssl.CERT_REQUIRED and tls_context().check_hostname


async def test_the_certificate_checks_are_made_once_for_every_client_of_the_process(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a CA bundle costs about 28 ms of CPU: made once, not for each HTTP client."""
    made: list[object] = []
    real = ssl.create_default_context

    def counted(*args: object, **kwargs: object) -> ssl.SSLContext:
        made.append(args or kwargs)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ssl, "create_default_context", counted)
    async with tls_proxy(tmp_path, relay_port(world)) as proxy:
        monkeypatch.setenv("SSL_CERT_FILE", str(proxy.ca_file))
        made.clear()  # the proxy's own
        for login in ("ada", "bea", "cy"):
            clinician = await enrol_clinician(world, tmp_path, login)
            clinician.vault.save(msgspec.structs.replace(clinician.vault.state,
                                                         server_url=proxy.url))
            client = LightboxClient(clinician.vault, clinician.vault, password=PASSWORD)
            try:
                await client.start(wait_connected=seconds(10))
            finally:
                await client.close()
    assert len(made) == 1, made
