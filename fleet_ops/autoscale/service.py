"""The autoscaler as a long-running service: every `interval_s`, read the fleet's signals, decide, log
the decision with its inputs (one JSON line), export it on /metrics, and (unless dry_run) carry it out
with scale.yml under the fleet's lock.

Its configuration is one YAML file (the control_node role writes it):

    prometheus: http://127.0.0.1:9090
    runner: /var/lib/model-runtime/schedules/fleet-run
    playbook_args: []            # more ansible-playbook arguments for the scale runs
    model: ""                    # in a fleet of several models, the one it scales
    interval_s: 15
    window_s: 60                 # the signals' averaging window
    metrics_address: 127.0.0.1   # where its own /metrics listens (port 0: not served)
    metrics_port: 9106
    dry_run: false
    policy: {min_replicas: 1, max_replicas: 4, capacity_per_replica: 16, ...}   # policy.Policy's fields
    burst:                       # optional: the cloud group behind the metal load balancers
      stack_outputs: /etc/model-runtime/cloud-outputs.json   # `pulumi stack output --json` of the stack
      region: us-east-1
      endpoint_url: null         # the AWS API's address, where not the public one (a VPC endpoint)
      backend: burst             # the load balancers' burst backend (loadbalancer_burst_backend_name)
      policy: {capacity_per_instance: 16, ...}                # policy.BurstPolicy's fields

One file, then, names the metal fleet (the runner runs its inventory's playbooks), the cloud stack's
outputs and every threshold.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TypeVar

import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from fleet_ops.autoscale.actuator import LOCK_HELD, CloudBurst, Runner, ScaleRun
from fleet_ops.autoscale.policy import BurstPolicy, Decision, Memory, Policy, decide, decide_burst
from fleet_ops.autoscale.signals import read_signals
from fleet_ops.cloud_scale import CloudError, autoscaling_client
from fleet_ops.prometheus import Prometheus, PrometheusError

log = logging.getLogger("fleet_ops.autoscale")


class ConfigError(ValueError):
    """The configuration file is wrong; the message names the key."""


PolicyT = TypeVar("PolicyT", Policy, BurstPolicy)


def _known_keys(raw: dict, known: set[str], where: str, prefix: str = "") -> None:
    for key in raw:
        if key not in known:
            raise ConfigError(f"{where}: unknown key {prefix + key!r} (known: {', '.join(sorted(known))})")


def _policy(cls: type[PolicyT], raw: object, where: str, key: str) -> PolicyT:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {key} must be a mapping of {cls.__name__}'s fields")
    _known_keys(raw, {f.name for f in fields(cls)}, where, f"{key}.")
    try:
        return cls(**raw)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: {key}: {error}") from error


@dataclass(frozen=True)
class BurstConfig:
    """The cloud group behind the metal load balancers, from the stack's outputs."""

    group: str
    policy: BurstPolicy
    region: str | None = None
    endpoint_url: str | None = None
    backend: str = "burst"

    @classmethod
    def from_dict(cls, raw: object, where: str) -> BurstConfig:
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: burst must be a mapping")
        _known_keys(raw, {"stack_outputs", "region", "endpoint_url", "backend", "policy"}, where, "burst.")
        for key in ("stack_outputs", "policy"):
            if key not in raw:
                raise ConfigError(f"{where}: burst.{key} is required")
        try:
            outputs = json.loads(Path(raw["stack_outputs"]).read_text())
        except (OSError, ValueError) as error:
            raise ConfigError(f"{where}: burst.stack_outputs: {error}") from error
        group = outputs.get("autoscalingGroupName") if isinstance(outputs, dict) else None
        if not isinstance(group, str) or not group:
            raise ConfigError(
                f"{where}: burst.stack_outputs: no autoscalingGroupName in {raw['stack_outputs']}"
            )
        policy = _policy(BurstPolicy, raw["policy"], where, "burst.policy")
        return cls(
            group=group,
            policy=policy,
            region=raw.get("region"),
            endpoint_url=raw.get("endpoint_url"),
            backend=str(raw.get("backend", "burst")),
        )


@dataclass(frozen=True)
class Config:
    prometheus: str
    runner: str
    policy: Policy
    playbook_args: tuple[str, ...] = ()
    model: str = ""
    interval_s: float = 15.0
    window_s: int = 60
    metrics_address: str = "127.0.0.1"
    metrics_port: int = 0
    dry_run: bool = False
    burst: BurstConfig | None = None

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
        _known_keys(raw, {f.name for f in fields(cls)}, where)
        for key in ("prometheus", "runner", "policy"):
            if key not in raw:
                raise ConfigError(f"{where}: {key} is required")
        policy = _policy(Policy, raw["policy"], where, "policy")
        burst = raw.get("burst")
        try:
            return cls(
                **{
                    **raw,
                    "policy": policy,
                    "playbook_args": tuple(str(a) for a in raw.get("playbook_args", ())),
                    "burst": None if burst is None else BurstConfig.from_dict(burst, where),
                }
            )
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{where}: {error}") from error


