"""The enrolment handout (clients/admin/handout.py) read back the way a person and a phone read it:
the PDF's text by poppler, its page rendered by poppler and its QR code decoded by zbar (an
independent decoder), the PNG's QR code by zbar and its text by tesseract. What the QR code
carries must be what the text says; the page must hold everything the first enrolment needs."""

from __future__ import annotations

import contextlib
import io
import re
import stat
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import pytest

from clients.admin import cli as admin_cli
from clients.admin.handout import (
    EXPIRED_NOTE,
    FINGERPRINT_NOTE,
    Handout,
    HandoutError,
    expiry_text,
    prepare_directory,
    save_handout,
)
from tests.documents import ocr_text, pdf_page_count, pdf_page_png, pdf_text, qr_codes

PARIS = ZoneInfo("Europe/Paris")
ADA = Handout(name="Ada Byron", login="ada.byron", server="https://relay.example.org:8443",
              code="7K2M-9QXP-4RTV-8WJN-3HBC", expires_at=1_814_778_300,  # 2027-07-05 09:05Z
              org_fingerprint="q3VnWc1x_8yZ-kP0aB7d2Q")
ADA_EXPIRES = "2027-07-05 11:05 CEST (UTC+02:00)"


def _qr_fields(uri: str) -> tuple[str, str]:
    parts = urlsplit(uri)
    assert (parts.scheme, parts.netloc, parts.path) == ("lightbox", "enrol", "")
    query = parse_qs(parts.query, strict_parsing=True)
    assert set(query) == {"server", "code"}, query
    return query["server"][0], query["code"][0]


def _flat(text: str) -> str:
    """Text with whitespace removed and the letters OCR confuses with digits made digits."""
    return re.sub(r"\s+", "", text).upper().translate(str.maketrans("OIL", "011"))


def test_the_pdf_is_one_page_whose_qr_code_carries_the_server_and_code_its_text_shows(
        tmp_path: Path) -> None:
    files = save_handout(prepare_directory(tmp_path / "handouts"), ADA, tz=PARIS)
    assert files.pdf == tmp_path / "handouts" / "ada.byron.pdf"
    assert stat.S_IMODE(files.pdf.stat().st_mode) == 0o600
    assert pdf_page_count(files.pdf) == 1
    text = pdf_text(files.pdf)

    relay = re.search(r"^\s*Relay address\s+(\S+)\s*$", text, re.M)
    code = re.search(r"^\s*Enrolment code\s+(\S+)\s*$", text, re.M)
    command = re.search(r"lightbox enroll --server (\S+)\s+--code (\S+)", text)
    assert relay and code and command, text
    (uri,) = qr_codes(pdf_page_png(files.pdf, tmp_path))  # the printed page, as a phone sees it
    assert _qr_fields(uri) == (relay.group(1), code.group(1)) == command.groups() \
        == (ADA.server, ADA.code)

    assert re.search(r"^\s*Name\s+Ada Byron\s*$", text, re.M), text
    assert re.search(r"^\s*Login\s+ada\.byron\s*$", text, re.M), text
    assert re.search(rf"^\s*Valid until\s+{re.escape(ADA_EXPIRES)}, single use\s*$", text,
                     re.M), text
    assert re.search(r"^\s*Organisation key\s+q3VnWc1x_8yZ-kP0aB7d2Q\s*$", text, re.M), text
    flat = " ".join(text.split())
    assert FINGERPRINT_NOTE in flat and EXPIRED_NOTE in flat


def test_the_png_carries_the_same_qr_code_and_the_text_for_a_screen(tmp_path: Path) -> None:
    files = save_handout(tmp_path, ADA, tz=PARIS)
    assert files.png == tmp_path / "ada.byron.png"
    assert files.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert stat.S_IMODE(files.png.stat().st_mode) == 0o600
    (uri,) = qr_codes(files.png)
    assert _qr_fields(uri) == (ADA.server, ADA.code)
    seen = _flat(ocr_text(files.png))
    for shown in (ADA.name, ADA.login, ADA.server, ADA.code, ADA_EXPIRES,
                  f"lightbox enroll --server {ADA.server}", "key fingerprint",
                  "enrolment_code_expired"):
        assert _flat(shown) in seen, (shown, seen)


