"""Password policy shared by the relay and the clients (PROTOCOL.md §11: at least 12 characters, not
a common password).

Why here: the enrolling client checks the password before it sends it (a clear message at the
prompt), and the relay checks it again (it must not trust the client). Both use this one
function, so they cannot disagree. The common-password list is zxcvbn's bundled list of the
30 000 most frequent passwords from breach corpora; NIST SP 800-63B §5.1.1.2 asks verifiers to
refuse such passwords and not to impose composition rules, which is what this does: a length
floor, a block list (also after stripping trailing digits and punctuation, which is how people
"strengthen" a common word), and no password containing the login name.
"""

from __future__ import annotations

import string
from functools import lru_cache
from typing import Final

from protocol.errors import ErrorCode, PolicyDenied

__all__ = ["MIN_PASSWORD_LENGTH", "check_password", "is_common_password"]

MIN_PASSWORD_LENGTH: Final = 12
_TRAILING = string.digits + string.punctuation + " "


@lru_cache(maxsize=1)
def _common() -> frozenset[str]:
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    words: list[str] = FREQUENCY_LISTS["passwords"]
    return frozenset(w.lower() for w in words)


def is_common_password(password: str) -> bool:
    """True if ``password`` (case-insensitive, with or without trailing digits and
    punctuation) is in the bundled list of common passwords."""
    lowered = password.lower()
    common = _common()
    stripped = lowered.rstrip(_TRAILING)
    return lowered in common or (bool(stripped) and stripped in common)


def check_password(
    password: str,
    *,
    login: str | None = None,
    display_name: str | None = None,
    min_length: int = MIN_PASSWORD_LENGTH,
) -> None:
    """Raise :class:`PolicyDenied` (``password_too_weak``) with a plain reason, or return."""

    def deny(reason: str) -> PolicyDenied:
        return PolicyDenied(reason, code=ErrorCode.PASSWORD_TOO_WEAK)

    if len(password) < min_length:
        raise deny(f"the password must be at least {min_length} characters long")
    if not password.strip():
        raise deny("the password must not be only spaces")
    if is_common_password(password):
        raise deny("the password is too common; choose a longer phrase of unrelated words")
    lowered = password.lower()
    if login and len(login) >= 3 and login.lower() in lowered:
        raise deny("the password must not contain the login name")
    for part in (display_name or "").lower().replace("-", " ").split():
        if len(part) >= 4 and part in lowered and len(lowered) - len(part) < min_length:
            raise deny("the password is mostly the user's name")
