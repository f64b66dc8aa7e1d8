"""Run the Pulumi program (infra/__main__.py) with Pulumi's mocks, without the CLI or an AWS account:
the resources it registers (type, name, inputs, parent), its stack outputs and its log.

The configuration is an example stack's file (Pulumi.<stack>.yaml), optionally with overrides, loaded
with pulumi.runtime.set_all_config as the CLI would. The mocks answer the data sources the program
reads (zones, region, account, partition, the AMI) and give resources the outputs AWS would
(IDs, ARNs, DNS names); any other call fails, so a new data source cannot slip by untested.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import runpy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.settings import SETTINGS, get_root_resource
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from infra.config.errors import PROJECT
from infra.policy.rules import Resource

# tests/support/ -> the repository -> the Pulumi program.
INFRA = Path(__file__).resolve().parents[2] / "infra"
REGION = "us-east-1"
ACCOUNT = "123456789012"
ZONES = ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d"]
LOOKED_UP_AMI = "ami-0123456789abcdef0"


@dataclass
class Recorded:
    type: str
    name: str
    inputs: dict[str, Any]
    id: str
    state: dict[str, Any]
    urn: str = ""

    @property
    def props(self) -> dict[str, Any]:
        return {**self.inputs, **self.state, "id": self.id}

    @property
    def parent_type(self) -> str:
        """The type of the parent (the stack's for top-level resources), from the URN."""
        qualified = self.urn.split("::")[2] if self.urn.count("::") >= 3 else ""
        return qualified.split("$")[-2] if "$" in qualified else ""

    def policy_resource(self) -> Resource:
        return Resource(self.type, self.name, self.props, self.urn)


@dataclass
class ProgramRun:
    stack: str
    resources: list[Recorded]
    outputs: dict[str, Any]
    log: list[str] = field(default_factory=list)

    def of_type(self, type_: str) -> list[Recorded]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str) -> Recorded:
        found = self.of_type(type_)
        assert len(found) == 1, f"{len(found)} resources of type {type_}"
        return found[0]

    def named(self, name: str) -> Recorded:
        return next(r for r in self.resources if r.name == name)

    def policy_resources(self) -> list[Resource]:
        return [r.policy_resource() for r in self.resources]


class FleetMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[Recorded] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        inputs = dict(args.inputs)
        service = args.typ.split(":")[1].split("/")[0] if args.typ.startswith("aws:") else "custom"
        rid = f"{args.name}-id"
        state: dict[str, Any] = {"arn": f"arn:aws:{service}:{REGION}:{ACCOUNT}:{args.name}"}
        if "name" not in inputs and args.typ.startswith("aws:"):
            state["name"] = args.name  # Pulumi's auto-naming, without the random suffix
        if args.typ == "aws:s3/bucket:Bucket":
            rid = inputs.get("bucket") or re.sub(r"[^a-z0-9.-]", "-", args.name.lower())
            state.update(bucket=rid, arn=f"arn:aws:s3:::{rid}")
        elif args.typ == "aws:lb/loadBalancer:LoadBalancer":
            state.update(
                dnsName=f"{args.name}-1234567890.{REGION}.elb.amazonaws.com",
                arnSuffix=f"app/{args.name}/50dc6c495c0c9188",
            )
        elif args.typ == "aws:lb/targetGroup:TargetGroup":
            state.update(arnSuffix=f"targetgroup/{args.name}/73e2d6bc24d8a067")
        elif args.typ == "aws:ec2/launchTemplate:LaunchTemplate":
            rid = "lt-0abcdef1234567890"
            state.update(latestVersion=1, defaultVersion=1)
        self.resources.append(Recorded(args.typ, args.name, inputs, rid, state))
        return rid, {**inputs, **state}

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        kind, call = args.token, args.args
        if kind == "aws:index/getAvailabilityZones:getAvailabilityZones":
            return {"id": REGION, "names": ZONES, "zoneIds": [f"use1-az{i + 1}" for i in range(len(ZONES))]}
        if kind == "aws:index/getRegion:getRegion":
            return {"id": REGION, "region": REGION, "name": REGION, "endpoint": f"ec2.{REGION}.amazonaws.com"}
        if kind == "aws:index/getCallerIdentity:getCallerIdentity":
            return {
                "id": ACCOUNT,
                "accountId": ACCOUNT,
                "arn": f"arn:aws:iam::{ACCOUNT}:user/ci",
                "userId": "AIDACI",
            }
        if kind == "aws:index/getPartition:getPartition":
            return {
                "id": "aws",
                "partition": "aws",
                "dnsSuffix": "amazonaws.com",
                "reverseDnsPrefix": "com.amazonaws",
            }
        if kind == "aws:ec2/getAmi:getAmi":
            filters = {f["name"]: f["values"] for f in call.get("filters", [])}
            image = filters.get("image-id", [LOOKED_UP_AMI])[0]
            return {
                "id": image,
                "imageId": image,
                "architecture": "x86_64",
                "rootDeviceName": "/dev/sda1",
                "name": "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 24.04) 20261120",
                "ownerId": "898082745236",
            }
        raise NotImplementedError(f"the mocks do not answer {kind}: add it to tests/support/pulumi_mocks.py")


def stack_config(stack: str, overrides: dict[str, Any] | None = None) -> dict[str, str]:
    """Pulumi.<stack>.yaml's config as the CLI hands it to a program (objects as JSON). An override's
    key is `name` or `object.path.key` (model-runtime namespace); None removes it."""
    config = copy.deepcopy(yaml.safe_load((INFRA / f"Pulumi.{stack}.yaml").read_text())["config"])
    for key, value in (overrides or {}).items():
        top, *path = key.split(".")
        full = top if ":" in top else f"{PROJECT}:{top}"
        if not path:
            if value is None:
                config.pop(full, None)
            else:
                config[full] = value
            continue
        node = config.setdefault(full, {})
        for step in path[:-1]:
            node = node.setdefault(step, {})
        if value is None:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = value
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run_program(stack: str = "dev", overrides: dict[str, Any] | None = None) -> ProgramRun:
    """Run infra/__main__.py for a stack; raises what the program raises (e.g. a ConfigError)."""
    mocks = FleetMocks()
    monitor = MockMonitor(mocks)
    logger = logging.getLogger(f"pulumi_mocks.{stack}")
    logger.propagate = False
    collect = _Collect()
    logger.handlers = [collect]
    logger.setLevel(logging.INFO)
    SETTINGS.rpc_manager.clear()
    SETTINGS.outputs.clear()
    pulumi.runtime.set_mocks(
        mocks, project=PROJECT, stack=stack, preview=False, logger=logger, monitor=monitor
    )
    pulumi.runtime.set_all_config(stack_config(stack, overrides))
    _sync_await(run_pulumi_func(lambda: runpy.run_path(str(INFRA / "__main__.py"), run_name="__main__")))
    root = get_root_resource()
    outputs = {
        key: _sync_await(pulumi.Output.from_input(value).future()) for key, value in root.outputs.items()
    }
    urns = {}
    for urn in monitor.resources:
        _, _, qualified, name = urn.split("::", 3)
        urns[(qualified.split("$")[-1], name)] = urn
    for resource in mocks.resources:
        resource.urn = urns.get((resource.type, resource.name), "")
    return ProgramRun(stack, mocks.resources, outputs, collect.lines)
