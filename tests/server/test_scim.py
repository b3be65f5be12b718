"""``/scim/v2`` beyond conformance: what the directory's changes do to relay users (suspension
closes open sockets at once, deletion revokes devices, nothing the signed revocation list holds
is undone), IT's signing queue, and bad input, each answered with its RFC 7644 §3.12 error
body and changing nothing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from protocol.errors import CloseCode
from tests.helpers import eventually, seconds
from tests.relay_world import connect, peer
from tests.scim_world import (
    ERROR_SCHEMA,
    SCIM_JSON,
    ScimWorld,
    issue_scim_token,
    renew,
    renewed_certificate,
    scim_world,
    signing_queue,
)
from tests.server.test_http_edge import assert_problem


@pytest.fixture
async def sw(db_dsn: str, tmp_path: Path) -> AsyncIterator[ScimWorld]:
    async with scim_world(db_dsn, tmp_path, orgs=("st-elsewhere", "county-general")) as w:
        yield w


def assert_scim_error(r: httpx.Response, status: int, scim_type: str | None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(SCIM_JSON)
    body: dict[str, Any] = r.json()
    assert body["schemas"] == [ERROR_SCHEMA]
    assert body["status"] == str(status)
    assert body.get("scimType") == scim_type
    return body


async def user_names(sw: ScimWorld) -> list[str]:
    r = await sw.scim.get("/Users")
    assert r.status_code == 200, r.text
    return sorted(u["userName"] for u in r.json().get("Resources", []))


# --- users, filters, ETags ------------------------------------------------------------------


async def test_filter_finds_a_user_by_user_name_ignoring_case_and_by_external_id(
        sw: ScimWorld) -> None:
    jane = await sw.create_user("jane.doe", externalId="E-100")
    await sw.create_user("john.roe", externalId="E-200")
    r = await sw.scim.get("/Users", params={"filter": 'userName eq "JANE.DOE"'})
    assert r.status_code == 200, r.text
    assert [u["id"] for u in r.json()["Resources"]] == [jane["id"]]
    assert r.json()["totalResults"] == 1
    r = await sw.scim.get("/Users", params={"filter": 'externalId eq "E-100"'})
    assert [u["id"] for u in r.json()["Resources"]] == [jane["id"]]
    r = await sw.scim.get("/Users", params={"filter": 'externalId eq "e-100"'})
    assert r.json()["totalResults"] == 0  # externalId is case-exact (RFC 7643 §3.1)


async def test_patch_with_the_current_etag_applies_and_moves_the_etag(sw: ScimWorld) -> None:
    jane = await sw.create_user("jane.doe")
    etag = jane["meta"]["version"]
    r = await sw.patch(f"/Users/{jane['id']}", [{"op": "replace", "path": "displayName",
                                                  "value": "Dr J Doe"}], **{"if-match": etag})
    assert r.status_code == 200, r.text
    assert r.json()["displayName"] == "Dr J Doe"
    assert r.headers["etag"] != etag
    r = await sw.scim.get(f"/Users/{jane['id']}", headers={"if-none-match": r.headers["etag"]})
    assert r.status_code == 304


async def test_stale_etag_is_412_and_changes_nothing(sw: ScimWorld) -> None:
    jane = await sw.create_user("jane.doe")
    stale = jane["meta"]["version"]
    r = await sw.patch(f"/Users/{jane['id']}", [{"op": "replace", "path": "title",
                                                  "value": "Consultant"}])
    assert r.status_code == 200, r.text
    current = r.json()
    r = await sw.patch(f"/Users/{jane['id']}", [{"op": "replace", "path": "displayName",
                                                  "value": "Someone Else"}],
                       **{"if-match": stale})
    assert_scim_error(r, 412, None)
    r = await sw.scim.put(f"/Users/{jane['id']}", json=sw.user_body("jane.doe", title="X"),
                          headers={"if-match": stale, "content-type": SCIM_JSON})
    assert_scim_error(r, 412, None)
    r = await sw.scim.delete(f"/Users/{jane['id']}", headers={"if-match": stale})
    assert_scim_error(r, 412, None)
    after = (await sw.scim.get(f"/Users/{jane['id']}")).json()
    assert after == current


@pytest.mark.parametrize("text", ['userName eq', 'userName zz "x"', '(userName eq "x"',
                                  'userName eq "x" and', '"x" eq userName'])
async def test_malformed_filter_is_invalid_filter(sw: ScimWorld, text: str) -> None:
    await sw.create_user("jane.doe")
    assert_scim_error(await sw.scim.get("/Users", params={"filter": text}), 400, "invalidFilter")
    r = await sw.scim.post("/Users/.search", json={
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"], "filter": text},
        headers={"content-type": SCIM_JSON})
    assert_scim_error(r, 400, "invalidFilter")


async def test_filter_on_an_attribute_the_schema_lacks_is_invalid_filter(sw: ScimWorld) -> None:
    r = await sw.scim.get("/Users", params={"filter": 'favouriteColour eq "blue"'})
    assert_scim_error(r, 400, "invalidFilter")
    r = await sw.scim.get("/Groups", params={"filter": 'userName eq "jane"'})
    assert_scim_error(r, 400, "invalidFilter")


async def test_unknown_attribute_is_refused_and_creates_nothing(sw: ScimWorld) -> None:
    r = await sw.scim.post("/Users", json=sw.user_body("jane.doe", favouriteColour="blue"),
                           headers={"content-type": SCIM_JSON})
    assert_scim_error(r, 400, "invalidSyntax")
    assert await user_names(sw) == []


async def test_patch_of_an_unknown_attribute_is_invalid_path_and_changes_nothing(
        sw: ScimWorld) -> None:
    jane = await sw.create_user("jane.doe")
    r = await sw.patch(f"/Users/{jane['id']}", [{"op": "replace", "path": "favouriteColour",
                                                  "value": "blue"}])
    assert_scim_error(r, 400, "invalidPath")
    assert (await sw.scim.get(f"/Users/{jane['id']}")).json() == jane


async def test_user_name_that_is_no_lightbox_login_is_invalid_value(sw: ScimWorld) -> None:
    for name in ["jane doe", "x", "jane@hospital.example", "-jane"]:
        r = await sw.scim.post("/Users", json=sw.user_body(name),
                               headers={"content-type": SCIM_JSON})
        body = assert_scim_error(r, 400, "invalidValue")
        assert "Lightbox login" in body["detail"]
    assert await user_names(sw) == []


async def test_a_second_user_with_the_same_user_name_is_uniqueness(sw: ScimWorld) -> None:
    await sw.create_user("jane.doe")
    r = await sw.scim.post("/Users", json=sw.user_body("Jane.Doe"),
                           headers={"content-type": SCIM_JSON})
    assert_scim_error(r, 409, "uniqueness")
    assert await user_names(sw) == ["jane.doe"]


async def test_body_that_is_not_json_is_invalid_syntax(sw: ScimWorld) -> None:
    r = await sw.scim.post("/Users", content=b"{not json",
                           headers={"content-type": SCIM_JSON})
    assert_scim_error(r, 400, "invalidSyntax")
    assert await user_names(sw) == []


@pytest.mark.parametrize("authorization", [None, "Bearer", "Bearer lbscim_wrong",
                                           "Basic aXQ6aXQ="])
async def test_missing_or_wrong_bearer_is_401_and_changes_nothing(
        sw: ScimWorld, authorization: str | None) -> None:
    headers = {"content-type": SCIM_JSON}
    async with httpx.AsyncClient(base_url=str(sw.scim.base_url)) as anon:
        if authorization is not None:
            headers["authorization"] = authorization
        r = await anon.post("/Users", json=sw.user_body("jane.doe"), headers=headers)
        assert_scim_error(r, 401, None)
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert_scim_error(await anon.get("/ServiceProviderConfig", headers=headers), 401, None)
    assert await user_names(sw) == []


async def test_a_trailing_slash_reaches_the_same_endpoint(sw: ScimWorld) -> None:
    r = await sw.scim.post("/Users/", json=sw.user_body("jane.doe"),
                           headers={"content-type": SCIM_JSON})
    assert r.status_code == 201, r.text
    jane = r.json()
    assert await user_names(sw) == ["jane.doe"]
    r = await sw.scim.get("/Users/")
    assert r.status_code == 200, r.text
    assert [u["id"] for u in r.json()["Resources"]] == [jane["id"]]
    r = await sw.scim.get(f"/Users/{jane['id']}/")
    assert r.status_code == 200, r.text
    assert r.json()["meta"]["location"].endswith(f"/scim/v2/Users/{jane['id']}")
    assert (await sw.scim.get("/Groups/")).json()["totalResults"] == 0
    assert (await sw.scim.get("/ServiceProviderConfig/")).json()["bulk"]["supported"] is False
    r = await sw.scim.delete("/Users/")  # the collection, as without the slash
    assert_scim_error(r, 405, None)
    assert r.headers["allow"] == "GET, POST"
    assert_scim_error(await sw.scim.get("/Users//"), 404, None)


@pytest.mark.parametrize(("method", "path", "detail"), [
    ("GET", "/Me", "/Me is not supported: the bearer token names a directory, not a user "
                   "(RFC 7644 §3.11)"),
    ("POST", "/Me/", "/Me is not supported: the bearer token names a directory, not a user "
                     "(RFC 7644 §3.11)"),
    ("POST", "/Bulk", "bulk operations are not supported (ServiceProviderConfig "
                      "bulk.supported is false, RFC 7644 §3.7)"),
    ("POST", "/Bulk/", "bulk operations are not supported (ServiceProviderConfig "
                       "bulk.supported is false, RFC 7644 §3.7)"),
])
async def test_me_and_bulk_are_501_not_implemented(sw: ScimWorld, method: str, path: str,
                                                   detail: str) -> None:
    """RFC 7644 §3.11 (/Me) and §3.12 (501: the operation is not supported), as the
    ServiceProviderConfig says for bulk (§5); the token is checked first, and nothing is
    created."""
    bulk = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],
            "Operations": [{"method": "POST", "path": "/Users", "bulkId": "1",
                            "data": sw.user_body("jane.doe")}]}
    r = await sw.scim.request(method, path, json=bulk if method == "POST" else None,
                              headers={"content-type": SCIM_JSON})
    assert assert_scim_error(r, 501, None)["detail"] == detail
    async with httpx.AsyncClient(base_url=str(sw.scim.base_url)) as anon:
        assert_scim_error(await anon.request(method, path), 401, None)
    assert await user_names(sw) == []


async def test_rotated_token_is_refused_and_the_new_one_works(sw: ScimWorld) -> None:
    from server.store import directory
    conn = await sw.world.db()
    try:
        await directory.revoke_tokens(conn, sw.world.org.org_id, now=0)
    finally:
        await conn.close()
    assert_scim_error(await sw.scim.get("/Users"), 401, None)
    fresh = await issue_scim_token(sw.world.dsn, sw.world.org.org_id)
    r = await sw.scim.get("/Users", headers={"authorization": f"Bearer {fresh}"})
    assert r.status_code == 200, r.text


async def test_another_organisations_directory_sees_none_of_these_users(sw: ScimWorld) -> None:
    jane = await sw.create_user("jane.doe")
    other = await issue_scim_token(sw.world.dsn, "county-general")
    h = {"authorization": f"Bearer {other}"}
    assert_scim_error(await sw.scim.get(f"/Users/{jane['id']}", headers=h), 404, None)
    r = await sw.scim.delete(f"/Users/{jane['id']}", headers=h)
    assert_scim_error(r, 404, None)
    assert (await sw.scim.get("/Users", headers=h)).json()["totalResults"] == 0
    assert await user_names(sw) == ["jane.doe"]


# --- groups and IT's signing queue ------------------------------------------------------------


async def test_group_members_must_be_users_of_this_directory(sw: ScimWorld) -> None:
    jane = await sw.create_user("jane.doe")
    body = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "displayName": "Orthopaedics on call",
            "members": [{"value": jane["id"]},
                        {"value": "7d0cbb6c-56cf-4b66-9c3c-1d1f0c6b3f1e"}]}
    r = await sw.scim.post("/Groups", json=body, headers={"content-type": SCIM_JSON})
    assert_scim_error(r, 400, "invalidValue")
    assert (await sw.scim.get("/Groups")).json()["totalResults"] == 0


async def test_a_directory_user_is_pending_until_it_signs_and_then_enrols(
        sw: ScimWorld) -> None:
    jane = await sw.create_user("Jane.Doe", displayName="Dr Jane Doe")
    r = await sw.scim.post("/Groups", headers={"content-type": SCIM_JSON}, json={
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
        "displayName": "Orthopaedics On Call", "members": [{"value": jane["id"]}]})
    assert r.status_code == 201, r.text
    r = await sw.scim.get(f"/Users/{jane['id']}")
    assert [g["display"] for g in r.json()["groups"]] == ["Orthopaedics On Call"]
    (entry,) = await sw.pending()
    assert entry["login"] == "jane.doe"
    assert entry["display_name"] == "Dr Jane Doe"
    assert entry["roles"] == ["orthopaedics_oncall"]  # LIGHTBOX_IDENTITY_FILE group_roles
    # Nothing exists on the relay until IT signs: the login is unknown.
    r = await sw.world.http.get("/v1/admin/users", headers=sw.world.admin_headers())
    assert [u["login"] for u in r.json()["users"]] == []
    user, r = await sw.sign(entry)
    assert r.status_code == 200, r.text
    assert r.json()["user_id"] == user.user_id
    assert await sw.pending() == []
    p = await peer(sw.world, "jane.doe", user=user)
    assert p.user_id == user.user_id


async def test_signing_a_version_the_directory_changed_since_is_conflict(sw: ScimWorld) -> None:
    jane = await sw.create_user("jane.doe")
    (entry,) = await sw.pending()
    r = await sw.patch(f"/Users/{jane['id']}", [{"op": "replace", "path": "displayName",
                                                  "value": "Dr J Doe"}])
    assert r.status_code == 200, r.text
    _, r = await sw.sign(entry)
    assert_problem(r, 409, "conflict")
    (again,) = await sw.pending()
    assert again["display_name"] == "Dr J Doe"


async def test_signing_with_another_login_or_organisation_is_refused(sw: ScimWorld) -> None:
    await sw.create_user("jane.doe")
    (entry,) = await sw.pending()
    _, r = await sw.sign({**entry, "login": "someone.else"})
    assert_problem(r, 422, "validation_failed")
    _, r = await sw.sign({**entry, "org_id": "county-general"})
    assert_problem(r, 422, "certificate_invalid")
    assert [e["directory_id"] for e in await sw.pending()] == [entry["directory_id"]]


async def test_the_signing_queue_needs_an_administrator(sw: ScimWorld) -> None:
    assert_problem(await sw.world.http.get("/v1/admin/directory/pending"), 401,
                   "unauthenticated")
    r = await sw.world.http.get("/v1/admin/directory/pending",
                                headers={"authorization": f"Bearer {sw.token}"})
    assert_problem(r, 401, "token_invalid")  # a SCIM token is no administrator's


# --- what the directory does to relay users ---------------------------------------------------


async def test_active_false_closes_the_open_websocket_within_a_second(sw: ScimWorld) -> None:
    jane, user = await sw.signed_user("jane.doe")
    p = await peer(sw.world, "jane.doe", user=user)
    sock = await connect(sw.world, p)
    r = await sw.patch(f"/Users/{jane['id']}", [{"op": "replace", "value": {"active": False}}])
    assert r.status_code == 200, r.text
    code, _ = await asyncio.wait_for(sock.closed, 1.0)
    assert code == CloseCode.USER_SUSPENDED
    assert_problem(await sw.world.login_response(p.device), 403, "user_suspended")
    # Its sessions ended with it, and the refresh says why, as the login does.
    assert_problem(await sw.world.http.post("/v1/auth/refresh",
                                            json={"refresh_token": p.device.refresh_token}),
                   403, "user_suspended")


async def _names(sw: ScimWorld, p: Any) -> tuple[str, ...]:
    """What colleagues see of jane.doe (the key directory) and what IT's queue asks."""
    r = await sw.world.call(p.device, "GET", "/v1/directory?login=jane.doe")
    assert r.status_code == 200, r.text
    (seen,) = r.json()["users"]
    asked = [e["display_name"] for e in (await signing_queue(sw.world))["renewals"]]
    return (seen["display_name"], *asked)


