"""The autoscaler as a long-running service: every `interval_s`, read the fleet's signals, decide, log
the decision with its inputs (one JSON line), export it on /metrics, and (unless dry_run) carry it out
with scale.yml under the fleet's lock.

Its configuration is one YAML file (the control_node role writes it):

    prometheus: http://127.0.0.1:9090
    runner: /var/lib/model-runtime/schedules/fleet-run
    playbook_args: []            # more ansible-playbook arguments for the scale runs
    interval_s: 15
    window_s: 60                 # the signals' averaging window
    metrics_address: 127.0.0.1   # where its own /metrics listens (port 0: not served)
    metrics_port: 9106
    dry_run: false
    policy: {min_replicas: 1, max_replicas: 4, capacity_per_replica: 16, ...}   # policy.Policy's fields
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from fleet_ops.autoscale.actuator import LOCK_HELD, ScaleRun
from fleet_ops.autoscale.policy import Decision, Memory, Policy, decide
from fleet_ops.autoscale.signals import read_signals
from fleet_ops.prometheus import Prometheus, PrometheusError

log = logging.getLogger("fleet_ops.autoscale")


class ConfigError(ValueError):
    """The configuration file is wrong; the message names the key."""


@dataclass(frozen=True)
class Config:
    prometheus: str
    runner: str
    policy: Policy
    playbook_args: tuple[str, ...] = ()
    interval_s: float = 15.0
    window_s: int = 60
    metrics_address: str = "127.0.0.1"
    metrics_port: int = 0
    dry_run: bool = False

    @classmethod
    def load(cls, path: Path) -> Config:
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"{path}: {error}") from error
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: not a mapping")
        return cls.from_dict(raw, str(path))

    @classmethod
    def from_dict(cls, raw: dict, where: str = "config") -> Config:
        known = {f.name for f in fields(cls)}
        for key in raw:
            if key not in known:
                raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
        for key in ("prometheus", "runner", "policy"):
            if key not in raw:
                raise ConfigError(f"{where}: {key} is required")
        policy = raw["policy"]
        if not isinstance(policy, dict):
            raise ConfigError(f"{where}: policy must be a mapping of policy.Policy's fields")
        policy_fields = {f.name for f in fields(Policy)}
        for key in policy:
            if key not in policy_fields:
                raise ConfigError(
                    f"{where}: unknown key policy.{key} (known: {', '.join(sorted(policy_fields))})"
                )
        try:
            return cls(
                **{
                    **raw,
                    "policy": Policy(**policy),
                    "playbook_args": tuple(str(a) for a in raw.get("playbook_args", ())),
                }
            )
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{where}: policy: {error}") from error


@dataclass
class Exported:
    """The decisions as Prometheus metrics (served on the configured port)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.replicas = Gauge(
            "fleet_autoscaler_replicas", "Serving replicas seen, and wanted", ["kind"], registry=r
        )
        self.signal = Gauge("fleet_autoscaler_signal", "The last reading, by signal", ["signal"], registry=r)
        self.decisions = Counter("fleet_autoscaler_decisions", "Decisions by action", ["action"], registry=r)
        self.runs = Counter("fleet_autoscaler_scale_runs", "scale.yml runs by result", ["result"], registry=r)
        self.errors = Counter(
            "fleet_autoscaler_reading_errors", "Readings that Prometheus failed", registry=r
        )
        self.dry_run = Gauge("fleet_autoscaler_dry_run", "1 when decisions are only printed", registry=r)

    def decision(self, decision: Decision) -> None:
        self.replicas.labels(kind="current").set(decision.replicas)
        self.replicas.labels(kind="wanted").set(decision.wanted)
        for name, value in decision.inputs.items():
            if value is not None:
                self.signal.labels(signal=name).set(value)
        self.decisions.labels(action=decision.action).inc()


class Autoscaler:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.prometheus = Prometheus(config.prometheus)
        self.act = ScaleRun(config.runner, config.playbook_args)
        self.memory = Memory()
        self.exported = Exported()
        self.exported.dry_run.set(1 if config.dry_run else 0)

    def step(self) -> Decision | None:
        """One reading, decision and (unless dry_run) action; None when Prometheus could not be read."""
        try:
            seen = read_signals(self.prometheus, self.config.window_s)
        except PrometheusError as error:
            self.exported.errors.inc()
            log.warning("no reading: %s", error)
            return None
        decision = decide(self.config.policy, seen, self.memory, time.monotonic())
        self.exported.decision(decision)
        record = {"decision": asdict(decision), "dry_run": self.config.dry_run}
        if decision.action != "hold" and not self.config.dry_run:
            code = self.act(decision.wanted)
            result = "done" if code == 0 else "lock-held" if code == LOCK_HELD else "failed"
            self.exported.runs.labels(result=result).inc()
            record["run"] = {"exit": code, "result": result}
            # A skipped run changed nothing; a failed one may have changed part of the fleet: cool
            # down after it as after a change, and read the fleet anew next time.
            if result != "lock-held":
                self.memory.last_change_s = time.monotonic()
        log.info(json.dumps(record, sort_keys=True))
        return decision

    def serve(self, stop: threading.Event, once: bool = False) -> None:
        if self.config.metrics_port:
            start_http_server(
                self.config.metrics_port, self.config.metrics_address, registry=self.exported.registry
            )
        while not stop.is_set():
            self.step()
            if once:
                return
            stop.wait(self.config.interval_s)


def main(config_path: str, dry_run: bool = False, once: bool = False, check: bool = False) -> int:
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = Config.load(Path(config_path))
    except ConfigError as error:
        print(f"autoscale: {error}", file=sys.stderr)
        return 2
    if check:
        return 0
    if dry_run:
        config = replace(config, dry_run=True)
    stop = threading.Event()
    # A stop lets a scale run in progress finish (the service manager's stop timeout allows for one).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    Autoscaler(config).serve(stop, once)
    return 0
