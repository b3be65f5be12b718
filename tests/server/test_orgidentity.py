"""Per-organisation identity settings (server/orgidentity.py): directory groups and ID token
claims map to roles without regard to case, each role once and sorted; a claim is read as a
string or a list of strings and nothing else; the file is checked whole, and a malformed one
is refused naming the file (docs/OPERATIONS.md "Hospital directory (SCIM)", "Single sign-on
(OpenID Connect)")."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from server.app import create_app
from server.orgidentity import IdentitySettings, OidcSettings, OrgIdentity
from tests.helpers import make_settings

OIDC = {"issuer": "https://login.example.org/tenant/v2.0", "client_id": "lightbox"}


def written(tmp_path: Path, orgs: dict[str, Any]) -> Path:
    path = tmp_path / "identity.json"
    path.write_text(json.dumps({"orgs": orgs}))
    return path


def oidc(**fields: Any) -> OidcSettings:
    return msgspec.convert({**OIDC, **fields}, OidcSettings)


def test_groups_map_to_roles_without_regard_to_case_each_once_sorted() -> None:
    org = OrgIdentity(group_roles={"Orthopaedics On Call": "orthopaedics_oncall",
                                   "Dermatology": "dermatology", "Derm (old)": "dermatology"})
    assert org.roles_for(["orthopaedics on call", "DERMATOLOGY", "Derm (old)", "Cardiology"]) == [
        "dermatology", "orthopaedics_oncall"]
    assert org.roles_for([]) == []


def test_an_organisation_not_in_the_file_maps_no_groups(tmp_path: Path) -> None:
    settings = IdentitySettings.from_file(written(tmp_path, {
        "st-elsewhere": {"group_roles": {"Ortho": "orthopaedics"}}}))
    assert settings.for_org("st-elsewhere").roles_for(["ortho"]) == ["orthopaedics"]
    assert settings.for_org("county-general").roles_for(["ortho"]) == []
    assert settings.for_org("county-general").oidc is None


def test_no_file_configures_no_organisation() -> None:
    assert IdentitySettings.from_file(None).by_org == {}


@pytest.mark.parametrize(("claim", "roles"), [
    ("Ortho", ["orthopaedics"]), (["ortho", "DERM", "other"], ["dermatology", "orthopaedics"]),
    ([], []), (None, []), (42, []), ({"Ortho": True}, []), (["Ortho", 7, None], ["orthopaedics"])])
def test_the_role_claim_is_a_string_or_a_list_of_strings(claim: object,
                                                          roles: list[str]) -> None:
    settings = oidc(role_claim="groups", claim_roles={"ortho": "orthopaedics",
                                                      "derm": "dermatology"})
    claims = {} if claim is None else {"groups": claim}
    assert settings.roles_for(claims) == roles


def test_without_a_role_claim_the_idp_speaks_for_no_role() -> None:
    assert oidc().roles_for({"groups": ["ortho"]}) is None


def test_claim_roles_without_a_role_claim_are_refused() -> None:
    with pytest.raises(ValueError, match="claim_roles needs role_claim"):
        oidc(claim_roles={"ortho": "orthopaedics"})


def test_oidc_defaults_are_the_usual_claim_scopes_and_algorithms() -> None:
    s = oidc()
    assert (s.login_claim, s.scopes, s.required_claims) == (
        "preferred_username", ["openid", "profile"], {})
    assert s.algorithms == ["RS256", "PS256", "ES256", "EdDSA"]


@pytest.mark.parametrize("issuer", [
    "https://login.example.org", "http://127.0.0.1:8443/realm", "http://localhost",
    "http://[::1]:9000/x"])
def test_an_issuer_is_https_or_loopback_http(issuer: str) -> None:
    assert oidc(issuer=issuer).issuer == issuer


@pytest.mark.parametrize("issuer", [
    "http://login.example.org", "http://127.0.0.2/x", "https://", "ftp://x", "https://a b"])
def test_an_issuer_that_is_not_https_or_loopback_is_refused(issuer: str) -> None:
    with pytest.raises(msgspec.ValidationError):
        oidc(issuer=issuer)


@pytest.mark.parametrize("orgs", [
    {"st-elsewhere": {"group_roles": {"Ortho": "Not A Role"}}},
    {"st-elsewhere": {"unknown_field": 1}},
    {"Bad Org": {}},
    {"st-elsewhere": {"oidc": {**OIDC, "algorithms": ["HS256"]}}},
    {"st-elsewhere": {"oidc": {**OIDC, "algorithms": ["none"]}}},
    {"st-elsewhere": {"oidc": {"issuer": OIDC["issuer"]}}},
    {"st-elsewhere": {"oidc": {**OIDC, "claim_roles": {"x": "orthopaedics"}}}},
])
def test_a_malformed_file_is_refused_naming_the_file(tmp_path: Path,
                                                     orgs: dict[str, Any]) -> None:
    path = written(tmp_path, orgs)
    with pytest.raises(ValueError, match=f"^{path}: not a valid identity settings file: "):
        IdentitySettings.from_file(path)


def test_a_file_that_is_not_json_or_not_there_is_refused_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "identity.json"
    bad.write_text("{not json")
    for path in (bad, tmp_path / "missing.json"):
        with pytest.raises(ValueError, match=f"^{path}: not a valid identity settings file"):
            IdentitySettings.from_file(path)


def test_two_organisations_naming_the_same_issuer_are_refused(tmp_path: Path) -> None:
    path = written(tmp_path, {"st-elsewhere": {"oidc": OIDC},
                              "county-general": {"oidc": {**OIDC, "client_id": "other"}}})
    with pytest.raises(ValueError, match="two organisations name the same OpenID issuer"):
        IdentitySettings.from_file(path)


def test_a_role_mapped_by_both_the_directory_and_the_idp_is_refused_and_the_relay_does_not_start(
        tmp_path: Path) -> None:
    """Each source withdraws its roles at once and the certificate names them until IT signs:
    a role both mapped could come back from one source as soon as the other withdrew it
    (server/renewals.py), so the file is refused (docs/SECURITY.md "Single sign-on")."""
    path = written(tmp_path, {
        "county-general": {"group_roles": {"Ortho": "orthopaedics"}},
        "st-elsewhere": {
            "group_roles": {"Ortho": "orthopaedics", "Derm": "dermatology"},
            "oidc": {**OIDC, "role_claim": "groups",
                     "claim_roles": {"ortho": "orthopaedics", "radiology": "radiologist"}}}})
    sentence = (f"{path}: organisation st-elsewhere maps the role orthopaedics both from a "
                "directory group (group_roles) and from the IdP's claim (oidc.claim_roles): "
                "map each role in one place only")
    with pytest.raises(ValueError, match=f"^{re.escape(sentence)}$"):
        IdentitySettings.from_file(path)
    with pytest.raises(ValueError, match=f"^{re.escape(sentence)}$"):
        create_app(make_settings(identity_file=path), dsn="postgresql://unused@/unused")
    # Two roles are named together; the same role mapped in two organisations is no conflict.
    with pytest.raises(ValueError, match="maps the roles dermatology, orthopaedics both"):
        IdentitySettings({"st-elsewhere": OrgIdentity(
            group_roles={"Ortho": "orthopaedics", "Derm": "dermatology"},
            oidc=oidc(role_claim="groups", claim_roles={"o": "orthopaedics",
                                                        "d": "dermatology"}))})
    assert IdentitySettings({"st-elsewhere": OrgIdentity(group_roles={"Ortho": "orthopaedics"}),
                             "county-general": OrgIdentity(oidc=oidc(
                                 role_claim="groups", claim_roles={"o": "orthopaedics"}))})