@pytest.mark.parametrize("rename", [
    [{"op": "replace", "path": "displayName", "value": "Dr Jane Smith"}],
    [{"op": "remove", "path": "displayName"},
     {"op": "replace", "path": "name.familyName", "value": "Smith"},
     {"op": "replace", "path": "name.givenName", "value": "Dr Jane"}],
])
async def test_a_rename_queues_a_renewal_and_the_old_certificate_serves_until_it_is_signed(
        sw: ScimWorld, rename: list[dict[str, Any]]) -> None:
    jane, user = await sw.signed_user("jane.doe")
    p = await peer(sw.world, "jane.doe", user=user)
    assert await _names(sw, p) == ("Dr Jane Doe",)
    r = await sw.patch(f"/Users/{jane['id']}", rename)
    assert r.status_code == 200, r.text
    # Asked of IT; until signed the certificate held says what it said, and still works.
    assert await _names(sw, p) == ("Dr Jane Doe", "Dr Jane Smith")
    await sw.world.login(p.device)
    (entry,) = (await signing_queue(sw.world))["renewals"]
    assert (entry["login"], entry["roles"]) == ("jane.doe", None)
    # A certificate that says something else than asked, or read before a change, is refused.
    assert_problem(await renew(sw.world, entry, display_name="Dr Someone Else"), 422,
                   "certificate_invalid")
    assert_problem(await renew(sw.world, entry, roles=["radiologist"]), 422,
                   "certificate_invalid")
    assert_problem(await renew(sw.world, entry, version=entry["version"] + 1), 409,
                   "conflict")
    r = await renew(sw.world, entry)
    assert r.status_code == 200, r.text
    assert r.json() == {"user_id": user.user_id, "login": "jane.doe"}
    assert await _names(sw, p) == ("Dr Jane Smith",)
    await sw.world.login(p.device)


