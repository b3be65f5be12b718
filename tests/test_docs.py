"""The docs stay true: generated tables in the docs match the code they describe."""

from __future__ import annotations

from pathlib import Path

import pytest

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


@pytest.mark.parametrize(("doc", "least"), [("CLINICAL_SAFETY.md", 40), ("SECURITY.md", 50)])
def test_docs_cite_only_tests_that_exist(doc: str, least: int) -> None:
    """The clinical safety case and the security review (its ASVS and HIPAA tables) name
    tests as evidence: each must exist."""
    import re

    text = (ROOT / "docs" / doc).read_text()
    cited = re.findall(r"`([a-z_/]+\.py)::(test_[a-z0-9_]+)(?:\[param\])?`", text)
    assert len(cited) > least
    for path, name in cited:
        source = (ROOT / "tests" / path).read_text()
        assert re.search(rf"^(async )?def {name}\(", source, re.MULTILINE), f"{path}::{name}"


def test_readme_and_guide_say_where_the_commands_are_and_they_are_there() -> None:
    """A newcomer reads the commands bare; both documents say they live in .venv/bin and how
    to put them on PATH, and `make install` (this environment) put every one of them there."""
    import sys
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"lightbox", "lightbox-admin", "lightbox-gateway", "lightbox-phone",
                            "lightbox-server"}
    for doc in ("README.md", "docs/USER_GUIDE.md"):
        text = (ROOT / doc).read_text()
        head = text[:text.index("## Hospital IT")] if doc.endswith("GUIDE.md") else text
        assert "source .venv/bin/activate" in head, doc
        assert 'export PATH="$PWD/.venv/bin:$PATH"' in head, doc
    bin_dir = ROOT / ".venv" / "bin"
    if Path(sys.executable).parent != bin_dir:  # a suite run from another environment
        bin_dir = Path(sys.executable).parent
    for name in scripts:
        assert (bin_dir / name).is_file(), f"{name} is not in {bin_dir}"
