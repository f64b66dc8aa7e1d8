"""The `cycle:` line the rolling playbooks print and bench/upgrade.py reads back."""

from __future__ import annotations

import pytest

from fleet_ops.cycle import cycle_line, parse_cycles

pytestmark = pytest.mark.unit


def test_each_step_lasts_until_the_next_begins() -> None:
    started = {
        "drain": 100.0,
        "stop": 101.5,
        "install": 102.0,
        "ready": 102.25,
        "smoke": 110.0,
        "enable": 111.0,
    }
    line = cycle_line(started, "host-1", 112.5)
    assert line == (
        "cycle: host-1 drain 1.50s, stop 0.50s, install and start 0.25s, to ready 7.75s, smoke 1.00s, "
        "enable 1.50s, total 12.50s"
    )


def test_lines_parse_back_from_a_run_output() -> None:
    output = "\n".join(
        [
            "TASK [fleet_rollout : Show the cycle, step by step]",
            '    "msg": "' + cycle_line({"drain": 0.0, "stop": 2.0}, "a-1", 3.0) + '"',
            '    "msg": "' + cycle_line({"drain": 0.0, "ready": 4.0}, "b-2", 9.0) + '"',
        ]
    )
    assert parse_cycles(output) == {
        "a-1": {"drain": 2.0, "stop": 1.0, "total": 3.0},
        "b-2": {"drain": 4.0, "to ready": 5.0, "total": 9.0},
    }


def test_lines_folded_by_ansibles_yaml_results_parse_too() -> None:
    line = cycle_line({"drain": 0.0, "stop": 1.0, "install": 2.0, "ready": 3.0}, "localhost-3", 10.0)
    fold = line.rindex(" ", 0, 60)  # YAML folds a long string at a space
    folded = f"ok: [localhost] =>\n    msg: '{line[:fold]}\n        {line[fold + 1 :]}'\nTASK [next] total 1s"
    assert parse_cycles(folded) == {
        "localhost-3": {"drain": 1.0, "stop": 1.0, "install and start": 1.0, "to ready": 7.0, "total": 10.0}
    }
