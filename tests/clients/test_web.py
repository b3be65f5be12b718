"""clients/desktop/web.py: what the desktop page's handlers share: JSON bodies only, bounded;
ids are UUIDs or not found; a wrong password is said as such; only http(s) links."""

from __future__ import annotations

import json

import pytest
from starlette.requests import Request

from clients.desktop.web import (
    MAX_JSON,
    Refused,
    checked_uuid,
    http_url,
    password_message,
    read_json,
)


def _request(body: bytes, content_type: str = "application/json") -> Request:
    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/x", "query_string": b"",
             "headers": [(b"content-type", content_type.encode())]}
    return Request(scope, receive)


async def test_a_json_object_is_read() -> None:
    assert await read_json(_request(b'{"a": 1}', "application/json; charset=utf-8")) == {"a": 1}


@pytest.mark.parametrize(("body", "content_type", "status", "message"), [
    (b'{"a": 1}', "text/plain", 415, "send JSON"),
    (json.dumps({"a": "x" * MAX_JSON}).encode(), "application/json", 413, "too large"),
    (b"{not json", "application/json", 400, "malformed JSON"),
    (b"[1, 2]", "application/json", 400, "malformed JSON"),
])
async def test_a_body_that_is_not_a_small_json_object_is_refused(
        body: bytes, content_type: str, status: int, message: str) -> None:
    with pytest.raises(Refused) as refused:
        await read_json(_request(body, content_type))
    assert (refused.value.status, refused.value.message) == (status, message)


def test_an_id_that_is_not_a_uuid_is_not_found() -> None:
    assert checked_uuid("6F9619FF-8B86-D011-B42D-00C04FC964FF") == \
        "6f9619ff-8b86-d011-b42d-00c04fc964ff"
    with pytest.raises(Refused) as refused:
        checked_uuid("../../etc/passwd")
    assert (refused.value.status, refused.value.message) == (404, "not found")


def test_a_password_failure_reads_as_wrong_password_and_others_as_themselves() -> None:
    assert password_message(ValueError("the passphrase does not open this vault")) == \
        "wrong password"
    assert password_message(ValueError("Password rejected")) == "wrong password"
    assert password_message(ValueError("the vault is locked")) == "the vault is locked"


@pytest.mark.parametrize(("url", "kept"), [
    ("https://pacs.example.org/viewer?study=1", True), ("HTTP://pacs.example.org", True),
    ("javascript:alert(1)", False), ("data:text/html,hi", False), ("//pacs.example.org", False),
    ("", False)])
def test_only_http_links_reach_the_page(url: str, kept: bool) -> None:
    assert http_url(url) == (url if kept else "")
