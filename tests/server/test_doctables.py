"""Tables in the docs generated from the code (server/doctables.py): a block between its
markers is replaced whole and nothing outside it changes; each table lists what it says it
lists. That the repository's own docs are current is tests/test_docs.py's job."""

from __future__ import annotations

import pytest

from server.doctables import BLOCKS, limits_table, render_blocks, settings_table
from server.problems import error_table_markdown
from server.settings import describe


def block(name: str, body: str) -> str:
    return f"<!-- BEGIN {name} -->\n{body}<!-- END {name} -->"


def test_a_stale_block_is_replaced_and_the_text_around_it_kept() -> None:
    text = "# Title\n\nBefore.\n\n" + block("limits", "| old | table |\n") + "\n\nAfter.\n"
    assert render_blocks(text) == (
        "# Title\n\nBefore.\n\n" + block("limits", limits_table()) + "\n\nAfter.\n")


def test_each_of_several_blocks_gets_its_own_table() -> None:
    text = block("settings", "x\n") + "\nbetween\n" + block("error-codes", "y\n")
    assert render_blocks(text) == (block("settings", settings_table()) + "\nbetween\n"
                                   + block("error-codes", error_table_markdown()))


def test_rendering_is_idempotent() -> None:
    once = render_blocks("a\n" + block("limits", "") + "\nb\n")
    assert render_blocks(once) == once


def test_text_without_blocks_and_mismatched_markers_are_left_alone() -> None:
    plain = "no generated tables here\n<!-- BEGIN limits -->\nunclosed\n"
    assert render_blocks(plain) == plain
    mismatched = "<!-- BEGIN limits -->\nx\n<!-- END settings -->"
    assert render_blocks(mismatched) == mismatched


def test_a_block_of_an_unknown_table_is_an_error() -> None:
    with pytest.raises(KeyError):
        render_blocks(block("no-such-table", "x\n"))


def test_the_settings_table_has_every_setting_and_the_limits_table_the_limits_alone() -> None:
    everything, limits = settings_table(), limits_table()
    for s in describe():
        row = f"| `{s.env}` | `{s.default}` | {s.help} |"
        assert row in everything
        assert (row in limits) == s.limit
    assert any(s.limit for s in describe()) and not all(s.limit for s in describe())


def test_the_blocks_are_the_documented_three() -> None:
    assert set(BLOCKS) == {"error-codes", "limits", "settings"}