async def _roles(sw: ScimWorld, p: Any) -> tuple[list[str], list[Any]]:
    """The roles the relay acts on for jane.doe, and the roles IT's queue asks for her."""
    r = await sw.world.call(p.device, "GET", "/v1/directory?login=jane.doe")
    assert r.status_code == 200, r.text
    (seen,) = r.json()["users"]
    return seen["roles"], [e["roles"] for e in (await signing_queue(sw.world))["renewals"]]


async def test_a_signed_user_joining_a_mapped_group_asks_for_the_role_and_leaving_withdraws_it(
        sw: ScimWorld) -> None:
    jane = await sw.create_user("jane.doe")
    group = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
             "members": [{"value": jane["id"]}]}
    r = await sw.scim.post("/Groups", headers={"content-type": SCIM_JSON},
                           json=group | {"displayName": "Orthopaedics on call"})
    assert r.status_code == 201, r.text
    ortho = r.json()
    (entry,) = await sw.pending()
    user, r = await sw.sign(entry)
    assert r.status_code == 200, r.text
    p = await peer(sw.world, "jane.doe", user=user)
    assert await _roles(sw, p) == (["orthopaedics_oncall"], [])

    # Joining a mapped group asks IT; nothing is granted before it signs.
    r = await sw.scim.post("/Groups", headers={"content-type": SCIM_JSON},
                           json=group | {"displayName": "Trauma on call"})
    assert r.status_code == 201, r.text
    trauma = r.json()
    assert await _roles(sw, p) == (["orthopaedics_oncall"],
                                   [["orthopaedics_oncall", "trauma_oncall"]])
    # Leaving one withdraws its role at once.
    r = await sw.patch(f"/Groups/{ortho['id']}", [{"op": "remove", "path": "members"}])
    assert r.status_code == 200, r.text
    assert await _roles(sw, p) == ([], [["trauma_oncall"]])
    (asked,) = (await signing_queue(sw.world))["renewals"]
    r = await renew(sw.world, asked)
    assert r.status_code == 200, r.text
    assert await _roles(sw, p) == (["trauma_oncall"], [])
    # Deleting the group is leaving it.
    r = await sw.scim.delete(f"/Groups/{trauma['id']}")
    assert r.status_code == 204, r.text
    assert await _roles(sw, p) == ([], [[]])
    await sw.world.login(p.device)  # access stays; only the role went


