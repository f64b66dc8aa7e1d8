"""The observability files against the real exporters: every metric the Grafana dashboard or the
Prometheus rules query is one that a real runtime server (after a request) or a real HAProxy (in front of
it, exporter on) exposes, or one the rules record; every query parses as PromQL; every panel has a
datasource and a target; the scrape config points where the roles put the endpoints."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from harness import REPO
from harness.dashboard import DASHBOARD, dashboard_queries
from harness.server import RuntimeProcess
from tests.support.haproxy import HAProxy

pytestmark = pytest.mark.e2e

DEPLOY = REPO / "deploy"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
RULES = DEPLOY / "prometheus" / "rules.yml"
# Series Prometheus writes itself for every target, never scraped.
SYNTHETIC = {"up"}
# The scheduled runs' runner writes its outcome for the node exporter's textfile collector (the local
# fleet's cron test reads it back through Prometheus): the families its `# TYPE` lines declare.
RUNNER = REPO / "roles" / "control_node" / "templates" / "fleet-run.sh.j2"


def runner_metrics() -> set[str]:
    return set(re.findall(r"^# TYPE (\S+) ", RUNNER.read_text(), re.MULTILINE))


def sample_names(text: str) -> set[str]:
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression, from its syntax tree (raises on invalid PromQL)."""
    names: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            names.add(node.name)
        elif isinstance(node, promql_parser.MatrixSelector):
            walk(node.vector_selector)
        elif isinstance(node, promql_parser.BinaryExpr):
            walk(node.lhs)
            walk(node.rhs)
        elif isinstance(node, promql_parser.Call):
            for arg in node.args:
                walk(arg)
        elif isinstance(node, promql_parser.AggregateExpr):
            walk(node.expr)
            if node.param is not None:
                walk(node.param)
        elif isinstance(node, promql_parser.ParenExpr | promql_parser.UnaryExpr | promql_parser.SubqueryExpr):
            walk(node.expr)

    walk(promql_parser.parse(expr))
    return names


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def recorded() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


@pytest.fixture(scope="module")
def runtime(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    server = RuntimeProcess(demo_model, tmp_path_factory.mktemp("dashboards"), name="demo").start()
    server.client().completions.create(model="demo", prompt="You may", max_tokens=4)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def runtime_metrics(runtime: RuntimeProcess) -> set[str]:
    scraped = httpx.get(f"{runtime.internal_url}/metrics")  # as a scraper does: no API key
    assert scraped.status_code == 200
    return sample_names(scraped.text)


@pytest.fixture(scope="module")
def haproxy_metrics(runtime: RuntimeProcess, tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """A real HAProxy in front of the runtime, its exporter served the way haproxy.cfg.j2 serves it."""
    with HAProxy(tmp_path_factory.mktemp("haproxy"), {"demo-1": runtime.port}, exporter=True) as haproxy:
        return sample_names(httpx.get(f"http://127.0.0.1:{haproxy.stats_port}/metrics", timeout=5).text)


def test_the_dashboard_is_grafana_json_with_a_source_and_a_target_per_panel() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert panels
    assert len({p["id"] for p in panels}) == len(panels)
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval", "__interval"}
            assert used <= variables, (panel["title"], used - variables)
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_every_query_and_rule_is_valid_promql() -> None:
    for where, expr in dashboard_queries().items():
        try:
            metric_names(expr)
        except Exception as exc:  # promql_parser raises its own errors, not a public class
            pytest.fail(f"{where}: {exc}\n{expr}")
    for rule in rules():
        metric_names(rule["expr"])


def test_every_metric_the_dashboard_queries_is_exported(
    runtime_metrics: set[str], haproxy_metrics: set[str]
) -> None:
    known = runtime_metrics | haproxy_metrics | recorded() | SYNTHETIC
    for where, expr in dashboard_queries().items():
        unknown = metric_names(expr) - known
        assert not unknown, f"{where}: {sorted(unknown)} are not exported"


def test_every_metric_the_rules_read_is_exported(
    runtime_metrics: set[str], haproxy_metrics: set[str]
) -> None:
    known = runtime_metrics | haproxy_metrics | recorded() | runner_metrics() | SYNTHETIC
    assert "model_runtime_scheduled_run_exit_code" in runner_metrics()
    for rule in rules():
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, f"{rule.get('record') or rule.get('alert')}: {sorted(unknown)} are not exported"


def test_the_dashboard_covers_the_runtime_and_the_balancer(
    runtime_metrics: set[str], haproxy_metrics: set[str]
) -> None:
    queried = set().union(*(metric_names(e) for e in dashboard_queries().values()))
    assert len(queried & runtime_metrics) >= 10, sorted(queried & runtime_metrics)
    assert {"haproxy_server_status", "haproxy_server_current_sessions"} <= queried & haproxy_metrics


def test_the_scrape_config_points_where_the_roles_serve_metrics() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert [Path(PROMETHEUS.parent / f) for f in config["rule_files"]] == [RULES]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"model-runtime", "haproxy"}
    defaults = {
        role: yaml.safe_load((REPO / "roles" / role / "defaults" / "main.yml").read_text())
        for role in ("model_runtime", "loadbalancer")
    }
    template = (REPO / "roles" / "loadbalancer" / "templates" / "haproxy.cfg.j2").read_text()
    assert "use-service prometheus-exporter if { path /metrics }" in template
    for name, job in jobs.items():
        assert job["metrics_path"] == "/metrics"
        groups = [
            group
            for sd in job["file_sd_configs"]
            for path in sd["files"]
            for group in yaml.safe_load((PROMETHEUS.parent / path).read_text())
        ]
        ports = {int(t.rsplit(":", 1)[1]) for group in groups for t in group["targets"]}
        assert ports, name
        if name == "haproxy":
            assert ports == {defaults["loadbalancer"]["loadbalancer_stats_port"]}
        else:  # each instance's internal listener, never its API port
            assert min(ports) == defaults["model_runtime"]["model_runtime_metrics_base_port"]
