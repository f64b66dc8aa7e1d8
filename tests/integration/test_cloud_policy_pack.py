"""The policy pack as the Pulumi CLI runs it (`pulumi preview --policy-pack infra/policy`): its own
virtualenv from requirements.txt, `python infra/policy/__main__.py` serving pulumi_policy's analyzer,
and the engine's gRPC calls (GetAnalyzerInfo, Analyze per resource, AnalyzeStack) with the resources
the program registers under mocks. The pack must find what rules.py finds, no more, no less.

The pack's venv is apart from the repository's: pulumi-policy pins a protobuf that onnx cannot share.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2, json_format, struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc

from harness import REPO
from infra.policy import rules
from infra.policy.rules import Resource, check_resource, check_stack
from tests.support.pulumi_mocks import run_program

# pulumi_aws warns, as it loads, about resource types this program does not use.
pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning:pulumi_aws")]

PACK = REPO / "infra" / "policy"
UNKNOWN_STRING = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"  # the engine's marker of a value unknown in a preview
UNKNOWN_OBJECT = "dd056dcd-154b-4c76-9bd3-c8f88648b5ff"


@pytest.fixture(scope="module")
def pack_python() -> Path:
    """The pack's virtualenv, made as the CLI makes it (kept in .cache, per requirements.txt)."""
    requirements = (PACK / "requirements.txt").read_bytes()
    venv = REPO / ".cache" / f"policy-pack-venv-{hashlib.sha256(requirements).hexdigest()[:10]}"
    if not (venv / ".complete").is_file():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [
                str(venv / "bin/python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "-r",
                str(PACK / "requirements.txt"),
            ],
            check=True,
            timeout=900,
        )
        (venv / ".complete").write_text(requirements.decode())
    return venv / "bin/python"


