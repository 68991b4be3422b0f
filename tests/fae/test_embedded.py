"""Embedded mode's settings are derived once from the environment's, never assigned at run time."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.settings import Settings
from fae.embedded import DEV_KEY_FILE, embedded_settings


def test_embedded_settings_are_a_derived_copy(tmp_path: Path) -> None:
    base = Settings().override(
        data_dir=tmp_path, storage_backend="s3", models="m=/models/m", api_keys="", port=8123
    )
    derived, key = embedded_settings(base)
    assert derived.storage.backend == "local" and base.storage.backend == "s3"
    assert derived.gateway.public_url == "http://127.0.0.1:8123" and base.gateway.public_url == ""
    assert key and derived.gateway.api_keys == f"dev:{key}:generate+finetune+admin"
    assert derived.catalog.models == "m=/models/m"  # a configured model is kept
    key_file = tmp_path / DEV_KEY_FILE
    assert key_file.read_text().strip() == key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    again, same_key = embedded_settings(base)
    assert same_key == key and again == derived  # reused, not remade
    with pytest.raises(ValidationError):
        derived.storage.backend = "s3"  # type: ignore[misc]


def test_configured_keys_get_no_development_key(tmp_path: Path) -> None:
    derived, key = embedded_settings(
        Settings().override(data_dir=tmp_path, models="m=/x", api_keys="a:k" * 4)
    )
    assert key is None and not (tmp_path / DEV_KEY_FILE).exists()
    assert derived.gateway.api_keys == "a:k" * 4


def test_override_refuses_unknown_names_and_invalid_values() -> None:
    with pytest.raises(ValueError, match="no setting FAE_NO_SUCH_THING"):
        Settings().override(no_such_thing=1)
    with pytest.raises(ValidationError, match="must be shorter than FAE_LEASE_S"):
        Settings().override(lease_s=1, heartbeat_s=5)
