"""Logs are JSON lines with the request id; unknown fields and exception messages (which may
quote user input) never reach them."""

from __future__ import annotations

import io
import json
import logging

import httpx

from server.logs import REQUEST_ID, JsonFormatter
from tests.helpers import RunningRelay

PHI = "DOE^JOHN MRN 12345678"


def _format(record_extra: dict[str, object], exc: BaseException | None = None) -> dict[str, object]:
    logger = logging.getLogger("test.logs")
    record = logger.makeRecord("test.logs", logging.INFO, __file__, 1, "event happened", (),
                               (type(exc), exc, exc.__traceback__) if exc else None,
                               extra=record_extra)
    formatted: dict[str, object] = json.loads(JsonFormatter().format(record))
    return formatted


def test_log_line_is_json_with_request_id_and_safe_fields_only() -> None:
    token = REQUEST_ID.set("req-1")
    try:
        line = _format({"route": "/v1/x", "status": 200, "patient_name": PHI, "body": PHI})
    finally:
        REQUEST_ID.reset(token)
    assert line["request_id"] == "req-1"
    assert line["route"] == "/v1/x" and line["status"] == 200
    assert PHI not in json.dumps(line)


def test_exception_message_is_not_logged_only_its_type() -> None:
    try:
        raise ValueError(f"cannot parse {PHI}")
    except ValueError as exc:
        line = _format({}, exc)
    assert line["error_type"] == "ValueError"
    assert PHI not in json.dumps(line)


async def test_requests_carrying_phi_leave_no_trace_in_the_logs(relay: RunningRelay) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        async with httpx.AsyncClient(base_url=relay.base_url) as c:
            await c.post("/v1/negotiate", json={"versions": [1], "client": PHI})
            await c.post("/v1/negotiate", content=f'{{"client": "{PHI}"'.encode(),
                         headers={"content-type": "application/json"})
            await c.get(f"/v1/patients/{PHI}?name={PHI}")
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    lines = [json.loads(x) for x in stream.getvalue().splitlines() if x.strip()]
    assert any(x.get("route") == "/v1/negotiate" for x in lines)
    # The test's own HTTP client (logger "httpx") logs its URLs; the relay is everything else.
    relay_lines = [x for x in stream.getvalue().splitlines() if '"logger":"httpx"' not in x]
    assert relay_lines
    leaked = [x for x in relay_lines if "DOE" in x or "12345678" in x]
    assert leaked == []
