"""Every store test runs against both backends: memory, and a real redis-server (`any_store`, tests/conftest.py)."""

from __future__ import annotations

import pytest

from core.jobstore import JobStore


@pytest.fixture
def store(any_store: JobStore) -> JobStore:
    return any_store
