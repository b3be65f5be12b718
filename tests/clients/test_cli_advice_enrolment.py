"""A code refused as invalid after IT reissued it, and where the phone app is: the handout
(clients/admin/handout.py) names the phone app's address (``LIGHTBOX_PHONE_APP``) and says
what ``enrolment_code_invalid`` may mean, read back from the PDF by poppler and from the PNG
by tesseract; and ``lightbox enroll`` with a code the relay replaced says the same in words,
against a real relay."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from clients.admin import handout
from clients.admin.handout import INVALID_NOTE, Handout, phone_app_address, save_handout
from tests.clinician_world import cli_world
from tests.clinician_world import run_cli as lightbox
from tests.documents import ocr_text, pdf_text
from tests.identity_world import World

PHONE = "https://phone.example.org"
ADA = Handout(name="Ada Byron", login="ada.byron", server="https://relay.example.org:8443",
              code="7K2M-9QXP-4RTV-8WJN-3HBC", expires_at=1_814_778_300,
              org_fingerprint="q3VnWc1x_8yZ-kP0aB7d2Q",
              phone_app=phone_app_address({"LIGHTBOX_PHONE_APP": f" {PHONE}/ "}))

world = cli_world  # the relay and the CLI's environment (tests/clinician_world.py)


def _flat(text: str) -> str:
    return re.sub(r"\s+", "", text).upper().translate(str.maketrans("OIL", "011"))


def test_the_handout_names_the_phone_app_and_what_an_invalid_code_may_mean(
        tmp_path: Path) -> None:
    assert ADA.phone_app == PHONE
    files = save_handout(tmp_path, ADA)
    text = pdf_text(files.pdf)
    assert re.search(rf"^\s*Phone app\s+{re.escape(PHONE)}\s*$", text, re.M), text
    assert INVALID_NOTE in " ".join(text.split())
    assert INVALID_NOTE == (
        "Code refused as invalid (lightbox says enrolment_code_invalid)? Check it is typed as "
        "printed. IT may have replaced this handout with a newer one: only the newest code "
        "works, so ask IT for the newest handout.")
    seen = _flat(ocr_text(files.png))
    for shown in (PHONE, "enrolment_code_invalid", "ask IT for the newest handout"):
        assert _flat(shown) in seen, (shown, seen)
    out = io.StringIO()
    handout.print_handout(out, ADA, qr=False)
    assert f"\n  phone app:        {PHONE}\n" in out.getvalue()


def test_without_the_setting_or_for_the_gateway_the_handout_names_no_phone_app(
        tmp_path: Path) -> None:
    assert phone_app_address({}) == ""
    gateway = Handout(name="Record gateway", login="record.gateway", server=ADA.server,
                      code=ADA.code, expires_at=ADA.expires_at,
                      org_fingerprint=ADA.org_fingerprint, gateway=True, phone_app=PHONE)
    for sheet in (gateway, Handout(name=ADA.name, login=ADA.login, server=ADA.server,
                                   code=ADA.code, expires_at=ADA.expires_at,
                                   org_fingerprint=ADA.org_fingerprint)):
        text = pdf_text(save_handout(tmp_path, sheet).pdf)
        assert "Phone app" not in text and PHONE not in text, text
        assert INVALID_NOTE in " ".join(text.split())


async def test_enrolling_with_a_code_it_reissued_says_to_ask_for_the_newest_handout(
        world: World) -> None:
    amy = world.org.user("amy.ortho")
    (result,) = await world.provision(amy)
    assert result["ok"], result
    newer = world.org.user("amy.ortho", user_id=amy.user_id)
    row = newer.provision_row()
    del row["login"]
    r = await world.http.post(f"/v1/admin/users/{amy.user_id}/enrolment", json=row,
                              headers=world.admin_headers())
    assert r.status_code == 200, r.text

    rc, out, err = await lightbox("--profile", "amy", "enroll", "--server",
                                  world.relay.base_url, "--code", amy.code)
    assert (rc, out) == (1, "")
    assert err == ("error: enrolment_code_invalid: this enrolment code does not work: check it "
                   "against your handout; if IT has given you a newer handout since, only the "
                   "newest one's code works: ask IT for the newest handout\n")


async def test_a_code_of_the_wrong_shape_is_named_as_no_code_before_any_prompt(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight characters are no typo of a handout's code: said as such, as the phone app says
    it, before the password is asked for (none is given here: a prompt would fail otherwise)
    and with nothing saved."""
    monkeypatch.delenv("LIGHTBOX_PASSWORD", raising=False)
    rc, out, err = await lightbox("--profile", "amy", "enroll", "--server",
                                  world.relay.base_url, "--code", "H3X6P7YV")
    assert (rc, out) == (1, "")
    assert err == ("error: enrolment_code_invalid: that is not an enrolment code: it has 20 "
                   "letters and digits, in five groups of four, as on your handout (such as "
                   "7K2M-9QXP-4RTV-8WJN-3HBC); nothing was saved\n")
