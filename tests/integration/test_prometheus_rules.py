"""deploy/prometheus/rules.yml checked and its alerts' unit tests (rules_test.yml) run by Prometheus's
own promtool (apt package prometheus): a crash-looping replica raises ModelRuntimeRestarting, more than
1% of 5xx (and no count of 4xx) raises ModelRuntimeServerErrors, and a queue that waits while the
replica refuses (429) raises ModelRuntimeQueueBacklog, a queue or refusals alone do not."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from harness import REPO

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed"),
]

PROMETHEUS = REPO / "deploy" / "prometheus"


@pytest.mark.parametrize("check", [["check", "rules", "rules.yml"], ["test", "rules", "rules_test.yml"]])
def test_promtool_accepts_the_rules_and_their_tests(check: list[str]) -> None:
    done = subprocess.run(["promtool", *check], cwd=PROMETHEUS, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
