"""docs/settings.md is generated from the settings model's field descriptions (scripts/settings_doc.py):
a settings change without regenerating the page fails here, and so does a field without a description."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from model_runtime.config import Settings
from scripts import settings_doc

pytestmark = pytest.mark.unit


def test_the_page_is_what_the_settings_model_says() -> None:
    assert settings_doc.PAGE.read_text() == settings_doc.render(Settings), (
        "docs/settings.md is stale: run python scripts/settings_doc.py"
    )


def test_every_key_has_a_row() -> None:
    page = settings_doc.render(Settings)
    for section, field in Settings.model_fields.items():
        for key, item in field.annotation.model_fields.items():
            assert f"| `{section}.{item.alias or key}` |" in page


def test_check_fails_on_a_stale_page_and_passes_once_rewritten(tmp_path: Path) -> None:
    page = tmp_path / "settings.md"
    page.write_text("# Settings\n\nan older page\n")
    assert settings_doc.main(["--check", "--out", str(page)]) == 1
    assert settings_doc.main(["--out", str(page)]) == 0
    assert settings_doc.main(["--check", "--out", str(page)]) == 0


class Group(BaseModel):
    limit: int = Field(default=3, gt=0)


class Undescribed(BaseModel):
    group: Group = Field(default=Group(), description="A group")


def test_a_field_without_a_description_is_refused() -> None:
    with pytest.raises(ValueError, match=r"group\.limit: no description"):
        settings_doc.render(Undescribed)