async def test_a_licence_renewal_made_from_the_old_certificate_does_not_restore_a_withdrawn_role(
        sw: ScimWorld) -> None:
    jane = await sw.create_user("jane.doe")
    r = await sw.scim.post("/Groups", headers={"content-type": SCIM_JSON}, json={
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
        "displayName": "Orthopaedics on call", "members": [{"value": jane["id"]}]})
    assert r.status_code == 201, r.text
    group_id = r.json()["id"]
    (entry,) = await sw.pending()
    user, r = await sw.sign(entry)
    assert r.status_code == 200, r.text
    p = await peer(sw.world, "jane.doe", user=user)
    r = await sw.patch(f"/Groups/{group_id}", [{"op": "remove", "path": "members"}])
    assert r.status_code == 200, r.text
    assert await _roles(sw, p) == ([], [[]])
    # IT renews her licence from the certificate held, which still names the role.
    (held,) = (await signing_queue(sw.world))["renewals"]
    assert user.body.licence is not None
    renewed = renewed_certificate(sw.world, held | {"roles": None, "display_name": None},
                                  licence=msgspec.structs.replace(user.body.licence,
                                                                  expires_at=2_000_000_000))
    r = await sw.world.http.put(f"/v1/admin/users/{user.user_id}/certificate",
                                headers=sw.world.admin_headers(),
                                json={"user_certificate": renewed})
    assert r.status_code == 200, r.text
    assert await _roles(sw, p) == ([], [[]])


