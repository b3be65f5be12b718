"""Settings come from the environment once, with safe defaults; secrets never print."""

from __future__ import annotations

import pytest

from server.settings import Secret, SettingsError, describe, load_settings


def test_defaults_need_no_environment() -> None:
    s = load_settings({})
    assert s.database_url is None and s.embedded_db
    assert (s.host, s.port, s.workers) == ("127.0.0.1", 8000, 1)
    assert s.max_body_bytes == 1_048_576


def test_environment_overrides_and_parses_types() -> None:
    s = load_settings({"PORT": "9001", "LIGHTBOX_DB_TIMEOUT": "2.5", "WORKERS": " 3 "})
    assert (s.port, s.db_timeout, s.workers) == (9001, 2.5, 3)


def test_database_url_is_a_secret_that_never_prints() -> None:
    s = load_settings({"DATABASE_URL": "postgresql://relay:hunter2hunter2@db/lightbox"})
    assert isinstance(s.database_url, Secret)
    assert s.database_url.reveal().endswith("@db/lightbox")
    for text in (repr(s), str(s), repr(s.database_url), str(s.database_url), f"{s}"):
        assert "hunter2" not in text


@pytest.mark.parametrize(("env", "value"), [
    ("PORT", "eighty"), ("PORT", "70000"), ("LIGHTBOX_MAX_BODY_BYTES", "0"),
    ("LIGHTBOX_DB_TIMEOUT", "-1"), ("WORKERS", "0"),
])
def test_invalid_values_are_refused_naming_the_variable(env: str, value: str) -> None:
    with pytest.raises(SettingsError, match=env.split("_")[-1].lower() + "|" + env):
        load_settings({env: value})


def test_pool_min_above_max_is_refused() -> None:
    with pytest.raises(SettingsError, match="POOL_MIN"):
        load_settings({"LIGHTBOX_DB_POOL_MIN": "20", "LIGHTBOX_DB_POOL_MAX": "5"})


def test_refresh_reuse_grace_may_be_zero_but_not_negative_nor_outlive_the_access_token(
        ) -> None:
    assert load_settings({"LIGHTBOX_REFRESH_REUSE_GRACE": "0"}).refresh_reuse_grace == 0
    assert load_settings({}).refresh_reuse_grace == 10
    with pytest.raises(SettingsError, match="LIGHTBOX_REFRESH_REUSE_GRACE must not be negative"):
        load_settings({"LIGHTBOX_REFRESH_REUSE_GRACE": "-1"})
    with pytest.raises(SettingsError, match="shorter than LIGHTBOX_ACCESS_TOKEN_TTL"):
        load_settings({"LIGHTBOX_REFRESH_REUSE_GRACE": "600"})


@pytest.mark.parametrize("value", ["-0.001", "1.5", "nan", "soon"])
def test_the_ack_linger_is_from_zero_to_one_second(value: str) -> None:
    assert load_settings({}).ack_linger == 0.005
    assert load_settings({"LIGHTBOX_ACK_LINGER": "0"}).ack_linger == 0
    with pytest.raises(SettingsError, match="LIGHTBOX_ACK_LINGER"):
        load_settings({"LIGHTBOX_ACK_LINGER": value})


def test_every_setting_is_documented_with_an_env_name_and_help() -> None:
    envs = [d.env for d in describe()]
    assert len(envs) == len(set(envs))
    assert all(d.help.endswith(".") for d in describe())
