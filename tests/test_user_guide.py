"""docs/USER_GUIDE.md is a test: its command blocks run in order, as written, for the whole
journey (tests/guide_runner.py explains the annotations that make a block runnable).

The relay is started the way ``make run`` starts it, by the guide's own block: a real
``lightbox-server`` process on an embedded Postgres in the relay host's LIGHTBOX_DATA_DIR. The
PACS is a real Orthanc (tests/orthanc.py) and the record gateway the real ``lightbox-gateway``.
Each person (:data:`ACTORS`) has their own HOME, working directory and environment; the secrets
a person would type at a prompt come from the variables the guide names for scripts. The
fictional addresses in the guide (``https://relay.example.org``, the PACS) are mapped to the
test's loopback ones in :func:`test_the_user_guide_runs_as_written`, and nowhere else.

Only for tests: ``LIGHTBOX_INSECURE_FAST_KDF`` and the cheap Argon2 profile (the guide says so),
and a short expiry grace (``LIGHTBOX_EXPIRY_GRACE``) so that "every copy expires" happens within
the test. Each block's output is kept in test-artefacts/user-guide/.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from scripts.demo import xray_film_png
from server.embedded import EmbeddedPostgres
from tests.clients.test_phi import labelled_film
from tests.guide_runner import GuideFailed, Journey, parse_guide
from tests.helpers import ROOT, seconds
from tests.orthanc import running_orthanc
from tests.servers import free_port

GUIDE = ROOT / "docs" / "USER_GUIDE.md"
ARTEFACTS = ROOT / "test-artefacts" / "user-guide"
RELAY = "https://relay.example.org"
PACS = "https://pacs.example.org/dicom-web"
PACS_USER = "lightbox-gateway"

# What each person would type at the prompts; all made up, valid only inside the test.
ACTORS: dict[str, dict[str, str]] = {
    "it-workstation": {"LIGHTBOX_ORG_PASSPHRASE": "guide organisation passphrase 1",
                       "LIGHTBOX_ADMIN_PASSWORD": "guide-admin-lantern-71"},
    "relay-host": {"LIGHTBOX_ADMIN_PASSWORD": "guide-admin-lantern-71",
                   # test only: copies expire 30 s after filing (15 minutes by default),
                   # time enough for the specialist to open the image and close her desktop
                   # first; the gateway files at once, and she closed it 8 s later on a quiet
                   # 2-core machine, 15 s later on one loaded 6 (the time waited here)
                   "LIGHTBOX_EXPIRY_GRACE": str(round(seconds(30))),
                   "LIGHTBOX_EXPIRY_SWEEP_INTERVAL": "1"},
    "intern-phone": {"LIGHTBOX_PASSWORD": "night-shift-harbour-42"},
    "specialist-phone": {"LIGHTBOX_PASSWORD": "plaster-cast-meadow-17"},
    "specialist-desktop": {"LIGHTBOX_PASSWORD": "plaster-cast-meadow-17"},
    "gateway-host": {"LIGHTBOX_PASSWORD": "gateway-filing-quarry-93"},
}


def test_every_shell_block_of_the_guide_is_run_or_marked_not_run() -> None:
    guide = parse_guide(GUIDE.read_text())  # raises on an unannotated sh block
    run = [s for s in guide.steps if s.block is not None and "file" not in s.options]
    assert len(run) >= 30, f"only {len(run)} blocks run"
    # Reference listings are the exception, not the way to skip a step.
    assert len(guide.not_run) <= 3, [(b.line, why) for b, why in guide.not_run]


def test_the_guide_annotations_are_checked() -> None:
    bare = "text\n\n```sh\nlightbox whoami\n```\n"
    with pytest.raises(ValueError, match="line 3: a sh block with neither"):
        parse_guide(bare)
    with pytest.raises(ValueError, match="unknown option 'colour'"):
        parse_guide("<!-- run: as=x colour=red -->\n```sh\ntrue\n```\n")
    with pytest.raises(ValueError, match="has no \\(group\\) to copy"):
        parse_guide("<!-- run: as=x CODE=/code: \\S+/ -->\n```sh\ntrue\n```\n")
    with pytest.raises(ValueError, match="must be an action"):
        parse_guide("<!-- run: as=x -->\n\nSome prose.\n")
    steps = parse_guide("<!-- run: as=x CODE=/code: (\\S+) ok/ until=/done/ -->\n\n"
                        "```sh\ntrue\n```\n<!-- run: stop=relay -->\n").steps
    assert steps[0].captures["CODE"].pattern == "code: (\\S+) ok"
    assert steps[0].options == {"as": "x", "until": "/done/"}
    assert steps[1].block is None and steps[1].options == {"stop": "relay"}


def _tiny_journey(tmp_path: Path, text: str) -> Journey:
    journey = Journey(tmp_path / "work", actors={"a": {"GREETING": "hello"}, "b": {}},
                      base_env=_base_env(), substitutions={"https://relay.example.org": "R"},
                      artefacts=tmp_path / "artefacts")
    try:
        journey.run_all(parse_guide(text).steps)
    finally:
        journey.close()
    return journey


def test_placeholders_are_copied_from_output_and_exports_persist_per_actor(
        tmp_path: Path) -> None:
    journey = _tiny_journey(tmp_path, (
        '<!-- run: as=a CODE=/code: (\\S+)/ -->\n```sh\necho "code: AB-12 for $GREETING"\n'
        'export KEPT=yes\n```\n'
        '<!-- run: as=a expect=/AB-12 R yes/ -->\n```sh\necho CODE https://relay.example.org '
        '"$KEPT"\n```\n'
        '<!-- run: as=b expect=/^AB-12 -$/ -->\n```sh\necho "CODE ${KEPT:--}"\n```\n'))
    assert journey.values == {"CODE": "AB-12"}
    assert "$ echo AB-12 R" in (tmp_path / "artefacts" / "02-a.txt").read_text()


def test_a_failing_block_fails_with_the_block_its_output_and_the_background_logs(
        tmp_path: Path) -> None:
    with pytest.raises(GuideFailed) as failed:
        _tiny_journey(tmp_path, (
            "<!-- run: as=a background=server expect=/listening/ -->\n```sh\n"
            "echo listening; sleep 60\n```\n"
            "<!-- run: as=b -->\n```sh\necho before; ls /no/such/file\necho after\n```\n"))
    message = str(failed.value)
    assert "line 6 (as b): exit status 2, the guide expects 0" in message
    assert "ls /no/such/file" in message and "before" in message
    assert "after\n" not in message.split("--- its output", 1)[1]
    assert "--- server (running)" in message and "listening" in message


def test_a_placeholder_used_before_it_is_shown_fails(tmp_path: Path) -> None:
    with pytest.raises(GuideFailed, match="placeholder CODE is used before a block shows it"):
        _tiny_journey(tmp_path, (
            "<!-- run: as=a -->\n```sh\necho CODE\n```\n"
            "<!-- run: as=a CODE=/(\\d+)/ -->\n```sh\necho 42\n```\n"))


def test_until_retries_and_then_fails_naming_what_never_showed(tmp_path: Path) -> None:
    journey = Journey(tmp_path / "work", actors={"a": {}}, base_env=_base_env(),
                      substitutions={}, artefacts=tmp_path / "artefacts", until_timeout=2)
    steps = parse_guide("<!-- run: as=a until=/ready/ -->\n```sh\necho n >> tries\n"
                        "[ $(wc -l < tries) -ge 3 ] && echo ready || echo not yet\n```\n"
                        "<!-- run: as=a until=/never/ -->\n```sh\necho nope\n```\n").steps
    journey.run(steps[0])
    assert (journey.home("a") / "tries").read_text() == "n\nn\nn\n"
    with pytest.raises(GuideFailed, match="its output never showed /never/"):
        journey.run(steps[1])


def _base_env() -> dict[str, str]:
    """The machine's environment without anything Lightbox or the relay reads, the project's
    programs first on PATH (where `make install` puts them), and the test-only speed-ups."""
    drop = {"DATABASE_URL", "HOST", "PORT", "WORKERS", "LOG_LEVEL"}
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LIGHTBOX_", "DEMO_", "PYTEST_")) and k not in drop}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(LIGHTBOX_INSECURE_FAST_KDF="1", LIGHTBOX_ARGON2_PROFILE="cheap",
               PYTHONUNBUFFERED="1")
    return env


def _film_jpeg(*, seed: int) -> bytes:
    """A photo of a film (made up: scripts/demo.py), as a phone saves it."""
    from PIL import Image

    out = io.BytesIO()
    Image.open(io.BytesIO(xray_film_png(seed=seed))).save(out, format="JPEG", quality=92)
    return out.getvalue()


# The whole journey: about 40 commands, each a Python program starting afresh (2-4 s apiece on
# a busy 2-core machine), and the waits for filing and expiry.
@pytest.mark.timeout(seconds(480))
def test_the_user_guide_runs_as_written() -> None:
    guide = parse_guide(GUIDE.read_text())
    (ROOT / ".data").mkdir(exist_ok=True)
    # Under the project, not a private home folder: the embedded Postgres needs it (NOTES.md).
    work = Path(tempfile.mkdtemp(prefix="test-guide-", dir=ROOT / ".data"))
    port = free_port()
    relay_data = work / "relay-host" / "data"
    actors = {name: dict(env) for name, env in ACTORS.items()}
    actors["relay-host"].update(LIGHTBOX_DATA_DIR=str(relay_data), HOST="127.0.0.1",
                                PORT=str(port))
    try:
        with running_orthanc(username=PACS_USER) as orthanc:
            journey = Journey(work, actors=actors, base_env=_base_env(), artefacts=ARTEFACTS,
                              substitutions={RELAY: f"http://127.0.0.1:{port}",
                                             PACS: orthanc.dicomweb_url})
            # What the people bring with them: the intern's photo, the PACS password.
            (journey.home("intern-phone") / "film.jpg").write_bytes(_film_jpeg(seed=7))
            (journey.home("intern-phone") / "hand.jpg").write_bytes(_film_jpeg(seed=11))
            # A film whose label names another patient (the guide's wrong-patient example).
            labelled_film().save(journey.home("intern-phone") / "labelled-film.png")
            secret = journey.home("gateway-host") / "pacs-password"
            secret.write_text(orthanc.password)
            secret.chmod(0o600)
            try:
                journey.run_all(guide.steps)
            finally:
                journey.close()
    finally:
        if (relay_data / "pg" / "postmaster.pid").exists():  # the relay did not stop it
            pg = EmbeddedPostgres(relay_data / "pg")
            pg.start()
            pg.stop(mode="immediate")
        shutil.rmtree(work, ignore_errors=True)