async def test_a_rename_undone_before_it_is_signed_asks_nothing(sw: ScimWorld) -> None:
    jane, user = await sw.signed_user("jane.doe")
    p = await peer(sw.world, "jane.doe", user=user)
    for name in ("Dr Jane Smith", "Dr Jane Doe"):
        r = await sw.patch(f"/Users/{jane['id']}", [{"op": "replace", "path": "displayName",
                                                      "value": name}])
        assert r.status_code == 200, r.text
    assert await _names(sw, p) == ("Dr Jane Doe",)


async def test_a_renewal_needs_an_administrator_and_a_renewal_asked(sw: ScimWorld) -> None:
    jane, user = await sw.signed_user("jane.doe")
    await peer(sw.world, "jane.doe", user=user)
    r = await sw.patch(f"/Users/{jane['id']}", [{"op": "replace", "path": "displayName",
                                                  "value": "Dr Jane Smith"}])
    assert r.status_code == 200, r.text
    (entry,) = (await signing_queue(sw.world))["renewals"]
    path = f"/v1/admin/directory/renewals/{user.user_id}"
    body = {"version": entry["version"], "user_certificate": entry["user_certificate"]}
    assert_problem(await sw.world.http.post(path, json=body), 401, "unauthenticated")
    # The certificate held, posted again, is not a renewal.
    assert_problem(await sw.world.http.post(path, json=body,
                                            headers=sw.world.admin_headers()), 409, "conflict")
    for other in ("/v1/admin/directory/renewals/not-a-user",
                  "/v1/admin/directory/renewals/7d0cbb6c-56cf-4b66-9c3c-1d1f0c6b3f1e"):
        assert_problem(await sw.world.http.post(other, json=body,
                                                headers=sw.world.admin_headers()), 404,
                       "not_found")
    assert_problem(await sw.world.http.post(path, json={"version": "1"},
                                            headers=sw.world.admin_headers()), 422,
                   "validation_failed")
    assert len((await signing_queue(sw.world))["renewals"]) == 1


