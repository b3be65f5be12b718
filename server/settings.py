"""Relay settings: every knob and limit in one place, read from the environment once.

Each setting has a safe default and is listed (generated from :data:`SETTINGS`) in the README
and docs/SECURITY.md. Secrets are wrapped in :class:`Secret` so that they never print in a log,
a traceback or a repr (the idea of Starlette's ``Secret``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "IPNetwork",
    "Secret",
    "Setting",
    "Settings",
    "SettingsError",
    "describe",
    "load_settings",
    "parse_origins",
    "parse_proxies",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_proxies(text: str) -> tuple[IPNetwork, ...]:
    """``LIGHTBOX_TRUSTED_PROXIES``: comma-separated addresses or CIDR networks.

    Raises ValueError naming the first entry that is neither."""
    out = []
    for item in (part.strip() for part in text.split(",")):
        if item:
            out.append(ipaddress.ip_network(item, strict=False))
    return tuple(out)


_ORIGIN = re.compile(r"^https?://[a-z0-9.-]+(:[0-9]{1,5})?$|^https?://\[[0-9a-f:.]+\](:[0-9]{1,5})?$")


def parse_origins(text: str) -> tuple[str, ...]:
    """``LIGHTBOX_PHONE_ORIGINS``: comma-separated web origins (RFC 6454 §6.2 serialisation:
    scheme, host and optional port; no path, no trailing slash, lowercase).

    Raises ValueError naming the first entry that is not one."""
    out = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if not _ORIGIN.match(item):
            raise ValueError(f"{item!r} is not an origin like https://phone.example.org")
        out.append(item)
    return tuple(out)


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
    trusted_proxies: str = _s("127.0.0.1,::1", "LIGHTBOX_TRUSTED_PROXIES", "str",
                              "Addresses or CIDR networks of those proxies, comma-separated: "
                              "X-Forwarded-For is read only from them.")
    phone_origins: str = _s("", "LIGHTBOX_PHONE_ORIGINS", "str",
                            "Origins (scheme://host[:port]) that serve the phone app "
                            "(lightbox-phone), comma-separated: browsers may call the HTTP API "
                            "from them (CORS, Fetch standard); empty: from none.")

    # --- identity (PROTOCOL.md §11) ---------------------------------------------------------------
    trusted_orgs_file: Path | None = _s(
        None, "LIGHTBOX_TRUSTED_ORGS_FILE", "path",
        "JSON file of trusted organisation keys, {\"orgs\": {org_id: b64url Ed25519 key}} "
        "(unset: LIGHTBOX_DATA_DIR/trusted-orgs.json).")
    token_key_file: Path | None = _s(
        None, "LIGHTBOX_TOKEN_KEY_FILE", "path",
        "The relay's Ed25519 token signing seed, created 0600 on first start "
        "(unset: LIGHTBOX_DATA_DIR/token-key).")
    argon2_profile: str = _s(
        "rfc9106-low-memory", "LIGHTBOX_ARGON2_PROFILE", "str",
        "Argon2id cost for password hashes: rfc9106-low-memory, or cheap (tests only).")
    access_token_ttl: int = _s(600, "LIGHTBOX_ACCESS_TOKEN_TTL", "int",
                               "Seconds an access token (JWT) is valid.", limit=True)
    refresh_token_ttl: int = _s(30 * 86400, "LIGHTBOX_REFRESH_TOKEN_TTL", "int",
                                "Seconds a refresh token is valid (rotated on each use).",
                                limit=True)
    refresh_reuse_grace: int = _s(10, "LIGHTBOX_REFRESH_REUSE_GRACE", "int",
                                  "Seconds a just-rotated refresh token still answers with the "
                                  "same new pair (two requests of one device racing); later, "
                                  "it is reuse and ends the session (0: no grace).",
                                  limit=True)
    admin_token_ttl: int = _s(1800, "LIGHTBOX_ADMIN_TOKEN_TTL", "int",
                              "Seconds an IT administrator's token is valid.", limit=True)
    password_min_length: int = _s(12, "LIGHTBOX_PASSWORD_MIN_LENGTH", "int",
                                  "Shortest password accepted (never below 12).", limit=True)
    max_devices_per_user: int = _s(5, "LIGHTBOX_MAX_DEVICES_PER_USER", "int",
                                   "Active devices one user may have.", limit=True)
    enrolment_code_ttl: int = _s(72 * 3600, "LIGHTBOX_ENROLMENT_CODE_TTL", "int",
                                 "Longest validity of an enrolment code, in seconds (caps the "
                                 "expiry IT's tool asks for).", limit=True)
    pairing_ttl: int = _s(600, "LIGHTBOX_PAIRING_TTL", "int",
                          "Seconds a device pairing offer stays open.", limit=True)
    prekey_batch_max: int = _s(100, "LIGHTBOX_PREKEY_BATCH_MAX", "int",
                               "One-time prekeys in one upload (at most 100).", limit=True)
    prekeys_low_water: int = _s(20, "LIGHTBOX_PREKEYS_LOW_WATER", "int",
                                "A device holding fewer one-time prekeys is told to upload "
                                "more.", limit=True)
    prekeys_target: int = _s(100, "LIGHTBOX_PREKEYS_TARGET", "int",
                             "How many one-time prekeys a device should keep on the relay.",
                             limit=True)
    prekey_claim_window: int = _s(3600, "LIGHTBOX_PREKEY_CLAIM_WINDOW", "int",
                                  "Seconds over which one-time prekey claims are counted.",
                                  limit=True)
    prekey_claims_per_requester: int = _s(60, "LIGHTBOX_PREKEY_CLAIMS_PER_REQUESTER", "int",
                                          "One-time prekeys one device may claim of any one "
                                          "other device per window; beyond it the claim is "
                                          "refused (prekey_claims_limited).", limit=True)
    prekey_claims_per_target: int = _s(100, "LIGHTBOX_PREKEY_CLAIMS_PER_TARGET", "int",
                                       "One-time prekeys of one device handed out per window, "
                                       "to all claimers together; beyond it a claim gets the "
                                       "signed prekey alone.", limit=True)
    lockout_account_failures: int = _s(5, "LIGHTBOX_LOCKOUT_ACCOUNT_FAILURES", "int",
                                       "Failed logins of one account from one client address "
                                       "before that address is locked out of that account; "
                                       "from this many on, the account's own logins are also "
                                       "delayed (LIGHTBOX_LOGIN_DELAY_*).", limit=True)
    lockout_address_failures: int = _s(20, "LIGHTBOX_LOCKOUT_ADDRESS_FAILURES", "int",
                                       "Failed logins (any accounts) or wrong enrolment codes "
                                       "from one client address before its further attempts "
                                       "are throttled (never a login signed by the account's "
                                       "own device, never a right code).", limit=True)
    lockout_base_seconds: int = _s(30, "LIGHTBOX_LOCKOUT_BASE_SECONDS", "int",
                                   "First lock of an (account, address) pair or throttle of an "
                                   "address, in seconds; doubles with each further failure.",
                                   limit=True)
    lockout_max_seconds: int = _s(3600, "LIGHTBOX_LOCKOUT_MAX_SECONDS", "int",
                                  "Longest lock or throttle, in seconds; failures older than "
                                  "this are forgotten.", limit=True)
    login_delay_base_seconds: int = _s(1, "LIGHTBOX_LOGIN_DELAY_BASE_SECONDS", "int",
                                       "First delay of an account's logins (from any address) "
                                       "after LIGHTBOX_LOCKOUT_ACCOUNT_FAILURES failures; "
                                       "doubles with each further failure.", limit=True)
    login_delay_max_seconds: int = _s(60, "LIGHTBOX_LOGIN_DELAY_MAX_SECONDS", "int",
                                      "Longest delay of an account's logins (at most 300): "
                                      "what a third party can make the account holder wait.",
                                      limit=True)
    login_challenge_ttl: int = _s(60, "LIGHTBOX_LOGIN_CHALLENGE_TTL", "int",
                                  "Seconds a login challenge nonce stays valid.", limit=True)
    proof_clock_skew: int = _s(60, "LIGHTBOX_PROOF_CLOCK_SKEW", "int",
                               "Seconds a Lightbox-Proof timestamp may differ from the "
                               "relay's clock.", limit=True)
    # --- websocket relay (docs/PROTOCOL.md §3) ---
    ws_max_frame: int = _s(1_048_576, "LIGHTBOX_WS_MAX_FRAME", "int",
                           "Largest websocket frame; larger ones close the socket with 1009.",
                           limit=True)
    max_message_bytes: int = _s(327_680, "LIGHTBOX_MAX_MESSAGE_BYTES", "int",
                                "Largest sealed message (header, body and wrapped keys).",
                                limit=True)
    ws_auth_timeout: float = _s(10.0, "LIGHTBOX_WS_AUTH_TIMEOUT", "float",
                                "Seconds a new websocket has to authenticate (else 4002).",
                                limit=True)
    ws_heartbeat: int = _s(30, "LIGHTBOX_WS_HEARTBEAT", "int",
                           "Seconds of silence after which the relay pings a device.",
                           limit=True)
    ws_heartbeat_timeout: float = _s(20.0, "LIGHTBOX_WS_HEARTBEAT_TIMEOUT", "float",
                                     "Seconds to wait for a pong before closing (4010).",
                                     limit=True)
    ws_idle_timeout: float = _s(3600.0, "LIGHTBOX_WS_IDLE_TIMEOUT", "float",
                                "Seconds without a frame from the device before closing "
                                "(4007).", limit=True)
    ws_session_lifetime: float = _s(43_200.0, "LIGHTBOX_WS_SESSION_LIFETIME", "float",
                                    "Absolute lifetime of one websocket session (4006).",
                                    limit=True)
    ws_send_window: int = _s(32, "LIGHTBOX_WS_SEND_WINDOW", "int",
                             "Deliveries in flight per device, and sends awaiting their "
                             "answer per connection.", limit=True)
    ws_ack_timeout: float = _s(120.0, "LIGHTBOX_WS_ACK_TIMEOUT", "float",
                               "Seconds a delivery may stay unacknowledged before the device "
                               "is disconnected as too slow (4009).", limit=True)
    ws_write_timeout: float = _s(30.0, "LIGHTBOX_WS_WRITE_TIMEOUT", "float",
                                 "Seconds a write to a device may block before it is "
                                 "disconnected as too slow (4009).", limit=True)
    rate_messages_per_minute: int = _s(600, "LIGHTBOX_RATE_MESSAGES_PER_MINUTE", "int",
                                       "Messages one device may send per minute (bursts up to "
                                       "that many).", limit=True)
    rate_bytes_per_minute: int = _s(67_108_864, "LIGHTBOX_RATE_BYTES_PER_MINUTE", "int",
                                    "Sealed bytes one device may send per minute.", limit=True)
    send_batch: int = _s(256, "LIGHTBOX_SEND_BATCH", "int",
                         "Most sends stored in one group-commit transaction.")
    ack_linger: float = _s(0.005, "LIGHTBOX_ACK_LINGER", "float",
                           "Seconds the relay waits after an acknowledgement for more to "
                           "remove in the same statement (0: none).")
    verify_sender_signatures: bool = _s(True, "LIGHTBOX_VERIFY_SENDER_SIGNATURES", "bool",
                                        "Check each sealed message's sender signature on the "
                                        "relay too (recipients always do).")
    # --- attachments and consent (docs/PROTOCOL.md §12, §13) ---
    attachment_max_bytes: int = _s(26_214_400, "LIGHTBOX_ATTACHMENT_MAX_BYTES", "int",
                                   "Largest attachment (declared ciphertext size, 25 MiB).",
                                   limit=True)
    attachment_chunk_bytes: int = _s(1_048_576, "LIGHTBOX_ATTACHMENT_CHUNK_BYTES", "int",
                                     "Largest attachment chunk in one PUT (the route's body "
                                     "limit).", limit=True)
    attachment_quota_bytes: int = _s(536_870_912, "LIGHTBOX_ATTACHMENT_QUOTA_BYTES", "int",
                                     "Attachment bytes one user may hold on the relay (512 "
                                     "MiB).", limit=True)
    attachment_unreferenced_ttl: int = _s(86_400, "LIGHTBOX_ATTACHMENT_UNREFERENCED_TTL", "int",
                                          "Seconds after which an upload no message references "
                                          "is deleted.", limit=True)
    attachment_janitor_interval: float = _s(300.0, "LIGHTBOX_ATTACHMENT_JANITOR_INTERVAL",
                                            "float", "Seconds between sweeps for unreferenced "
                                            "uploads.")
    consent_policy_file: Path | None = _s(
        None, "LIGHTBOX_CONSENT_POLICY_FILE", "path",
        "JSON file of per-organisation consent policies, {org_id: {ConsentPolicy fields}} "
        "(unset, or an organisation not listed: the docs/ARCHITECTURE.md §5 defaults).")

    # --- hospital directory (SCIM 2.0) and single sign-on ---
    identity_file: Path | None = _s(
        None, "LIGHTBOX_IDENTITY_FILE", "path",
        "JSON file of per-organisation directory and sign-on settings, {\"orgs\": {org_id: "
        "{\"group_roles\": {group: role}}}} (unset: no SCIM group maps to a role).")
    sso_challenge_ttl: int = _s(600, "LIGHTBOX_SSO_CHALLENGE_TTL", "int",
                                "Seconds a single sign-on challenge (the OpenID nonce) stays "
                                "valid: the clinician's time at the IdP's login page.",
                                limit=True)
    sso_session_ttl: int = _s(43_200, "LIGHTBOX_SSO_SESSION_TTL", "int",
                              "Seconds a session begun with the IdP refreshes before the "
                              "clinician must sign in at the IdP again (so a user disabled "
                              "there is out within this and one access token).", limit=True)
    oidc_metadata_ttl: int = _s(3600, "LIGHTBOX_OIDC_METADATA_TTL", "int",
                                "Seconds an IdP's discovery document and signing keys are "
                                "cached (an unknown key id fetches the keys again at once).",
                                limit=True)
    oidc_key_refetch_cooldown: float = _s(
        30.0, "LIGHTBOX_OIDC_KEY_REFETCH_COOLDOWN", "float",
        "Least seconds between two fetches of an IdP's keys for a key id the relay does not "
        "know (a rotation is picked up at once; forged key ids cannot make it fetch more).",
        limit=True)
    oidc_http_timeout: float = _s(5.0, "LIGHTBOX_OIDC_HTTP_TIMEOUT", "float",
                                  "Seconds the relay waits for an IdP's discovery document or "
                                  "keys.", limit=True)
    scim_max_results: int = _s(200, "LIGHTBOX_SCIM_MAX_RESULTS", "int",
                               "Most resources one SCIM list or search answers (RFC 7644 "
                               "§3.4.2.4 count is capped to it).", limit=True)

    # --- filing and expiry (docs/PROTOCOL.md §15) ---
    filing_required: bool = _s(True, "LIGHTBOX_FILING_REQUIRED", "bool",
                               "Refuse a direct-care image that does not name every active "
                               "record gateway device of the organisation "
                               "(filing_gateway_missing).")
    filing_optional_orgs: str = _s("", "LIGHTBOX_FILING_OPTIONAL_ORGS", "str",
                                   "Comma-separated organisation ids for which filing is not "
                                   "required (overrides LIGHTBOX_FILING_REQUIRED for them).")
    expiry_grace: int = _s(900, "LIGHTBOX_EXPIRY_GRACE", "int",
                           "Seconds after filing before every device copy is ordered to "
                           "expire.", limit=True)
    expiry_hard_limit: int = _s(259_200, "LIGHTBOX_EXPIRY_HARD_LIMIT", "int",
                                "Seconds after sharing at which an image never filed expires "
                                "everywhere (72 h).", limit=True)
    expiry_sweep_interval: float = _s(30.0, "LIGHTBOX_EXPIRY_SWEEP_INTERVAL", "float",
                                      "Seconds between sweeps of due expiry timers.")

    ciphertext_purge_interval: float = _s(60.0, "LIGHTBOX_CIPHERTEXT_PURGE_INTERVAL", "float",
                                          "Seconds between sweeps behind the ciphertext "
                                          "purge: a message's ciphertext goes with its last "
                                          "queued delivery; the sweep finds a message that "
                                          "never had one, or that an earlier release kept "
                                          "(docs/OPERATIONS.md).")

    # --- break-glass (docs/PROTOCOL.md §17) ---
    break_glass_daily_limit: int = _s(3, "LIGHTBOX_BREAK_GLASS_DAILY_LIMIT", "int",
                                      "Emergency messages without a consent a clinician may "
                                      "send in any 24 hours (break_glass_limit beyond); 0 "
                                      "turns break-glass off.", limit=True)

    # --- on-call routing and escalation (docs/PROTOCOL.md §16) ---
    oncall_sweep_interval: float = _s(5.0, "LIGHTBOX_ONCALL_SWEEP_INTERVAL", "float",
                                      "Seconds between sweeps of due escalation and handover "
                                      "timers (the granularity of an escalation step).")
    oncall_sweep_batch: int = _s(100, "LIGHTBOX_ONCALL_SWEEP_BATCH", "int",
                                 "Escalation timers one relay process takes per sweep "
                                 "transaction.", limit=True)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def embedded_db(self) -> bool:
        return self.database_url is None

    @property
    def trusted_orgs_path(self) -> Path:
        return self.trusted_orgs_file or self.data_dir / "trusted-orgs.json"

    @property
    def trusted_proxy_networks(self) -> tuple[IPNetwork, ...]:
        return parse_proxies(self.trusted_proxies)

    @property
    def phone_origin_list(self) -> tuple[str, ...]:
        return parse_origins(self.phone_origins)

    @property
    def token_key_path(self) -> Path:
        return self.token_key_file or self.data_dir / "token-key"


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
                and f.name not in {"trusted_proxy_hops", "port", "refresh_reuse_grace",
                                   "break_glass_daily_limit", "ack_linger"}]
    for name in positive:
        if getattr(s, name) <= 0:
            raise SettingsError(f"{name} must be positive")
    if s.refresh_reuse_grace < 0:
        raise SettingsError("LIGHTBOX_REFRESH_REUSE_GRACE must not be negative")
    if s.break_glass_daily_limit < 0:
        raise SettingsError("LIGHTBOX_BREAK_GLASS_DAILY_LIMIT must not be negative")
    if not 0 <= s.ack_linger <= 1:
        raise SettingsError("LIGHTBOX_ACK_LINGER must be from 0 to 1 (seconds)")
    if s.refresh_reuse_grace >= s.access_token_ttl:
        raise SettingsError("LIGHTBOX_REFRESH_REUSE_GRACE must be shorter than "
                            "LIGHTBOX_ACCESS_TOKEN_TTL")
    if s.db_pool_min > s.db_pool_max:
        raise SettingsError("LIGHTBOX_DB_POOL_MIN must not exceed LIGHTBOX_DB_POOL_MAX")
    if not 0 <= s.port <= 65535:
        raise SettingsError("PORT must be 0-65535")
    if s.password_min_length < 12:
        raise SettingsError("LIGHTBOX_PASSWORD_MIN_LENGTH must be at least 12")
    if s.prekey_batch_max > 100:
        raise SettingsError("LIGHTBOX_PREKEY_BATCH_MAX must not exceed 100")
    if s.prekeys_low_water > s.prekeys_target:
        raise SettingsError("LIGHTBOX_PREKEYS_LOW_WATER must not exceed LIGHTBOX_PREKEYS_TARGET")
    if s.lockout_base_seconds > s.lockout_max_seconds:
        raise SettingsError("LIGHTBOX_LOCKOUT_BASE_SECONDS must not exceed "
                            "LIGHTBOX_LOCKOUT_MAX_SECONDS")
    if not s.login_delay_base_seconds <= s.login_delay_max_seconds <= 300:
        raise SettingsError("LIGHTBOX_LOGIN_DELAY_BASE_SECONDS must not exceed "
                            "LIGHTBOX_LOGIN_DELAY_MAX_SECONDS, which must not exceed 300")
    if s.attachment_max_bytes > s.attachment_quota_bytes:
        raise SettingsError("LIGHTBOX_ATTACHMENT_MAX_BYTES must not exceed "
                            "LIGHTBOX_ATTACHMENT_QUOTA_BYTES")
    try:
        parse_proxies(s.trusted_proxies)
    except ValueError as exc:
        raise SettingsError(f"LIGHTBOX_TRUSTED_PROXIES: {exc}") from exc
    try:
        parse_origins(s.phone_origins)
    except ValueError as exc:
        raise SettingsError(f"LIGHTBOX_PHONE_ORIGINS: {exc}") from exc
    if s.argon2_profile not in {"rfc9106-low-memory", "cheap"}:
        raise SettingsError("LIGHTBOX_ARGON2_PROFILE must be rfc9106-low-memory or cheap")
