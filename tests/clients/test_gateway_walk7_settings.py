"""A wrong setting stops ``lightbox-gateway`` with one sentence naming it and exit status 2, before
it asks for its password, and writes no error log (docs/OPERATIONS.md, "Record gateway"): a
typo in the PACS address (``ftp://x``, ``http//x``) is the user's to fix, not an "unexpected
problem". Each setting the gateway parses at start is tried through its entry point; the PACS
address also through the real program of an enrolled gateway, as IT meets it."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest

from clients.gateway import cli as gateway_cli
from tests.clients.test_cli_failures import run
from tests.clients.test_gateway import GATEWAY_PASSWORD, _enrol_gateway
from tests.identity_world import World

PACS_URL = ("lightbox-gateway: LIGHTBOX_PACS_URL must be an http(s) URL of the DICOMweb root, "
            "such as https://pacs.example.org/dicom-web\n")
NOT_PEM = "not a certificate\n"


def _usage_error(sentence: str) -> str:
    """The last line argparse writes for a wrong option or variable it checks."""
    return f"lightbox-gateway: error: {sentence}\n"


CASES = [
    ({"LIGHTBOX_PACS_URL": "ftp://x"}, [], PACS_URL),
    ({"LIGHTBOX_PACS_URL": "http//x"}, [], PACS_URL),
    ({"LIGHTBOX_PACS_URL": "http://[::1"}, [], PACS_URL),
    ({"LIGHTBOX_PACS_TIMEOUT": "soon"}, [],
     "lightbox-gateway: LIGHTBOX_PACS_TIMEOUT must be a number of seconds of at least 0.1, not "
     "'soon'\n"),
    ({"LIGHTBOX_PACS_TIMEOUT": "0"}, [],
     "lightbox-gateway: LIGHTBOX_PACS_TIMEOUT must be a number of seconds of at least 0.1, not "
     "'0'\n"),
    ({"LIGHTBOX_PACS_MAX_RESPONSE_BYTES": "1e9"}, [],
     "lightbox-gateway: LIGHTBOX_PACS_MAX_RESPONSE_BYTES must be a number of bytes of at least "
     "1024, not '1e9'\n"),
    ({"LIGHTBOX_PACS_USERNAME": "filer"}, [],
     "lightbox-gateway: set both LIGHTBOX_PACS_USERNAME and LIGHTBOX_PACS_PASSWORD_FILE, or "
     "neither\n"),
    ({"LIGHTBOX_PACS_USERNAME": "filer", "LIGHTBOX_PACS_PASSWORD_FILE": "{tmp}/missing"}, [],
     "lightbox-gateway: LIGHTBOX_PACS_PASSWORD_FILE: {tmp}/missing cannot be read "
     "(FileNotFoundError)\n"),
    ({"LIGHTBOX_PACS_CA_FILE": "{tmp}/ca.pem"}, [],
     "lightbox-gateway: LIGHTBOX_PACS_CA_FILE: {tmp}/ca.pem is not a readable CA bundle (PEM "
     "certificates)\n"),
    ({"LIGHTBOX_FHIR_CA_FILE": "{tmp}/ca.pem"}, ["--fhir-url", "https://fhir.example.org/r4"],
     "lightbox-gateway: LIGHTBOX_FHIR_CA_FILE: {tmp}/ca.pem is not a readable CA bundle (PEM "
     "certificates)\n"),
    ({"LIGHTBOX_FHIR_TIMEOUT": "-1"}, ["--fhir-url", "https://fhir.example.org/r4"],
     "lightbox-gateway: LIGHTBOX_FHIR_TIMEOUT must be a number of seconds of at least 0.1, not "
     "'-1'\n"),
    ({}, ["--fhir-url", "ftp://fhir.example.org/r4"],
     "lightbox-gateway: the FHIR URL must be an http(s) URL of the FHIR base\n"),
    ({"LIGHTBOX_ORIGINAL_LOOKBACK_DAYS": "two"}, [], _usage_error(
        "LIGHTBOX_ORIGINAL_LOOKBACK_DAYS must be a whole number of days between 0 and 30")),
    ({"LOG_LEVEL": "loud"}, [], _usage_error(
        "LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")),
    ({}, ["--retry-max", "0"], _usage_error("--retry-max must be a positive number of seconds")),
]


@pytest.mark.parametrize(("settings", "argv", "sentence"), CASES,
                         ids=[f"{i}-{next(iter(c[0]), c[1][0] if c[1] else '')}"
                              for i, c in enumerate(CASES)])
def test_a_wrong_setting_stops_the_gateway_with_its_sentence_and_no_error_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: dict[str, str],
        argv: list[str], sentence: str) -> None:
    for key in [k for k in os.environ if k.startswith("LIGHTBOX_")] + ["LOG_LEVEL"]:
        monkeypatch.delenv(key, raising=False)
    (tmp_path / "ca.pem").write_text(NOT_PEM)
    home = tmp_path / "home"
    monkeypatch.setenv("LIGHTBOX_HOME", str(home))
    monkeypatch.setenv("LIGHTBOX_PACS_URL", "http://127.0.0.1:9/dicom-web")
    for key, value in settings.items():
        monkeypatch.setenv(key, value.format(tmp=tmp_path))
    err = io.StringIO()
    rc: int | str | None
    with contextlib.redirect_stderr(err):
        try:
            rc = gateway_cli.main(argv)
        except SystemExit as exc:  # argparse's own exit, for what it checks
            rc = exc.code
    assert rc == 2
    assert err.getvalue().splitlines(keepends=True)[-1] == sentence.format(tmp=tmp_path)
    assert "unexpected problem" not in err.getvalue()
    assert not home.exists() or not list(home.glob("*error*.log"))


async def test_an_enrolled_gateway_with_a_typo_in_the_pacs_address_stops_with_its_sentence(
        world: World, tmp_path: Path) -> None:
    home = tmp_path / "gateway-host"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIGHTBOX_")} | {
        "LIGHTBOX_HOME": str(home), "LIGHTBOX_PASSWORD": GATEWAY_PASSWORD,
        "LIGHTBOX_INSECURE_FAST_KDF": "1", "LOG_LEVEL": "INFO"}
    await _enrol_gateway(world, env)
    for typo in ("ftp://x", "http//x"):
        rc, out, err = await run("lightbox-gateway", env=env | {"LIGHTBOX_PACS_URL": typo})
        assert (rc, out, err) == (2, "", PACS_URL)
    assert not list(home.rglob("*error*.log"))
