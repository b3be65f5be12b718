"""The shared password policy (protocol/passwords.py)."""

from __future__ import annotations

import pytest

from protocol.errors import ErrorCode, PolicyDenied
from protocol.passwords import check_password, is_common_password


@pytest.mark.parametrize("password", [
    "correct horse battery staple", "Tr0ub4dor&3-plus-more", "zebra lantern 42 ochre",
])
def test_long_uncommon_passwords_pass(password: str) -> None:
    check_password(password, login="amy.ortho", display_name="Dr Amy Ortho")


@pytest.mark.parametrize(("password", "why"), [
    ("short1!", "at least 12"),
    ("elevenchars", "at least 12"),
    ("            ", "spaces"),
    ("password1234", "common"),
    ("PASSWORD1234!!", "common"),
    ("qwertyuiop123", "common"),
    ("iloveyou123456", "common"),
    ("my-amy.ortho-password", "login"),
])
def test_weak_passwords_are_refused_with_a_reason(password: str, why: str) -> None:
    with pytest.raises(PolicyDenied, match=why) as info:
        check_password(password, login="amy.ortho")
    assert info.value.code is ErrorCode.PASSWORD_TOO_WEAK


def test_the_minimum_length_can_be_raised() -> None:
    check_password("zebra lantern 42", min_length=16)
    with pytest.raises(PolicyDenied, match="at least 17"):
        check_password("zebra lantern 42", min_length=17)


def test_common_list_is_case_insensitive_and_ignores_trailing_digits() -> None:
    assert is_common_password("Sunshine")
    assert is_common_password("sunshine2024!")
    assert not is_common_password("sunshine lantern ochre")


def test_a_password_that_is_mostly_the_users_name_is_refused() -> None:
    with pytest.raises(PolicyDenied, match="name"):
        check_password("Fitzgerald1234", display_name="Dr Jane Fitzgerald")
