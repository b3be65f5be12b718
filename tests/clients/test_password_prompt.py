"""The CLI's password prompt names the profile only where the clinician chose one: "default"
means nothing to them (docs/USER_GUIDE.md)."""

from __future__ import annotations

from clients.clinician.device import password_prompt


def test_the_default_profile_is_not_named_and_a_chosen_one_is() -> None:
    assert password_prompt("default") == "Your Lightbox password"
    assert password_prompt("ortho") == "Your Lightbox password (profile ortho)"
