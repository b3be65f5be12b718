"""scripts/check_hazard_log.py: the hazard log's checker fails on every way a control can lose
its proof, and passes the real log (docs/HAZARD_LOG.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scripts.check_hazard_log import check, main, parse_hazard_log

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check_hazard_log.py"

EXISTING = "tests/scripts/test_check_hazard_log.py::test_the_real_hazard_log_is_sound"

SOUND = f"""# Hazard log

## How to read this log

- **Causes**: an example outside any hazard is not a hazard.

## Hazards

### HAZ-01 Something bad
- **Causes**: a cause.
- **Effect**: an effect
  that runs over two lines.
- **Initial risk**: severity 4 x likelihood 3 = 12
- **Controls**:
  - C1 A control that is proven:
    `{EXISTING}`
  - C2 Another, with a parametrised test:
    `{EXISTING}[param]`
- **Residual risk**: severity 4 x likelihood 1 = 4. Why.
"""


def _write(tmp_path: Path, text: str) -> Path:
    log = tmp_path / "HAZARD_LOG.md"
    log.write_text(text)
    return log


def test_a_sound_log_parses_into_hazards_controls_and_tests() -> None:
    [hazard] = parse_hazard_log(SOUND)
    assert hazard.ident == "HAZ-01" and hazard.title == "Something bad"
    assert hazard.fields["Effect"] == "an effect that runs over two lines."
    assert [c.ident for c in hazard.controls] == ["C1", "C2"]
    assert hazard.tests == [EXISTING, EXISTING]
    assert check([hazard], ROOT) == []


def test_a_control_that_names_no_test_fails() -> None:
    text = SOUND.replace(f"    `{EXISTING}[param]`\n", "    (trust us)\n")
    assert check(parse_hazard_log(text), ROOT) == ["HAZ-01 C2: names no test"]


def test_a_hazard_without_controls_fails() -> None:
    head, _, _ = SOUND.partition("- **Controls**:")
    text = head + "- **Controls**:\n- **Residual risk**: severity 4 x likelihood 1 = 4.\n"
    assert check(parse_hazard_log(text), ROOT) == [
        "HAZ-01: no control (a '  - C1 ...' item under Controls)"]


def test_a_test_that_is_gone_fails_naming_it() -> None:
    gone = "tests/scripts/test_check_hazard_log.py::test_that_was_deleted"
    text = SOUND.replace(f"`{EXISTING}[param]`", f"`{gone}`")
    assert check(parse_hazard_log(text), ROOT) == [f"HAZ-01: {gone}: no such test"]


def test_a_test_file_that_is_gone_fails_naming_it() -> None:
    gone = "tests/scripts/test_nothing_here.py::test_anything"
    text = SOUND.replace(f"`{EXISTING}[param]`", f"`{gone}`")
    assert check(parse_hazard_log(text), ROOT) == [f"HAZ-01: {gone}: no such test file"]


def test_missing_fields_bad_ratings_and_repeated_ids_fail() -> None:
    text = (SOUND.replace("- **Effect**: an effect\n  that runs over two lines.\n", "")
            .replace("= 12", "= 13").replace("severity 4 x likelihood 1", "severity 6 x "
                                             "likelihood 1"))
    text += text[text.index("### HAZ-01"):]
    problems = check(parse_hazard_log(text), ROOT)
    assert problems[:3] == [
        "HAZ-01: no 'Effect' field",
        "HAZ-01: Initial risk 'severity 4 x likelihood 3 = 13' is not on the 5 x 5 matrix",
        "HAZ-01: Residual risk 'severity 6 x likelihood 1 = 4' is not on the 5 x 5 matrix",
    ]
    assert "HAZ-01: the id is used twice" in problems


def test_a_log_without_hazards_fails() -> None:
    assert check(parse_hazard_log("# Hazard log\n\nNothing yet.\n"), ROOT) == [
        "the hazard log lists no hazard (no '### HAZ-nn title' heading)"]


def test_the_script_exits_1_naming_a_missing_test_and_0_on_a_sound_log(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(_write(tmp_path, SOUND)), "--root", str(ROOT)]) == 0
    assert "1 hazards, 1 tests named, all present" in capsys.readouterr().out
    broken = _write(tmp_path, SOUND.replace("test_the_real_hazard_log_is_sound",
                                            "test_renamed_away"))
    run = subprocess.run([sys.executable, str(SCRIPT), str(broken), "--root", str(ROOT)],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 1
    assert run.stderr.count("no such test\n") == 2
    assert "test_renamed_away" in run.stderr and "Traceback" not in run.stderr


def test_an_unreadable_log_is_one_line_and_exit_2(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "absent.md")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("check_hazard_log: cannot read ") and err.count("\n") == 1


def test_the_real_hazard_log_is_sound() -> None:
    hazards = parse_hazard_log((ROOT / "docs" / "HAZARD_LOG.md").read_text())
    assert check(hazards, ROOT) == []
    titles = " ".join(h.title.lower() for h in hazards)
    for hazard in ("wrong patient", "on-call", "non-diagnostic", "consent captured for one",
                   "lost or stolen phone", "free text", "relay compromised", "clocks"):
        assert hazard in titles, hazard
