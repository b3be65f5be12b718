"""clients/sdk/wording.py: a count and its noun agree for 0, 1 and 2; irregular plurals and
verbs are given by the caller."""

from __future__ import annotations

import pytest

from clients.sdk.wording import counted, for_count


@pytest.mark.parametrize(("count", "text"), [
    (0, "0 open break-glass cases"), (1, "1 open break-glass case"),
    (2, "2 open break-glass cases")])
def test_a_regular_noun_agrees_with_its_count(count: int, text: str) -> None:
    assert counted(count, "open break-glass case") == text


@pytest.mark.parametrize(("count", "text"), [
    (0, "0 people"), (1, "1 person"), (2, "2 people")])
def test_an_irregular_plural_is_the_one_given(count: int, text: str) -> None:
    assert counted(count, "person", "people") == text


@pytest.mark.parametrize(("count", "verb"), [(0, "await"), (1, "awaits"), (2, "await")])
def test_a_verb_agrees_with_its_count(count: int, verb: str) -> None:
    assert for_count(count, "awaits", "await") == verb
