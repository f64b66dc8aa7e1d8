"""The Grafana dashboard's PromQL, as the tests read it: its panels' queries and its variables'
(shared by the dashboard's file checks and the local fleet's check against a real Prometheus)."""

from __future__ import annotations

import json
import re

from harness import REPO

DASHBOARD = REPO / "deploy" / "grafana" / "model-runtime.json"


def as_promql(grafana_expr: str, all_values: bool = False) -> str:
    """Grafana's range variables become a duration. The dashboard's own variables stay strings inside
    their label matchers, or, with all_values, become what Grafana sends for "All" (their allValue,
    ".*"), which a real Prometheus can answer."""
    expr = re.sub(r"\$__(rate_)?interval|\$__range", "5m", grafana_expr)
    if all_values:
        expr = re.sub(r"\$\{?[a-z_]+\}?", ".*", expr)
    return expr


def dashboard_queries(all_values: bool = False) -> dict[str, str]:
    """Every PromQL expression of the dashboard: panel targets and variable queries (the metric of
    label_values(metric, label))."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = {
        f"{panel['title']} {target['refId']}": as_promql(target["expr"], all_values)
        for panel in dashboard["panels"]
        for target in panel["targets"]
    }
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["query"]["query"])
            assert match, f"variable {variable['name']}: not a label_values() query"
            queries[f"${variable['name']}"] = match.group(1)
    return queries
