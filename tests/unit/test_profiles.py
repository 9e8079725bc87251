"""MESH_ENV profiles: each one's defaults, explicit variables winning, the overrides shown
and the refusal to serve required authentication without any way to identify a caller."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.serve import _with_address
from core.config import PROFILES, Settings
from core.errors import ConfigError
from core.variables import Override


def test_development_is_the_default_profile() -> None:
    settings = Settings.from_env({})

    assert settings.profile == "development"
    assert not settings.production
    assert settings.log_format == "auto"  # console on a terminal
    assert settings.reflection is True
    assert settings.auth.mode == "optional"
    assert settings.overrides == ()


def test_production_defaults() -> None:
    settings = Settings.from_env({"MESH_ENV": "production"})

    assert settings.production
    assert settings.log_format == "json"
    assert settings.reflection is False
    assert settings.auth.mode == "required"
    assert settings.overrides == ()  # MESH_ENV is the profile, not an override


def test_every_profile_sets_the_same_variables_to_valid_values() -> None:
    assert PROFILES["development"].keys() == PROFILES["production"].keys()
    for name in PROFILES:
        assert Settings.from_env({"MESH_ENV": name}).profile == name


def test_an_explicit_variable_wins_over_the_profile() -> None:
    settings = Settings.from_env(
        {
            "MESH_ENV": "production",
            "MESH_LOG_FORMAT": "console",
            "MESH_REFLECTION": "true",
            "MESH_AUTH": "off",
        }
    )

    assert settings.log_format == "console"
    assert settings.reflection is True
    assert settings.auth.mode == "off"
    assert settings.overrides == (  # by name
        Override("MESH_AUTH", "off"),
        Override("MESH_LOG_FORMAT", "console"),
        Override("MESH_REFLECTION", "true"),
    )


def test_a_variable_set_to_its_profile_default_is_no_override() -> None:
    settings = Settings.from_env(
        {"MESH_ENV": "production", "MESH_LOG_FORMAT": "JSON", "MESH_GRACE_SECONDS": "10"}
    )
    assert settings.overrides == ()


def test_development_overrides_are_named_against_development_defaults() -> None:
    settings = Settings.from_env({"MESH_REFLECTION": "false", "MESH_ADDRESS": "0.0.0.0:50051"})

    assert settings.reflection is False
    assert [o.name for o in settings.overrides] == ["MESH_ADDRESS", "MESH_REFLECTION"]


def test_secrets_are_overrides_by_name_only() -> None:
    settings = Settings.from_env(
        {
            "MESH_TOKEN": "tok-hunter2",
            "MESH_AUTH_JWT_SECRET": "jwt-hunter2" * 4,
            "MESH_DATABASE_URL": "postgresql+asyncpg://app:pw-hunter2@db/app",
            "MESH_REDIS_URL": "redis://:redis-hunter2@cache:6379/0",
        }
    )

    assert {o.name for o in settings.overrides} == {
        "MESH_TOKEN",
        "MESH_AUTH_JWT_SECRET",
        "MESH_DATABASE_URL",
        "MESH_REDIS_URL",
    }
    assert all(o.secret and o.value == "" for o in settings.overrides)
    assert "hunter2" not in repr(settings)


def test_an_unknown_profile_is_named() -> None:
    with pytest.raises(ConfigError, match="MESH_ENV='staging' is not valid: must be one of"):
        Settings.from_env({"MESH_ENV": "staging"})


def test_production_refuses_to_serve_without_an_identity_configuration() -> None:
    settings = Settings.from_env({"MESH_ENV": "production"})

    with pytest.raises(ConfigError) as caught:
        settings.check_serving()
    message = str(caught.value)
    assert message.startswith("MESH_AUTH=required (the production default) needs an identity")
    assert "MESH_AUTH_JWKS_URL" in message
    assert "MESH_TLS_CLIENT_AUTH" in message
    assert "MESH_AUTH=off" in message


@pytest.mark.parametrize(
    "env",
    [
        {"MESH_AUTH_JWT_SECRET": "s" * 32},
        {"MESH_AUTH_JWKS_URL": "https://id.example/.well-known/jwks.json"},
        {"MESH_AUTH": "off"},
        {"MESH_AUTH": "optional"},
    ],
)
def test_production_serves_with_identities_or_with_authentication_off_on_purpose(
    env: dict[str, str],
) -> None:
    Settings.from_env({"MESH_ENV": "production", **env}).check_serving()


def test_client_certificates_are_an_identity_configuration(tmp_path: Path) -> None:
    files = {}
    for name in ("ca", "cert", "key"):
        (tmp_path / f"{name}.pem").write_text("-")  # read at start only, not here
        files[f"MESH_TLS_{name.upper()}_FILE"] = str(tmp_path / f"{name}.pem")
    env = {"MESH_ENV": "production", "MESH_TLS_CLIENT_AUTH": "true", **files}
    Settings.from_env(env).check_serving()


def test_required_authentication_without_identities_is_refused_in_development_too() -> None:
    with pytest.raises(ConfigError, match=r"^MESH_AUTH=required needs an identity"):
        Settings.from_env({"MESH_AUTH": "required"}).check_serving()


def test_development_serves_without_identities() -> None:
    Settings.from_env({}).check_serving()


def test_the_address_option_is_an_override_in_place_of_the_variable() -> None:
    settings = Settings.from_env({"MESH_ADDRESS": "0.0.0.0:6000", "MESH_REFLECTION": "false"})

    chosen = _with_address(settings, "127.0.0.1:0")

    assert chosen.address == "127.0.0.1:0"
    assert chosen.overrides == (
        Override("MESH_ADDRESS", "127.0.0.1:0"),
        Override("MESH_REFLECTION", "false"),
    )
