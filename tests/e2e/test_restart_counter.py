"""model_runtime_process_starts_total counts an instance's process starts across restarts (its state
folder keeps the count), so that a service manager restarting a dying process shows on a dashboard."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.server import RuntimeProcess, metric_value

pytestmark = pytest.mark.e2e


def test_the_start_count_survives_a_restart(demo_model: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    server = RuntimeProcess(demo_model, tmp_path, settings={"server": {"state_dir": str(state)}})
    seen = []
    for _ in range(2):
        server.start()
        try:
            seen.append(metric_value(server, "model_runtime_process_starts_total"))
        finally:
            assert server.stop() == 0
    assert seen == [1.0, 2.0]
