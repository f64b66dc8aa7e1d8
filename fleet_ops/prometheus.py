"""Prometheus's HTTP API, read by the control node's tools (the autoscaler's signals, the checks of
the monitoring stack): instant queries and the scrape targets. Standard library only."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from dataclasses import dataclass


class PrometheusError(RuntimeError):
    """Prometheus did not answer, or answered with an error (its message kept)."""


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class Target:
    job: str
    address: str  # host:port scraped
    health: str  # "up", "down" or "unknown" (not scraped yet)
    labels: dict[str, str]
    last_error: str


@dataclass(frozen=True)
class Prometheus:
    url: str  # http://host:port
    timeout_s: float = 10.0

    def _get(self, path: str, params: dict[str, str]) -> object:
        address = f"{self.url.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(address, timeout=self.timeout_s) as answer:  # noqa: S310 (http from our config)
                body = json.load(answer)
        except urllib.error.HTTPError as error:
            body = json.load(error)  # a bad query: Prometheus says why in the same envelope
        except (OSError, ValueError) as error:
            raise PrometheusError(f"{self.url}: {error}") from error
        if body.get("status") != "success":
            raise PrometheusError(f"{self.url}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[Sample]:
        """An instant vector (a scalar comes back as one sample without labels)."""
        data = self._get("/api/v1/query", {"query": expr})
        assert isinstance(data, dict)
        if data["resultType"] == "scalar":
            return [Sample({}, float(data["result"][1]))]
        return [Sample(row["metric"], float(row["value"][1])) for row in data["result"]]

    def value(self, expr: str) -> float | None:
        """The one value of an expression that aggregates to a single series; None when it has none."""
        samples = self.query(expr)
        if len(samples) > 1:
            raise PrometheusError(f"{expr}: {len(samples)} series where one was expected")
        return samples[0].value if samples else None

    def targets(self) -> list[Target]:
        data = self._get("/api/v1/targets", {"state": "active"})
        assert isinstance(data, dict)
        return [
            Target(t["labels"]["job"], t["scrapeUrl"].split("/")[2], t["health"], t["labels"], t["lastError"])
            for t in data["activeTargets"]
        ]