@pytest.fixture(scope="module")
def analyzer(pack_python: Path) -> Iterator[analyzer_pb2_grpc.AnalyzerStub]:
    process = subprocess.Popen(
        [str(pack_python), str(PACK / "__main__.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = process.stdout.readline().strip()  # the analyzer announces its port, as to the CLI
        assert port.isdigit(), process.stderr.read() if process.poll() is not None else port
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield analyzer_pb2_grpc.AnalyzerStub(channel)
    finally:
        process.kill()
        process.wait(10)


def struct(props: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    json_format.ParseDict(json.loads(json.dumps(props)), message)
    return message


def analyze(stub: analyzer_pb2_grpc.AnalyzerStub, resource: Resource) -> list[tuple[str, str]]:
    reply = stub.Analyze(
        analyzer_pb2.AnalyzeRequest(
            type=resource.type,
            properties=struct(dict(resource.props)),
            urn=resource.urn or f"urn:x::{resource.name}",
            name=resource.name,
        )
    )
    return [(d.policyName, d.message.split("\n", 1)[-1]) for d in reply.diagnostics]


def analyze_stack(
    stub: analyzer_pb2_grpc.AnalyzerStub, resources: list[Resource]
) -> list[tuple[str, str, str]]:
    reply = stub.AnalyzeStack(
        analyzer_pb2.AnalyzeStackRequest(
            resources=[
                analyzer_pb2.AnalyzerResource(
                    type=r.type,
                    properties=struct(dict(r.props)),
                    urn=r.urn,
                    name=r.name,
                    dependencies=sorted(r.dependencies),
                )
                for r in resources
            ]
        )
    )
    return [(d.policyName, d.urn, d.message.split("\n", 1)[-1]) for d in reply.diagnostics]


def test_the_pack_offers_every_rule_as_a_mandatory_policy(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    info = analyzer.GetAnalyzerInfo(empty_pb2.Empty())
    assert info.name == "model-runtime-fleet"
    names = [p.name for p in info.policies]
    assert names == [r.name for r in rules.RESOURCE_RULES] + [r.name for r in rules.STACK_RULES]
    assert {p.enforcementLevel for p in info.policies} == {analyzer_pb2.MANDATORY}


def test_the_pack_finds_what_the_rules_find_in_each_resource(
    analyzer: analyzer_pb2_grpc.AnalyzerStub,
) -> None:
    resources = run_program("prod").policy_resources()
    assert all(analyze(analyzer, r) == [] for r in resources)
    template = next(r for r in resources if r.type == rules.LAUNCH_TEMPLATE)
    props = json.loads(json.dumps(dict(template.props)))
    props["metadataOptions"]["httpTokens"] = "optional"
    props["blockDeviceMappings"][0]["ebs"]["encrypted"] = "false"
    bad = [
        Resource(template.type, template.name, props, template.urn),
        Resource(
            rules.INGRESS_RULE,
            "ssh",
            {"ipProtocol": "tcp", "fromPort": 22, "toPort": 22, "cidrIpv4": "0.0.0.0/0"},
        ),
        Resource(
            rules.SECURITY_GROUP,
            "halves",
            {
                "ingress": [
                    {
                        "protocol": "-1",
                        "cidrBlocks": ["0.0.0.0/1", "128.0.0.0/1"],
                        "ipv6CidrBlocks": ["0::/0"],
                    }
                ]
            },
        ),
        Resource(rules.GROUP, "one-zone", {"vpcZoneIdentifiers": ["subnet-1"], "healthCheckType": "ELB"}),
        Resource("aws:lb/targetGroup:TargetGroup", "tg", {"healthCheck": {"enabled": True, "path": "/"}}),
        Resource(
            "aws:lb/listener:Listener",
            "open",
            {"defaultActions": [{"type": "forward", "targetGroupArn": "tg"}]},
        ),
    ]
    for resource in bad:
        expected = sorted((v.policy, v.message) for v in check_resource(resource))
        assert expected, resource.name
        assert sorted(analyze(analyzer, resource)) == expected


def test_the_pack_finds_what_the_rules_find_across_the_stack(
    analyzer: analyzer_pb2_grpc.AnalyzerStub,
) -> None:
    resources = run_program("prod").policy_resources()
    assert analyze_stack(analyzer, resources) == []
    unencrypted = [r for r in resources if r.type not in rules.BUCKET_ENCRYPTION]
    expected = [(v.policy, v.urn, v.message) for v in check_stack(unencrypted)]
    assert [e[0] for e in expected] == ["buckets-encrypted"]
    assert analyze_stack(analyzer, unencrypted) == expected


def test_a_preview_with_unknown_values_is_not_a_violation(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    # A new stack's preview: the launch template's options and the bucket's name are not known yet.
    template = Resource(
        rules.LAUNCH_TEMPLATE, "lt", {"metadataOptions": UNKNOWN_OBJECT, "blockDeviceMappings": []}
    )
    assert analyze(analyzer, template) == []
    # A listener's actions and a rule's source network, not known yet.
    assert (
        analyze(analyzer, Resource("aws:lb/listener:Listener", "l", {"defaultActions": UNKNOWN_OBJECT})) == []
    )
    ingress = {"protocol": "tcp", "fromPort": 22, "toPort": 22, "cidrBlocks": [UNKNOWN_STRING]}
    assert analyze(analyzer, Resource(rules.SECURITY_GROUP, "sg", {"ingress": [ingress]})) == []
    bucket = Resource(
        "aws:s3/bucket:Bucket", "b", {"bucket": UNKNOWN_STRING, "arn": UNKNOWN_STRING}, "urn:p::b"
    )
    dependents = [
        Resource(
            type_,
            f"b-{index}",
            {"bucket": UNKNOWN_STRING, **props},
            f"urn:p::b-{index}",
            frozenset({"urn:p::b"}),
        )
        for index, (type_, props) in enumerate(
            [
                (
                    next(iter(rules.BUCKET_ENCRYPTION)),
                    {"rules": [{"applyServerSideEncryptionByDefault": {"sseAlgorithm": "AES256"}}]},
                ),
                (
                    rules.PUBLIC_ACCESS_BLOCK,
                    dict.fromkeys(
                        ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"),
                        True,
                    ),
                ),
                (rules.BUCKET_POLICY, {"policy": UNKNOWN_STRING}),
            ]
        )
    ]
    # The dependencies say which bucket each configuration is for, when its ID is not known yet.
    assert analyze_stack(analyzer, [bucket, *dependents]) == []
    assert [d[0] for d in analyze_stack(analyzer, [bucket, *dependents[1:]])] == ["buckets-encrypted"]
