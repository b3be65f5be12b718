"""clients/sdk/environ.py: a number setting is its default when unset, its value when it parses
and is within bounds, and None otherwise (the caller refuses to start)."""

from __future__ import annotations

import pytest

from clients.sdk.environ import number_setting

NAME = "LIGHTBOX_TEST_NUMBER_SETTING"


@pytest.mark.parametrize(("raw", "expected"), [
    (None, 300.0), ("42", 42.0), ("42.5", 42.5), ("0", None), ("86401", None),
    ("forever", None), ("", None), ("nan", None)])
def test_a_number_setting_is_its_default_its_value_or_none(
        monkeypatch: pytest.MonkeyPatch, raw: str | None, expected: float | None) -> None:
    if raw is None:
        monkeypatch.delenv(NAME, raising=False)
    else:
        monkeypatch.setenv(NAME, raw)
    assert number_setting(NAME, 300.0, float, lambda v: 0 < v <= 86400) == expected


def test_a_whole_number_setting_refuses_a_fraction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NAME, "3600.5")
    assert number_setting(NAME, 7, int, lambda v: v >= 3600) is None
    monkeypatch.setenv(NAME, "3600")
    assert number_setting(NAME, 7, int, lambda v: v >= 3600) == 3600
