"""The docs stay true: generated tables in the docs match the code they describe."""

from __future__ import annotations

from server.doctables import render_blocks
from server.settings import describe
from tests.helpers import ROOT


def _assert_current(name: str, *markers: str) -> None:
    text = (ROOT / name).read_text()
    for marker in markers:
        assert f"<!-- BEGIN {marker} -->" in text, f"{name} lacks the {marker} table"
    assert render_blocks(text) == text, f"{name} has stale generated tables: run `make docs`"


def test_security_doc_error_and_limit_tables_are_current() -> None:
    _assert_current("docs/SECURITY.md", "error-codes", "limits")


def test_readme_settings_table_is_current() -> None:
    _assert_current("README.md", "settings")


def test_operations_doc_mentions_every_setting() -> None:
    text = (ROOT / "docs" / "OPERATIONS.md").read_text()
    for s in describe():
        assert s.env in text, f"{s.env} missing from docs/OPERATIONS.md"


def test_changelog_follows_keep_a_changelog() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in text
    assert "keepachangelog.com" in text


def test_clinical_safety_doc_cites_only_tests_that_exist() -> None:
    import re

    text = (ROOT / "docs" / "CLINICAL_SAFETY.md").read_text()
    cited = re.findall(r"`([a-z_/]+\.py)::(test_[a-z0-9_]+)(?:\[param\])?`", text)
    assert len(cited) > 40
    for path, name in cited:
        source = (ROOT / "tests" / path).read_text()
        assert re.search(rf"^(async )?def {name}\(", source, re.MULTILINE), f"{path}::{name}"
