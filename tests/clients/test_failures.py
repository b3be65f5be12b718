"""clients/sdk/failures.py: expected failures become one sentence; a bug becomes one sentence that
says where its details were written (a private file), never a traceback on the terminal."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from clients.sdk.connection import ConnectionStopped
from clients.sdk.errors import DeviceWiped, RelayRequestError, RelayUnavailable
from clients.sdk.failures import describe, run_async, run_command
from protocol.errors import CloseCode

HINT = "run `lightbox login`"


def test_a_bug_prints_one_sentence_and_keeps_its_traceback_in_a_private_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def broken() -> int:
        raise RuntimeError("a bug")

    rc = run_command("lightbox", broken, login_hint=HINT, details_dir=tmp_path / "logs")
    err = capsys.readouterr().err
    assert rc == 1
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("error: lightbox stopped on an unexpected problem (RuntimeError); "
                          "the details are in ")
    (log,) = (tmp_path / "logs").iterdir()
    assert str(log) in err
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert "Traceback" in log.read_text() and "a bug" in log.read_text()


def test_ctrl_c_is_stopped_with_status_130(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted() -> int:
        raise KeyboardInterrupt

    assert run_command("lightbox", interrupted, login_hint=HINT, details_dir=tmp_path) == 130
    assert capsys.readouterr().err == "stopped\n"


@pytest.mark.parametrize(("exc", "sentence"), [
    (RelayRequestError("device_revoked", 403, "device revoked"),
     "This device was revoked by your organisation (device_revoked); ask your IT team for a "
     "new enrolment code to use Lightbox on it again."),
    (ConnectionStopped(CloseCode.DEVICE_REVOKED, "device_revoked"),
     "This device was revoked by your organisation; ask your IT team for a new enrolment code "
     "to use Lightbox on it again."),
    (RelayRequestError("refresh_reused", 401, "refresh token reused"),
     "error: your session has ended (refresh_reused): run `lightbox login`"),
    (RelayRequestError("enrolment_code_used", 409, "already used"),
     "error: enrolment_code_used: already used"),
    (RelayUnavailable("GET /v1/threads: ConnectError: refused"),
     "error: cannot reach the relay (GET /v1/threads: ConnectError: refused): check the "
     "network and the server address, then try again"),
    (TimeoutError(), "error: the relay did not answer in time: check the network, then try "
                     "again"),
    (FileNotFoundError(2, "No such file or directory", "film.png"),
     "error: No such file or directory: film.png"),
])
def test_expected_failures_are_one_sentence(exc: BaseException, sentence: str) -> None:
    assert describe(exc, login_hint=HINT) == sentence


def test_a_wiped_device_names_the_day_its_organisation_revoked_it() -> None:
    text = describe(DeviceWiped(1_796_000_000), login_hint=HINT)
    assert text is not None
    assert text.startswith("This device was revoked by your organisation on 2026-")
    assert text.endswith("; its data has been erased.")


def test_an_unknown_exception_is_not_described() -> None:
    assert describe(ValueError("x"), login_hint=HINT) is None


def test_run_async_builds_the_work_inside_the_loop_it_runs_in() -> None:
    seen: list[asyncio.AbstractEventLoop] = []

    def factory() -> asyncio.Future[int]:
        loop = asyncio.get_running_loop()  # raises RuntimeError outside a running loop
        seen.append(loop)
        future: asyncio.Future[int] = loop.create_future()
        loop.call_soon(future.set_result, 7)
        return future

    assert run_async(factory) == 7
    assert len(seen) == 1 and seen[0].is_closed()
