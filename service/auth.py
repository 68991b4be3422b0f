"""API keys: `Authorization: Bearer <key>`, each key mapped to a tenant and scopes; only hashes are kept.

Configuration: `FAE_API_KEYS=tenant:key[:scope+scope],...` and/or `FAE_API_KEYS_FILE` (the same entries,
comma- or newline-separated, `#` comments). Scopes: generate, finetune, admin (default generate+finetune).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from core.contract import JobKind
from core.logs import register_secret
from core.settings import GatewaySettings

SCOPES = frozenset({"generate", "finetune", "admin"})
DEFAULT_SCOPES = frozenset({"generate", "finetune"})
# Tenants name storage prefixes and Redis keys: a conservative charset.
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MIN_KEY_LENGTH = 8


class ApiKeyConfigError(ValueError):
    """A malformed key entry (the message never contains the key)."""


@dataclass(frozen=True)
class Principal:
    tenant: str
    scopes: frozenset[str]
    key_id: str  # a short hash prefix: safe to log, tells keys of one tenant apart

    def has(self, scope: str) -> bool:
        return scope in self.scopes

    def reads(self, kind: JobKind) -> bool:
        """Whether this key may see jobs of `kind`: those its scopes create."""
        return self.has(SCOPE_FOR_KIND[kind])


# The scope that creates (and so reads) each kind of job: `embed` jobs come from POST /v1/embeddings, a
# generate-scope route.
SCOPE_FOR_KIND = {JobKind.generate: "generate", JobKind.finetune: "finetune", JobKind.embed: "generate"}


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_entries(text: str, source: str) -> list[tuple[str, str, frozenset[str]]]:
    entries = []
    lines = (line.split("#", 1)[0] for line in text.splitlines())
    items = [item.strip() for line in lines for item in line.split(",")]
    for position, item in enumerate(filter(None, items), start=1):
        parts = item.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise ApiKeyConfigError(f"{source} entry {position} is not of the form tenant:key[:scope+scope]")
        tenant, key = parts[0].strip(), parts[1].strip()
        if not TENANT_PATTERN.match(tenant):
            raise ApiKeyConfigError(
                f"{source} entry {position}: tenant {tenant!r} must match {TENANT_PATTERN.pattern}"
            )
        if len(key) < MIN_KEY_LENGTH:
            raise ApiKeyConfigError(
                f"{source} entry {position}: keys need at least {MIN_KEY_LENGTH} characters"
            )
        scopes = (
            frozenset(s.strip() for s in parts[2].split("+") if s.strip())
            if len(parts) == 3
            else DEFAULT_SCOPES
        )
        unknown = scopes - SCOPES
        if unknown or not scopes:
            raise ApiKeyConfigError(
                f"{source} entry {position}: unknown scopes {sorted(unknown)}; use {'+'.join(sorted(SCOPES))}"
            )
        entries.append((tenant, key, scopes))
    return entries


class ApiKeyRegistry:
    def __init__(self, entries: list[tuple[str, str, frozenset[str]]]) -> None:
        # By SHA-256 digest (a later entry for the same key wins): a lookup's timing depends only on the
        # digest of the key presented, which tells an attacker nothing about the keys held.
        self._entries: dict[bytes, Principal] = {}
        for tenant, key, scopes in entries:
            digest = _digest(key)
            register_secret(key)
            self._entries[digest] = Principal(tenant, scopes, digest.hex()[:8])

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> ApiKeyRegistry:
        entries = parse_entries(settings.api_keys, "FAE_API_KEYS")
        if settings.api_keys_file is not None:
            text = Path(settings.api_keys_file).read_text()
            entries += parse_entries(text, "FAE_API_KEYS_FILE")
        return cls(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def authenticate(self, key: str) -> Principal | None:
        """The key's principal, or None."""
        return self._entries.get(_digest(key))