def test_a_long_name_and_address_still_fit_one_page_and_the_qr_code_still_reads(
        tmp_path: Path) -> None:
    long = Handout(name="Zoë Ñúñez-Łukasiewicz de la Fontaine-Montmorency " * 3,
                   login="zoe.nunez",
                   server="https://lightbox-relay.radiology.north-west-regional-hospitals."
                          "example.org:8443/lightbox",
                   code=ADA.code, expires_at=ADA.expires_at, org_fingerprint=ADA.org_fingerprint)
    files = save_handout(tmp_path, long)
    assert pdf_page_count(files.pdf) == 1
    text = pdf_text(files.pdf)
    assert "Zoë Ñúñez-Łukasiewicz" in text  # DejaVu: any name prints
    assert _flat(long.first_command()) in _flat(text)  # wrapped, but all there
    for image in (files.png, pdf_page_png(files.pdf, tmp_path)):
        (uri,) = qr_codes(image)
        assert _qr_fields(uri) == (long.server, long.code)


@pytest.mark.parametrize(("zone", "shown"), [
    ("UTC", "2027-07-05 09:05 UTC"),
    ("Europe/Paris", ADA_EXPIRES),
    ("America/New_York", "2027-07-05 05:05 EDT (UTC-04:00)"),
    ("Asia/Kolkata", "2027-07-05 14:35 IST (UTC+05:30)"),
    ("Europe/Istanbul", "2027-07-05 12:05 UTC+03:00"),  # a zone without an abbreviation
])
def test_the_expiry_shows_an_iso_date_24_hour_time_and_the_zone(zone: str, shown: str) -> None:
    assert expiry_text(ADA.expires_at, ZoneInfo(zone)) == shown


def test_a_handout_dir_that_is_a_file_is_refused_in_one_sentence(tmp_path: Path) -> None:
    blocker = tmp_path / "handouts"
    blocker.write_text("not a folder")
    for target in (blocker, blocker / "ward-7"):
        with pytest.raises(HandoutError) as caught:
            prepare_directory(target)
        assert str(caught.value) == (f"cannot write handouts in {target}: that path, or one "
                                     "above it, is a file, not a folder")


def test_user_add_with_an_unwritable_handout_dir_says_so_before_provisioning_anyone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The folder is checked before the relay is asked for anything: the relay here is a
    closed port, so reaching it would fail differently; a code is shown only once, so
    provisioning without somewhere to put the handout would waste it."""
    for key, value in {
        "LIGHTBOX_INSECURE_FAST_KDF": "1", "LIGHTBOX_ADMIN_HOME": str(tmp_path / "it"),
        "LIGHTBOX_ORG_KEYFILE": str(tmp_path / "it" / "org.key"),
        "LIGHTBOX_ORG_PASSPHRASE": "orbit lantern quarry 42",
        "LIGHTBOX_SERVER": "http://127.0.0.1:9", "LIGHTBOX_ADMIN_TOKEN": "token",
    }.items():
        monkeypatch.setenv(key, value)
    assert admin_cli.main(["org", "init", "--org-id", "st-example", "--keyfile",
                           str(tmp_path / "it" / "org.key")]) == 0
    blocker = tmp_path / "handouts"
    blocker.write_text("not a folder")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = admin_cli.main(["user", "add", "--name", "Ada Byron", "--login", "ada.byron",
                             "--roles", "physician", "--licence-type", "MD",
                             "--licence-number", "GMC-7012345", "--jurisdiction", "UK",
                             "--licence-expires", "2030-06-30", "--no-qr",
                             "--handout-dir", str(blocker)])
    assert rc == 2
    assert err.getvalue() == (f"error: cannot write handouts in {blocker}: that path, or one "
                              "above it, is a file, not a folder; nobody was provisioned\n")
    assert "ada.byron" not in out.getvalue()
