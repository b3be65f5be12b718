"""IT's commands start without the relay's heavy modules (docs/ARCHITECTURE.md, "Start-up"):
``lightbox-server admin|org|audit|scim|db ...`` parses its arguments and runs without importing
uvicorn, the relay's application, SCIM's models or alembic, which only starting the relay (and
``db upgrade``/``restore``, for alembic) needs. Each check runs in a fresh interpreter, as the
command does, and names every module that should not have been imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# What a relay-host command must not import at start-up: each of these is a tenth of a second
# of CPU or more (alembic with SQLAlchemy about 0.4 s, SCIM's pydantic models about 0.7 s).
RELAY_ONLY = ("uvicorn", "starlette", "server.app", "server.runner", "scim2_models", "pydantic",
              "alembic", "sqlalchemy", "prometheus_client")


def imported_after(code: str) -> list[str]:
    """Which of RELAY_ONLY a fresh interpreter has imported after running ``code``."""
    probe = (f"import sys, json\n{code}\n"
             f"print(json.dumps(sorted(m for m in {RELAY_ONLY!r} if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def test_lightbox_server_imports_none_of_the_relay_to_parse_its_arguments() -> None:
    assert imported_after("from server.__main__ import build_parser\n"
                          "build_parser().parse_args(['audit', 'head'])") == []


@pytest.mark.parametrize("command", [["--help"], ["audit", "--help"], ["admin", "list", "--help"],
                                     ["db", "backup", "--help"]])
def test_help_of_lightbox_server_imports_none_of_the_relay(command: list[str]) -> None:
    code = ("from server.__main__ import main\n"
            f"try:\n    main({command!r})\nexcept SystemExit as exc:\n    assert exc.code == 0\n")
    assert imported_after(code) == []


def test_the_migrations_module_imports_alembic_only_when_asked() -> None:
    assert imported_after("import server.migrations") == []
    # And it is alembic's answer when asked: the release's head, read through alembic.
    assert imported_after("from server import migrations\nmigrations.head_revision()") == [
        "alembic", "sqlalchemy"]


def test_starting_the_relay_is_what_imports_it() -> None:
    # The other side of the same line: the relay's start imports the relay (were this empty,
    # the checks above would pass on a probe that sees nothing).
    found = imported_after("import server.runner")
    assert {"uvicorn", "server.runner"} <= set(found), found
    found = imported_after("import server.app")
    assert {"server.app", "scim2_models", "pydantic", "starlette"} <= set(found), found


def test_the_start_up_bench_measures_each_command_beside_the_floor(tmp_path: Path) -> None:
    """``make bench``'s start-up figures (bench/startup.py): each command's median CPU beside
    the interpreter's own start, measured in the same run, and written out."""
    out = tmp_path / "startup.json"
    done = subprocess.run([sys.executable, "-m", "bench.startup", "--runs", "1", "--only",
                           "lightbox-server --help", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["command"] for r in rows] == ["the interpreter alone (floor)",
                                            "lightbox-server --help (relay host)"]
    assert all(r["cpu_ms"] > 0 and r["wall_ms"] > 0 for r in rows), rows
    assert "lightbox-server --help (relay host)" in done.stdout
