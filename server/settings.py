"""Relay settings: every knob and limit in one place, read from the environment once.

Each setting has a safe default and is listed (generated from :data:`SETTINGS`) in the README
and docs/SECURITY.md. Secrets are wrapped in :class:`Secret` so that they never print in a log,
a traceback or a repr (the idea of Starlette's ``Secret``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["Secret", "Setting", "Settings", "SettingsError", "describe", "load_settings"]


class SettingsError(ValueError):
    """A setting in the environment has an invalid value."""


class Secret:
    """A string that does not print: ``repr`` and ``str`` show ``'**********'``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _bool(v: str) -> bool:
    if v.lower() in {"1", "true", "yes", "on"}:
        return True
    if v.lower() in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {v!r}")


def _secret(v: str) -> Secret | None:
    return Secret(v) if v else None


_PARSERS: dict[str, Callable[[str], Any]] = {
    "int": int,
    "float": float,
    "bool": _bool,
    "secret": _secret,
    "str": str,
    "path": Path,
}


def _s(default: Any, env: str, kind: str, help: str, *, limit: bool = False) -> Any:
    """A setting: its default, environment variable, parser kind and documentation."""
    return dataclasses.field(
        default=default, metadata={"env": env, "kind": kind, "help": help, "limit": limit}
    )


@dataclasses.dataclass(frozen=True)
class Settings:
    """The relay's configuration. Build it with :func:`load_settings` (or keywords in tests).

    Every field is one environment variable; the README's table is generated from here.
    """

    database_url: Secret | None = _s(
        None, "DATABASE_URL", "secret",
        "Postgres URL. Unset: an embedded Postgres in LIGHTBOX_DATA_DIR/pg is started.")
    data_dir: Path = _s(Path(".data"), "LIGHTBOX_DATA_DIR", "path",
                        "Folder for the embedded Postgres and other local state.")
    host: str = _s("127.0.0.1", "HOST", "str", "Address the relay listens on.")
    port: int = _s(8000, "PORT", "int", "TCP port the relay listens on (0: any free port).")
    workers: int = _s(1, "WORKERS", "int", "Relay processes sharing the port.")
    log_level: str = _s("info", "LOG_LEVEL", "str", "debug, info, warning or error.")
    db_pool_min: int = _s(2, "LIGHTBOX_DB_POOL_MIN", "int", "Minimum pooled DB connections.")
    db_pool_max: int = _s(10, "LIGHTBOX_DB_POOL_MAX", "int", "Maximum pooled DB connections.")
    db_timeout: float = _s(10.0, "LIGHTBOX_DB_TIMEOUT", "float",
                           "Seconds a query or a pool acquire may take.", limit=True)
    max_body_bytes: int = _s(1_048_576, "LIGHTBOX_MAX_BODY_BYTES", "int",
                             "Largest HTTP request body (attachment chunks excepted).",
                             limit=True)
    max_header_bytes: int = _s(16_384, "LIGHTBOX_MAX_HEADER_BYTES", "int",
                               "Largest total size of one request's headers.", limit=True)
    shutdown_grace: float = _s(10.0, "LIGHTBOX_SHUTDOWN_GRACE", "float",
                               "Seconds to drain in-flight requests on shutdown.", limit=True)
    trusted_proxy_hops: int = _s(0, "LIGHTBOX_TRUSTED_PROXY_HOPS", "int",
                                 "Reverse proxies trusted for X-Forwarded-For (0: none).",
                                 limit=True)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def embedded_db(self) -> bool:
        return self.database_url is None


@dataclasses.dataclass(frozen=True)
class Setting:
    """Documentation of one setting, derived from the field metadata of :class:`Settings`."""

    env: str
    field: str
    default: str
    kind: str
    help: str
    limit: bool


def describe() -> list[Setting]:
    """Every setting with its environment variable, default and help (for docs)."""
    out = []
    for f in dataclasses.fields(Settings):
        d = f.default
        shown = "(unset)" if d is None else str(d)
        out.append(Setting(f.metadata["env"], f.name, shown, f.metadata["kind"],
                           f.metadata["help"], f.metadata["limit"]))
    return out


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read every setting from ``environ`` (default: ``os.environ``); keywords override."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        raw = env.get(f.metadata["env"])
        if raw is None:
            continue
        try:
            values[f.name] = _PARSERS[f.metadata["kind"]](raw.strip())
        except ValueError as exc:
            raise SettingsError(f"{f.metadata['env']}: invalid {f.metadata['kind']} value") from exc
    values.update(overrides)
    settings = Settings(**values)
    _validate(settings)
    return settings


def _validate(s: Settings) -> None:
    positive = [f.name for f in dataclasses.fields(Settings)
                if f.metadata["kind"] in {"int", "float"}
                and f.name not in {"trusted_proxy_hops", "port"}]
    for name in positive:
        if getattr(s, name) <= 0:
            raise SettingsError(f"{name} must be positive")
    if s.db_pool_min > s.db_pool_max:
        raise SettingsError("LIGHTBOX_DB_POOL_MIN must not exceed LIGHTBOX_DB_POOL_MAX")
    if not 0 <= s.port <= 65535:
        raise SettingsError("PORT must be 0-65535")
