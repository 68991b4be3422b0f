"""API key configuration and lookup."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import Settings
from service.auth import ApiKeyConfigError, ApiKeyRegistry, parse_entries


def test_entries_from_env_and_file(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(
        "# one per line\nglobex:globex-key-1:admin\n\ninitech:initech-key-1:generate+finetune, x:xkey-12345\n"
    )
    registry = ApiKeyRegistry.from_settings(
        Settings()
        .override(api_keys="acme:acme-key-123, acme:acme-key-456:generate", api_keys_file=key_file)
        .gateway
    )
    assert len(registry) == 5
    acme = registry.authenticate("acme-key-123")
    assert acme.tenant == "acme" and acme.scopes == {"generate", "finetune"}
    limited = registry.authenticate("acme-key-456")
    assert limited.scopes == {"generate"} and limited.key_id != acme.key_id
    assert registry.authenticate("globex-key-1").scopes == {"admin"}
    assert registry.authenticate("xkey-12345").tenant == "x"
    assert registry.authenticate("acme-key-12") is None
    assert registry.authenticate("") is None


def test_registry_keeps_only_hashes() -> None:
    registry = ApiKeyRegistry.from_settings(Settings().override(api_keys="acme:plaintext-key-1").gateway)
    assert "plaintext-key-1" not in repr(registry.__dict__)


@pytest.mark.parametrize(
    "entry",
    [
        "acme",
        "acme:",
        ":key-12345",
        "acme:short",
        "bad tenant:key-12345",
        "../x:key-12345",
        "acme:key-12345:root",
        "a:b:c:d",
    ],
)
def test_malformed_entries_fail_without_echoing_the_key(entry: str) -> None:
    with pytest.raises(ApiKeyConfigError) as raised:
        parse_entries(entry, "FAE_API_KEYS")
    assert "key-12345" not in str(raised.value)