async def test_active_true_again_lets_the_user_log_in(sw: ScimWorld) -> None:
    jane, user = await sw.signed_user("jane.doe")
    p = await peer(sw.world, "jane.doe", user=user)
    for active in (False, True):
        r = await sw.patch(f"/Users/{jane['id']}", [{"op": "replace", "path": "active",
                                                      "value": active}])
        assert r.status_code == 200, r.text
    await sw.world.login(p.device)


async def test_a_revocation_list_does_not_resume_a_user_the_directory_suspended(
        sw: ScimWorld) -> None:
    jane, user = await sw.signed_user("jane.doe")
    p = await peer(sw.world, "jane.doe", user=user)
    r = await sw.patch(f"/Users/{jane['id']}", [{"op": "replace", "path": "active",
                                                  "value": False}])
    assert r.status_code == 200, r.text
    r = await sw.world.revoke(sw.world.org, 1)  # a list naming nobody
    assert r.status_code == 200, r.text
    assert user.user_id not in r.json()["users_resumed"]
    assert_problem(await sw.world.login_response(p.device), 403, "user_suspended")


async def test_directory_cannot_resume_a_user_the_signed_revocation_list_suspends(
        sw: ScimWorld) -> None:
    jane, user = await sw.signed_user("jane.doe")
    p = await peer(sw.world, "jane.doe", user=user)
    assert (await sw.world.revoke(sw.world.org, 1, users=(user.user_id,))).status_code == 200
    for active in (False, True):
        r = await sw.patch(f"/Users/{jane['id']}", [{"op": "replace", "path": "active",
                                                      "value": active}])
        assert r.status_code == 200, r.text
    assert_problem(await sw.world.login_response(p.device), 403, "user_suspended")


