"""The cloud boot path, for real on this machine: the user data the Pulumi program renders for the dev
stack, its boot script and configuration taken out of it as cloud-init would write them, run against
moto's server (S3 and SSM on loopback) with the runtime bundle and the demo model (pushed to the
registry) in the artifact bucket and the API key in Parameter Store. The instance must come up
serving: /health/ready, then one chat completion with the official openai client. stop.yml stops
what it started.

Where this machine is not an EC2 instance, the boot configuration says so (and only there): a prefix
under a temporary folder, supervisord instead of systemd, no system user, loopback for the private
address.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import boto3
import httpx
import openai
import pytest
import yaml

from harness import REPO
from harness.fleet import running_under
from harness.playbooks import ensure_wheelhouse, playbook
from harness.server import free_port
from infra.boot import sha256_file
from infra.userdata import BOOT_CONFIG_PATH, BOOT_SCRIPT_PATH, bundle_name
from model_runtime.registry.registry import Registry
from tests.support.pulumi_mocks import run_program
from tests.support.s3 import make_bucket, s3_server

# pulumi_aws warns, as it loads, about resource types this program does not use.
pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning:pulumi_aws")]

API_KEY = "cloud-boot-test-key-4f1c"


def written_files(user_data: str) -> dict[str, bytes]:
    """What cloud-init's write_files would write: path -> bytes (decoding gz+b64)."""
    document = yaml.safe_load(user_data)
    files = {}
    for entry in document["write_files"]:
        content = entry["content"].encode()
        if entry.get("encoding") == "gz+b64":
            content = gzip.decompress(base64.b64decode(content))
        files[entry["path"]] = content
    return files


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wheelhouse = ensure_wheelhouse()
    out = tmp_path_factory.mktemp("bundles")
    subprocess.run(
        [
            sys.executable,
            str(REPO / "infra" / "bundle.py"),
            "--wheelhouse",
            str(wheelhouse),
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    return next(out.glob("model-runtime-bundle-*.tar.gz"))


@pytest.fixture(scope="module")
def cloud(bundle: Path, demo_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """moto with the dev stack's bucket (the bundle, the demo model in the registry) and its key."""
    version = bundle.name.removeprefix("model-runtime-bundle-").removesuffix(".tar.gz")
    digest = sha256_file(bundle)
    with s3_server() as endpoint:
        program = run_program("dev", {"runtimeVersion": version, "runtimeBundleSha256": digest})
        bucket = program.outputs["bucketName"]
        make_bucket(bucket)
        boto3.client("s3").upload_file(str(bundle), bucket, f"bundles/{bundle_name(version)}")
        registry = Registry.open(program.outputs["registryUrl"])
        pushed = registry.push("demo", demo_model, source="test")
        registry.promote("demo", pushed["version"], "stable")
        parameter = "/model-runtime/dev/api-keys"
        boto3.client("ssm").put_parameter(
            Name=parameter, Type="SecureString", Value=f"# the fleet's key\n{API_KEY}\n"
        )
        user_data = base64.b64decode(
            program.one("aws:ec2/launchTemplate:LaunchTemplate").inputs["userData"]
        ).decode()
        yield {
            "endpoint": endpoint,
            "user_data": user_data,
            "model_version": pushed["version"],
            "runtime_version": version,
            "workdir": tmp_path_factory.mktemp("cloud"),
        }


def instance_files(cloud: dict, name: str, **changes: object) -> tuple[Path, Path, dict]:
    """The boot script and configuration out of the user data, adapted to this machine."""
    files = written_files(cloud["user_data"])
    root = cloud["workdir"] / name
    root.mkdir()
    script = root / "boot.py"
    script.write_bytes(files[BOOT_SCRIPT_PATH])
    config = json.loads(files[BOOT_CONFIG_PATH])
    config["prefix"] = str(root / "fs")
    config["vars"].update(
        model_runtime_service_manager="supervisord",  # no systemd in this container
        model_runtime_manage_user=False,  # no system user made on this machine
        model_runtime_listen_address="127.0.0.1",  # no VPC: loopback stands for the private address
        model_runtime_base_port=free_port(),
        model_runtime_ready_timeout_s=300,
        cloud_metrics_python=sys.executable,  # this machine's python3 has no boto3 (an instance's has)
        cloud_metrics_interval_s=10,  # the shortest the role allows: the test waits for two data points
    )
    config.update(changes)
    config_file = root / "boot.json"
    config_file.write_text(json.dumps(config, indent=2))
    return script, config_file, config


def boot(script: Path, config_file: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(script), str(config_file)],
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.fixture(scope="module")
def instance(cloud: dict):
    script, config_file, config = instance_files(cloud, "instance")
    prefix = Path(config["prefix"])
    started = time.monotonic()
    done = boot(script, config_file)
    yield {"done": done, "config": config, "prefix": prefix, "seconds": time.monotonic() - started}
    inventory = prefix.parent / "inventory.yml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "children": {"gpu_servers": {"hosts": {"localhost": {}}}, "loadbalancers": {"hosts": {}}},
                    "vars": {
                        "ansible_connection": "local",
                        "ansible_python_interpreter": "/usr/bin/python3",
                        "model_runtime_prefix": str(prefix),
                    },
                }
            }
        )
    )
    stopped = playbook("stop.yml", inventory)
    assert stopped.returncode == 0, stopped.output[-3000:]
    assert running_under(prefix) == [], "stop.yml left processes running"


