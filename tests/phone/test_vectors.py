"""The phone app's protocol core (TypeScript, run under Node) against every section of
protocol/vectors/v1.json (docs/PROTOCOL.md §10): a second, independent implementation that
reproduces the published bytes. A section the TypeScript runner does not know fails the test,
so a section added to the vectors cannot go unchecked."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from protocol.vectors import VECTORS_PATH
from tests.phone.node import build, node

META = {"version", "time", "rng"}
SECTIONS = sorted(set(json.loads(VECTORS_PATH.read_text(encoding="utf-8"))) - META)


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    done = subprocess.run([node(), str(build() / "vectors.mjs"), str(VECTORS_PATH)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_the_runner_reads_the_vector_file_header(report: dict[str, Any]) -> None:
    assert report["meta"] == {"version": 1, "time": True, "rng": True}


def test_the_runner_reports_every_section_of_the_file(report: dict[str, Any]) -> None:
    assert sorted(report["sections"]) == SECTIONS


@pytest.mark.parametrize("section", SECTIONS)
def test_the_typescript_core_reproduces_section(report: dict[str, Any], section: str) -> None:
    result = report["sections"][section]
    assert result != "unknown", f"the TypeScript runner has no checks for section {section!r}"
    assert result["checks"] > 0
    assert result["failures"] == []
