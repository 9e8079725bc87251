"""Settings.from_env: defaults, every MESH_* variable, and errors that name the bad ones."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from core.config import Settings, StartPolicy
from core.errors import ConfigError

EVERY_VARIABLE = {
    "MESH_SERVICE_NAME": "projects",
    "MESH_ADDRESS": "0.0.0.0:6000",
    "MESH_DATA_DIR": "/srv/mesh",
    "MESH_GRACE_SECONDS": "2.5",
    "MESH_MAX_MESSAGE_BYTES": "1048576",
    "MESH_LOG_FORMAT": "json",
    "MESH_LOG_LEVEL": "debug",
    "MESH_HEALTH_INTERVAL_SECONDS": "1.5",
    "MESH_HEALTH_TIMEOUT_SECONDS": "0.5",
    "MESH_HEALTH_FAILURE_THRESHOLD": "3",
    "MESH_HEALTH_RECOVERY_THRESHOLD": "2",
    "MESH_START_ATTEMPTS": "5",
    "MESH_START_BASE_DELAY_SECONDS": "0.1",
    "MESH_START_MAX_DELAY_SECONDS": "3",
    "MESH_START_TIMEOUT_SECONDS": "20",
    "MESH_STOP_TIMEOUT_SECONDS": "4",
}


def test_an_empty_environment_gives_the_defaults() -> None:
    settings = Settings.from_env({})

    assert settings == Settings()
    assert settings.address == "127.0.0.1:50051"
    assert settings.data_dir == Path("var")
    assert settings.start_policy == StartPolicy()


def test_every_variable_is_parsed() -> None:
    settings = Settings.from_env(EVERY_VARIABLE)

    assert settings == Settings(
        service_name="projects",
        address="0.0.0.0:6000",
        data_dir=Path("/srv/mesh"),
        grace_seconds=2.5,
        max_message_bytes=1048576,
        log_format="json",
        log_level="debug",
        health_interval=1.5,
        health_timeout=0.5,
        health_failures=3,
        health_recoveries=2,
        start_policy=StartPolicy(
            attempts=5, base_delay=0.1, max_delay=3.0, start_timeout=20.0, stop_timeout=4.0
        ),
    )
    assert isinstance(settings.start_policy.attempts, int)


def test_values_are_trimmed_and_choices_are_case_insensitive() -> None:
    settings = Settings.from_env(
        {"MESH_GRACE_SECONDS": " 3 ", "MESH_LOG_LEVEL": "WARNING", "MESH_LOG_FORMAT": "Console"}
    )

    assert (settings.grace_seconds, settings.log_level, settings.log_format) == (
        3.0,
        "warning",
        "console",
    )


def test_an_empty_value_means_the_default() -> None:
    assert Settings.from_env({"MESH_ADDRESS": "", "MESH_START_ATTEMPTS": ""}) == Settings()


def test_zero_is_allowed_where_it_means_none() -> None:
    settings = Settings.from_env(
        {
            "MESH_GRACE_SECONDS": "0",
            "MESH_START_BASE_DELAY_SECONDS": "0",
            "MESH_ADDRESS": "127.0.0.1:0",
        }
    )

    assert settings.grace_seconds == 0.0
    assert settings.start_policy.base_delay == 0.0
    assert settings.address == "127.0.0.1:0"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MESH_GRACE_SECONDS", "abc"),
        ("MESH_GRACE_SECONDS", "-1"),
        ("MESH_ADDRESS", "nope"),
        ("MESH_ADDRESS", "127.0.0.1:65536"),
        ("MESH_START_ATTEMPTS", "-1"),
        ("MESH_START_ATTEMPTS", "1.5"),
        ("MESH_HEALTH_TIMEOUT_SECONDS", "nan"),
        ("MESH_LOG_LEVEL", "verbose"),
    ],
)
def test_a_malformed_value_raises_config_error_naming_the_variable(
    variable: str, value: str
) -> None:
    with pytest.raises(ConfigError, match=f"{variable}='{value}' is not valid"):
        Settings.from_env({variable: value})


def test_every_bad_value_is_named_at_once() -> None:
    env = {
        **EVERY_VARIABLE,
        "MESH_GRACE_SECONDS": "abc",
        "MESH_ADDRESS": "nope",
        "MESH_START_ATTEMPTS": "-1",
    }

    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)

    message = str(caught.value)
    for variable in ("MESH_GRACE_SECONDS", "MESH_ADDRESS", "MESH_START_ATTEMPTS"):
        assert variable in message
    assert "MESH_SERVICE_NAME" not in message
    assert "must be HOST:PORT" in message


def test_the_process_environment_is_read_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("MESH_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MESH_SERVICE_NAME", "tasks")

    assert Settings.from_env().service_name == "tasks"


def test_settings_are_immutable() -> None:
    settings = Settings()

    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.address = "0.0.0.0:1"  # type: ignore[misc]


def test_the_audit_retention_is_a_positive_number_of_days() -> None:
    assert Settings().audit_retention_days == 365.0
    assert Settings.from_env({"MESH_AUDIT_RETENTION_DAYS": "30"}).audit_retention_days == 30.0
    with pytest.raises(ConfigError, match="MESH_AUDIT_RETENTION_DAYS"):
        Settings.from_env({"MESH_AUDIT_RETENTION_DAYS": "0"})