def test_the_booted_instance_serves(instance: dict, cloud: dict) -> None:
    done = instance["done"]
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "boot: done: the instance serves" in done.stdout
    port = instance["config"]["vars"]["model_runtime_base_port"]
    assert httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=5).status_code == 200
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY, max_retries=0)
    models = client.models.list().data
    assert [m.id for m in models] == ["demo"]
    answer = client.chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": "What may you copy?"}],
        max_tokens=12,
        temperature=0,
    )
    assert answer.choices[0].message.content
    assert answer.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0).models.list()


def test_the_instance_runs_the_pinned_runtime_and_the_registry_version(instance: dict, cloud: dict) -> None:
    assert instance["done"].returncode == 0
    prefix = instance["prefix"]
    record = json.loads((prefix / "etc/ansible/facts.d/model_runtime.fact").read_text())
    release = record["instances"]["1"]
    assert release["runtime_version"] == cloud["runtime_version"]
    assert (release["model"], release["model_version"]) == ("demo", cloud["model_version"])
    model_dir = prefix / "var/lib/model-runtime/models/demo" / cloud["model_version"]
    assert (model_dir / ".verified").is_file()
    assert (
        prefix / "opt/model-runtime/releases" / cloud["runtime_version"] / "venv/bin/model-runtime"
    ).exists()
    status = json.loads((prefix / "var/lib/model-runtime/boot-status.json").read_text())
    assert status["ok"] is True


def test_the_instance_publishes_its_queue_and_first_token_latency_to_cloudwatch(
    instance: dict, cloud: dict
) -> None:
    """The cloud_metrics role's publisher (under supervisord here), into the namespace and fleet
    dimension the group's target tracking reads (tests/unit/test_infra_stacks.py), in moto."""
    assert instance["done"].returncode == 0
    port = instance["config"]["vars"]["model_runtime_base_port"]
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY, max_retries=0)
    cloudwatch = boto3.client("cloudwatch")
    fleet = [{"Name": "Fleet", "Value": "model-runtime-dev"}]

    def published(metric: str) -> list[dict]:
        return cloudwatch.get_metric_statistics(
            Namespace="ModelRuntime", MetricName=metric, Dimensions=fleet, Statistics=["Average"],
            StartTime=time.time() - 600, EndTime=time.time() + 60, Period=60,
        )["Datapoints"]  # fmt: skip

    deadline = time.monotonic() + 90
    while not published("TimeToFirstTokenP90") and time.monotonic() < deadline:
        client.completions.create(model="demo", prompt="You may", max_tokens=4)  # a first token each interval
        time.sleep(2)
    ttft = published("TimeToFirstTokenP90")
    assert ttft, "no TimeToFirstTokenP90 published"
    assert 0 < ttft[0]["Average"] < 60
    queue = published("QueueDepth")
    assert queue
    assert queue[0]["Average"] >= 0
    assert published("RunningBatch")


def test_the_key_exists_only_where_the_runtime_reads_it(instance: dict, cloud: dict) -> None:
    assert instance["done"].returncode == 0
    prefix = instance["prefix"]
    assert API_KEY not in cloud["user_data"]
    keys = prefix / "etc/model-runtime/api-keys"
    assert API_KEY in keys.read_text()
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    private = prefix / "etc/model-runtime/boot"
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert not (private / "keys.json").exists(), "the boot left a copy of the keys"
    assert API_KEY not in instance["done"].stdout


def test_a_bundle_that_is_not_the_pinned_one_is_refused(cloud: dict) -> None:
    script, config_file, config = instance_files(cloud, "tampered", bundle_sha256="0" * 64)
    done = boot(script, config_file)
    assert done.returncode == 1
    assert "the stack pins 0000" in done.stdout
    assert "refused" in done.stdout
    prefix = Path(config["prefix"])
    assert not (prefix / "opt/model-runtime/bundles" / cloud["runtime_version"]).exists()
    assert json.loads((prefix / "var/lib/model-runtime/boot-status.json").read_text())["ok"] is False


def test_a_missing_key_parameter_stops_the_boot_before_anything_installs(cloud: dict) -> None:
    script, config_file, config = instance_files(cloud, "nokey", api_keys="ssm:/model-runtime/dev/missing")
    done = boot(script, config_file)
    assert done.returncode == 1
    assert "reading ssm:/model-runtime/dev/missing failed: ParameterNotFound" in done.stdout
    assert not (Path(config["prefix"]) / "opt/model-runtime/boot").exists()
