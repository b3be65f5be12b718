"""The ``lightbox-gateway`` program: its options and settings, its log (ids and codes, never
patient data), and the loop that runs the record gateway until it is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import math
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any, TextIO
from urllib.parse import urlsplit

from clients.gateway.app import GatewayConfig, RecordGateway
from clients.gateway.fhir import FhirClient, FhirSettings
from clients.gateway.pacs import (
    PacsClient,
    PacsSettings,
)
from clients.sdk.errors import KeyStoreError
from clients.sdk.failures import run_command
from clients.sdk.keystore import KeyStore, default_profile, lightbox_home
from protocol.model import DeviceKind

__all__ = [
    "VERSION",
    "configure_logging",
    "main",
    "serve",
]


VERSION = "0.1.0"

log = logging.getLogger("lightbox.gateway")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def configure_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """The gateway's log: a line per event with ids and codes, never patient data (what it
    says: docs/USER_GUIDE.md, "Record gateway"). ``level`` applies to Lightbox's own loggers;
    libraries log warnings only, whatever the level: httpx logs every request's URL (a QIDO-RS
    URL carries the Patient ID) and fontTools the glyphs of the consent form it subsets."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                           datefmt="%Y-%m-%d %H:%M:%S%z"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("lightbox").setLevel(level.upper())


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="lightbox-gateway", description="Lightbox record gateway: files every image it "
        "receives into PACS (DICOMweb STOW-RS), confirms it by reading it back, and reports "
        "the filing so device copies expire. PACS settings: LIGHTBOX_PACS_URL, "
        "LIGHTBOX_PACS_USERNAME, LIGHTBOX_PACS_PASSWORD_FILE (docs/OPERATIONS.md).")
    p.add_argument("--version", action="version", version=f"lightbox-gateway {VERSION}")
    p.add_argument("--profile", default=default_profile(DeviceKind.GATEWAY),
                   help="the gateway device's key store profile, as `lightbox enroll --kind "
                   "gateway` made it (default: $LIGHTBOX_PROFILE, else 'gateway')")
    p.add_argument("--issuer", default=os.environ.get("LIGHTBOX_GATEWAY_ISSUER", ""),
                   help="Issuer of Patient ID when a message names none (default: the org id)")
    p.add_argument("--fhir-url", default=os.environ.get("LIGHTBOX_FHIR_URL", ""),
                   help="FHIR R4 base URL to file each Consent on (optional; without it the "
                   "FHIR Consent is filed only inside the consent form); credentials: "
                   "LIGHTBOX_FHIR_TOKEN_FILE or LIGHTBOX_FHIR_USERNAME + "
                   "LIGHTBOX_FHIR_PASSWORD_FILE (docs/OPERATIONS.md)")
    p.add_argument("--viewer-url", default=os.environ.get("LIGHTBOX_PACS_VIEWER_URL", ""),
                   help="where clinicians view a study: an http(s) URL template holding "
                   "{study_instance_uid} (default: the study's DICOMweb URL)")
    p.add_argument("--original-lookback-days", type=int, default=None,
                   help="days before a photo of a film searched for its original study "
                   "(default: $LIGHTBOX_ORIGINAL_LOOKBACK_DAYS, else 2)")
    p.add_argument("--patient-check", choices=["on", "off"],
                   default=os.environ.get("LIGHTBOX_PATIENT_CHECK", "off"),
                   help="hold an image whose typed patient the PACS (and FHIR server) does "
                   "not know by that name and birth date (LIGHTBOX_PATIENT_CHECK)")
    p.add_argument("--retry-max", type=float, default=300.0,
                   help="longest wait between retries of an unreachable PACS or FHIR "
                   "server, in seconds")
    args = p.parse_args(argv)
    if args.viewer_url and (urlsplit(args.viewer_url).scheme not in {"http", "https"}
                            or "{study_instance_uid}" not in args.viewer_url):
        p.error("--viewer-url must be an http(s) URL holding {study_instance_uid}")
    # The settings from the environment are checked here too, each stopping the gateway
    # with one sentence (exit 2) before it asks for anything.
    if args.original_lookback_days is None:
        raw = os.environ.get("LIGHTBOX_ORIGINAL_LOOKBACK_DAYS", "").strip() or "2"
        if not (raw.isdigit() and 0 <= int(raw) <= 30):
            p.error("LIGHTBOX_ORIGINAL_LOOKBACK_DAYS must be a whole number of days between 0 "
                    "and 30")
        args.original_lookback_days = int(raw)
    if not 0 <= args.original_lookback_days <= 30:
        p.error("--original-lookback-days must be between 0 and 30")
    if args.patient_check not in {"on", "off"}:  # a default from the environment
        p.error("LIGHTBOX_PATIENT_CHECK must be on or off")
    if not (math.isfinite(args.retry_max) and args.retry_max > 0):
        p.error("--retry-max must be a positive number of seconds")
    if os.environ.get("LOG_LEVEL", "INFO").upper() not in LOG_LEVELS:
        p.error(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
    return run_command("lightbox-gateway", lambda: serve(args), failure=2,
                       details_dir=lightbox_home(),
                       login_hint="enrol the gateway again, or give its password")


def serve(args: argparse.Namespace) -> int:
    """Run the gateway until it is stopped (Ctrl-C: 0) or the relay ends its access (the
    reason is raised, for main's one sentence)."""
    try:
        settings = PacsSettings.from_env()
        fhir_settings = FhirSettings.from_env(url=args.fhir_url) if args.fhir_url else None
    except (ValueError, OSError) as exc:
        print(f"lightbox-gateway: {exc}", file=sys.stderr)
        return 2
    keystore = KeyStore.for_profile(args.profile)
    if not keystore.exists():
        print(f"lightbox-gateway: profile {args.profile!r} holds no device ({keystore.directory})"
              f": enrol the gateway first with `lightbox enroll --kind gateway --server URL "
              f"--code CODE`", file=sys.stderr)
        return 2
    password = os.environ.get("LIGHTBOX_PASSWORD") or getpass.getpass("Gateway password: ")
    try:
        store = keystore.open(password)
    except KeyStoreError as exc:
        print(f"lightbox-gateway: {exc}", file=sys.stderr)
        return 2

    async def run() -> None:
        # A service manager stops it with SIGTERM: a clean stop, told in the log
        # (docs/USER_GUIDE.md, "The record gateway" §4), not a silent end.
        terminated = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, terminated.set)
        async with contextlib.AsyncExitStack() as stack:
            pacs = await stack.enter_async_context(PacsClient(settings))
            fhir = None if fhir_settings is None else await stack.enter_async_context(
                FhirClient(fhir_settings))
            gw = RecordGateway(store, pacs, password=password, fhir=fhir, config=GatewayConfig(
                retry_max=args.retry_max, issuer_of_patient_id=args.issuer,
                viewer_url=args.viewer_url, original_lookback_days=args.original_lookback_days,
                patient_check=args.patient_check == "on"))
            await gw.start()
            assert gw.connection is not None
            stopped = gw.connection.stopped
            term: asyncio.Future[Any] = asyncio.ensure_future(terminated.wait())
            either: set[asyncio.Future[Any]] = {stopped, term}
            try:
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            finally:
                term.cancel()
                ended = stopped.result() if stopped.done() else None
                await gw.stop()
            if ended is not None:
                raise ended
            log.info("stopped on SIGTERM: deliveries not yet filed stay at the relay for the "
                     "next start")

    configure_logging(os.environ.get("LOG_LEVEL", "INFO"))  # only once it runs for real
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