async def test_delete_revokes_every_device_and_closes_its_socket(sw: ScimWorld) -> None:
    jane, user = await sw.signed_user("jane.doe")
    p = await peer(sw.world, "jane.doe", user=user)
    sock = await connect(sw.world, p)
    r = await sw.scim.delete(f"/Users/{jane['id']}")
    assert r.status_code == 204, r.text
    code, _ = await asyncio.wait_for(sock.closed, seconds(10))
    assert code in {CloseCode.DEVICE_REVOKED, CloseCode.USER_SUSPENDED}
    assert_scim_error(await sw.scim.get(f"/Users/{jane['id']}"), 404, None)
    r = await sw.world.http.get(f"/v1/admin/users/{user.user_id}",
                                headers=sw.world.admin_headers())
    assert r.json()["user"]["status"] == "suspended"
    assert [d["status"] for d in r.json()["devices"]] == ["revoked"]
    assert_problem(await sw.world.login_response(p.device), 403, "device_revoked")
    # A later signed revocation list that does not name her does not bring her back, and
    # her login stays taken.
    r = await sw.world.revoke(sw.world.org, 1)
    assert user.user_id not in r.json()["users_resumed"]
    r = await sw.scim.post("/Users", json=sw.user_body("jane.doe"),
                           headers={"content-type": SCIM_JSON})
    assert_scim_error(r, 409, "uniqueness")


# --- failures of the relay itself -------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/Users", None),
    ("POST", "/Users", {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                        "userName": "jane.doe"}),
    ("GET", "/Users/7d0cbb6c-56cf-4b66-9c3c-1d1f0c6b3f1e", None),
])
async def test_an_unexpected_failure_is_a_scim_500_without_a_traceback(
        sw: ScimWorld, method: str, path: str, body: dict[str, Any] | None,
        caplog: pytest.LogCaptureFixture) -> None:
    """The directory's table gone from under the relay (a real database error, no mock): the
    RFC 7644 §3.12 body, never problem+json or a Python traceback; the log has the cause."""
    await sw.world.execute("ALTER TABLE scim_users RENAME TO scim_users_gone")
    try:
        r = await sw.scim.request(method, path, json=body,
                                  headers={"content-type": SCIM_JSON})
    finally:
        await sw.world.execute("ALTER TABLE scim_users_gone RENAME TO scim_users")
    assert r.status_code == 500, r.text
    assert r.headers["content-type"] == SCIM_JSON
    assert r.json() == {"schemas": [ERROR_SCHEMA], "status": "500",
                        "detail": "the relay could not handle this request; its log names "
                                  f"request {r.headers['x-request-id']}"}
    for leak in ("Traceback", "asyncpg", "scim_users", "UndefinedTable"):
        assert leak not in r.text
    # The relay runs in its own thread and logs after it has answered (Starlette re-raises
    # once the 500 is sent), so the record may land a moment after the response.

    async def logged_errors() -> list[logging.LogRecord]:
        return [rec for rec in caplog.records if rec.getMessage() == "unhandled error"]

    (logged,) = await eventually(logged_errors)
    assert logged.exc_info is not None and "UndefinedTable" in repr(logged.exc_info[1])
    # The relay answers again once the database is whole.
    assert (await sw.scim.get("/Users")).status_code == 200
