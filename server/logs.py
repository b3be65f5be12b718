"""Structured JSON logs, one object per line, with the request id and never PHI.

Only whitelisted ``extra`` keys are emitted: a developer who passes a message body or a name
through ``extra=`` by mistake does not get it into the log. Messages themselves are short
constant strings; ids and codes go in fields.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
from typing import Any

__all__ = ["REQUEST_ID", "SAFE_FIELDS", "JsonFormatter", "configure_logging"]

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "lightbox_request_id", default=None
)

# Fields that may appear in a log line. Add to this list deliberately: each one must be
# an identifier, a code, a number or a route template, never free text from a user.
SAFE_FIELDS = frozenset({
    "method", "route", "status", "duration_ms", "code", "device_id", "user_id", "thread_id",
    "message_id", "attachment_id", "consent_id", "org_id", "event", "revision", "url",
    "data_dir", "workers", "pid", "close_code", "count", "reason", "seq", "worker",
    "delivery_id", "session_id", "connections", "error_type",
})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = REQUEST_ID.get()
        if rid:
            out["request_id"] = rid
        for key in SAFE_FIELDS:
            if key in record.__dict__:
                out[key] = record.__dict__[key]
        if record.exc_info and record.exc_info[0] is not None:
            # The exception type and where it happened, not its message (which may quote input).
            out["error_type"] = record.exc_info[0].__name__
            tb = record.exc_info[2]
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            if tb is not None:
                out["at"] = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
        return json.dumps(out, separators=(",", ":"), default=str)


def configure_logging(level: str = "info", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    # pgserver logs whole command lines at info; only its problems interest us.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    # Alembic logs each of its plugins as it imports them, at info (server/migrations.py
    # imports it when first needed, so after this): nothing an operator needs.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    # uvicorn's access log prints raw paths and query strings; ours logs route templates.
    logging.getLogger("uvicorn.access").disabled = True