@dataclass
class Exported:
    """The decisions as Prometheus metrics (served on the configured port), by target: metal (replicas)
    or cloud (the burst group's instances)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.replicas = Gauge(
            "fleet_autoscaler_replicas", "Replicas (metal) or instances (cloud) seen, and wanted",
            ["target", "kind"], registry=r,
        )  # fmt: skip
        self.signal = Gauge("fleet_autoscaler_signal", "The last reading, by signal", ["signal"], registry=r)
        self.decisions = Counter(
            "fleet_autoscaler_decisions", "Decisions by target and action", ["target", "action"], registry=r
        )
        self.runs = Counter(
            "fleet_autoscaler_scale_runs", "Scale runs by target and result", ["target", "result"], registry=r
        )
        self.errors = Counter(
            "fleet_autoscaler_reading_errors", "Readings that Prometheus or AWS failed", registry=r
        )
        self.dry_run = Gauge("fleet_autoscaler_dry_run", "1 when decisions are only printed", registry=r)

    def decision(self, target: str, decision: Decision) -> None:
        self.replicas.labels(target=target, kind="current").set(decision.replicas)
        self.replicas.labels(target=target, kind="wanted").set(decision.wanted)
        for name, value in decision.inputs.items():
            if value is not None:
                self.signal.labels(signal=name).set(value)
        self.decisions.labels(target=target, action=decision.action).inc()


class Autoscaler:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.prometheus = Prometheus(config.prometheus)
        scaled = ("-e", f"model={config.model}") if config.model else ()
        runner = Runner(config.runner, (*config.playbook_args, *scaled))
        self.scale_metal = ScaleRun(runner)
        self.memory = Memory()
        self.burst = config.burst
        if self.burst:
            client = autoscaling_client(self.burst.region, self.burst.endpoint_url)
            self.scale_cloud = CloudBurst(runner, self.burst.group, client)
            self.cloud_memory = Memory()
        self.exported = Exported()
        self.exported.dry_run.set(1 if config.dry_run else 0)

    def step(self) -> Decision | None:
        """One reading and decision, carried out unless dry_run: metal's first; the cloud's (with a
        burst group) when metal holds. The decision acted on (or metal's hold); None when Prometheus or
        AWS could not be read."""
        now = time.monotonic
        try:
            seen = read_signals(
                self.prometheus,
                self.config.window_s,
                self.burst.backend if self.burst else None,
                self.config.model or None,
            )
            cloud = self.scale_cloud.size() if self.burst else None
        except (PrometheusError, CloudError) as error:
            self.exported.errors.inc()
            log.warning("no reading: %s", error)
            return None
        decision = decide(self.config.policy, seen, self.memory, now())
        if decision.action == "in" and cloud and cloud.desired > cloud.min_size:
            decision = replace(
                decision, action="hold", wanted=decision.replicas,
                reason=f"{decision.reason}; the cloud drains first ({cloud.desired} instances)",
            )  # fmt: skip
        self._carry_out("metal", decision, self.memory, lambda: self.scale_metal(decision.wanted))
        if decision.action != "hold" or not self.burst or not cloud:
            return decision
        burst = decide_burst(self.config.policy, self.burst.policy, seen, cloud, self.cloud_memory, now())
        self._carry_out(
            "cloud", burst, self.cloud_memory, lambda: self.scale_cloud(burst.wanted, cloud.desired)
        )
        return burst if burst.action != "hold" else decision

    def _carry_out(self, target: str, decision: Decision, memory: Memory, act: Callable[[], int]) -> None:
        self.exported.decision(target, decision)
        record: dict = {"target": target, "decision": asdict(decision), "dry_run": self.config.dry_run}
        if decision.action != "hold" and not self.config.dry_run:
            code = act()
            result = "done" if code == 0 else "lock-held" if code == LOCK_HELD else "failed"
            self.exported.runs.labels(target=target, result=result).inc()
            record["run"] = {"exit": code, "result": result}
            # A skipped run changed nothing; a failed one may have changed part of the fleet: cool
            # down after it as after a change, and read the fleet anew next time.
            if result != "lock-held":
                memory.last_change_s = time.monotonic()
        log.info(json.dumps(record, sort_keys=True))

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
