"""Which Argon2id cost the clients use for passphrase sealing (PROTOCOL §4.7).

``LIGHTBOX_INSECURE_FAST_KDF=1`` switches every client-side passphrase seal (key store,
organisation keyfile, enrolment packages) to the library minimum (CHEAP_PROFILE). It exists for
the test suite only: a keyfile or enrolment code sealed that way resists guessing far less.
Opening is unaffected (the parameters are read from the sealed header).
"""

from __future__ import annotations

import os
import sys

from protocol.keys import CHEAP_PROFILE, PassphraseProfile

__all__ = ["INSECURE_FAST_KDF_ENV", "passphrase_profile"]

INSECURE_FAST_KDF_ENV = "LIGHTBOX_INSECURE_FAST_KDF"
_warned = False


def passphrase_profile(default: PassphraseProfile) -> PassphraseProfile:
    """``default``, or CHEAP_PROFILE when the test-only environment variable is set."""
    global _warned
    if os.environ.get(INSECURE_FAST_KDF_ENV) == "1":
        if not _warned:
            print(f"warning: {INSECURE_FAST_KDF_ENV}=1: weak passphrase sealing (tests only)",
                  file=sys.stderr)
            _warned = True
        return CHEAP_PROFILE
    return default
