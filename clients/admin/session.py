"""IT administrator's session for ``lightbox-admin``: the admin token from ``login``.

Cached (mode 0600) in ``$LIGHTBOX_ADMIN_HOME/session.json`` (default
``~/.config/lightbox-admin/session.json``). ``LIGHTBOX_ADMIN_TOKEN`` overrides the cached token
and ``LIGHTBOX_SERVER`` the cached relay URL (scripts). The token is short-lived (the relay's
LIGHTBOX_ADMIN_TOKEN_TTL) and only good for the admin API.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import msgspec

from clients.sdk.keystore import write_private_file

__all__ = ["AdminSession", "SessionError", "clear_session", "load_session", "save_session",
           "session_path"]


class SessionError(Exception):
    """No usable admin session."""


class AdminSession(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    server: str
    token: str
    expires_at: int
    login: str | None = None

    def __repr__(self) -> str:
        return f"AdminSession(server={self.server!r}, login={self.login!r})"


def session_path() -> Path:
    home = os.environ.get("LIGHTBOX_ADMIN_HOME")
    base = Path(home) if home else Path.home() / ".config" / "lightbox-admin"
    return base / "session.json"


def save_session(session: AdminSession) -> Path:
    path = session_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private_file(path, msgspec.json.encode(session))
    return path


def clear_session() -> None:
    session_path().unlink(missing_ok=True)


def load_session(server: str | None = None) -> AdminSession:
    """The session to use: the cache, with the environment's overrides applied."""
    env_token = os.environ.get("LIGHTBOX_ADMIN_TOKEN")
    env_server = server or os.environ.get("LIGHTBOX_SERVER")
    cached = None
    path = session_path()
    if path.exists():
        try:
            cached = msgspec.json.decode(path.read_bytes(), type=AdminSession)
        except msgspec.DecodeError as exc:
            raise SessionError(f"{path} is damaged: log in again") from exc
    if env_token:
        url = env_server or (cached.server if cached else None)
        if not url:
            raise SessionError("LIGHTBOX_ADMIN_TOKEN is set but no server: set LIGHTBOX_SERVER")
        return AdminSession(server=url, token=env_token, expires_at=0)
    if cached is None:
        raise SessionError("not logged in: run `lightbox-admin login --server URL --login NAME`")
    if cached.expires_at and cached.expires_at <= time.time():
        raise SessionError("the admin session has expired: run `lightbox-admin login` again")
    if env_server and env_server.rstrip("/") != cached.server.rstrip("/"):
        raise SessionError(f"the cached session is for {cached.server}: log in to {env_server}")
    return cached
