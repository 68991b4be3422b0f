"""Documents that are generated from the code stay equal to it."""

from __future__ import annotations

import re
from pathlib import Path

from core.settings import GROUPS, settings_table

REPO = Path(__file__).resolve().parents[2]


def test_readme_settings_table_is_the_generated_one() -> None:
    readme = (REPO / "README.md").read_text()
    match = re.search(r"<!-- settings-table:start -->\n(.*?)\n<!-- settings-table:end -->", readme, re.S)
    assert match, "README.md lost its settings-table markers"
    assert match.group(1) == settings_table(), "README settings table is stale: run `python -m core.settings`"


def test_every_setting_is_described() -> None:
    for group, cls in GROUPS.items():
        for name, field in cls.model_fields.items():
            assert field.description and len(field.description) > 8, f"{group}.{name} has no description"
