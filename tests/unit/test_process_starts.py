"""The count of an instance's process starts, kept in its state folder across restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_runtime.config import ConfigError
from model_runtime.server.starts import STARTS_FILE, count_start

pytestmark = pytest.mark.unit


def test_each_start_adds_one_to_the_count_kept_in_the_state_folder(tmp_path: Path) -> None:
    assert [count_start(tmp_path) for _ in range(3)] == [1, 2, 3]
    assert (tmp_path / STARTS_FILE).read_text() == "3\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [STARTS_FILE]  # no partial file left


def test_without_a_state_folder_a_process_counts_only_itself() -> None:
    assert count_start(None) == 1


def test_a_file_that_holds_no_count_starts_the_count_again(tmp_path: Path) -> None:
    (tmp_path / STARTS_FILE).write_text("not a number\n")
    assert count_start(tmp_path) == 1


@pytest.mark.parametrize("problem", ["missing", "a file"])
def test_a_state_folder_it_cannot_use_is_an_error_naming_the_setting(tmp_path: Path, problem: str) -> None:
    state = tmp_path / "state"
    if problem == "a file":
        state.write_text("")
    with pytest.raises(ConfigError, match=r"^server\.state_dir: cannot (read|write) "):
        count_start(state)
