"""The boot script's own steps (infra/boot.py), one at a time: the bundle's unpacking
refuses what could write outside it, the API keys are read and parsed without ever being printed, a
failure is recorded. AWS is moto's in-process mock; the whole boot runs in test_cloud_boot.py."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from infra import boot
from infra.boot import Boot, BootError, safe_extract

pytestmark = pytest.mark.unit


def tarball(path: Path, members: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            data = b"x" * member.size if member.isfile() else None
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    return path


def file_member(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 3
    return info


def link_member(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


@pytest.fixture(params=["filters", "no-filters"])
def python_filters(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both paths of safe_extract: Pythons with tarfile's extraction filters and without (Debian 12)."""
    if request.param == "no-filters":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    return request.param


@pytest.mark.parametrize(
    ("member", "says"),
    [
        (file_member("../outside"), "points outside the bundle"),
        (file_member("/etc/cron.d/evil"), "points outside the bundle"),
        (link_member("wheels/link", "/etc/shadow"), "not a plain file or folder"),
    ],
)
def test_the_bundle_cannot_write_outside_itself(
    tmp_path: Path, python_filters: str, member: tarfile.TarInfo, says: str
) -> None:
    archive = tarball(tmp_path / "b.tar.gz", [file_member("bundle.json"), member])
    with tarfile.open(archive) as tar, pytest.raises(BootError, match=says):
        safe_extract(tar, tmp_path / "out")
    assert not (tmp_path / "outside").exists()
    assert list((tmp_path / "out").iterdir()) == []  # checked before anything is written


def test_a_plain_bundle_unpacks(tmp_path: Path, python_filters: str) -> None:
    archive = tarball(tmp_path / "b.tar.gz", [file_member("bundle.json"), file_member("wheels/a.whl")])
    with tarfile.open(archive) as tar:
        safe_extract(tar, tmp_path / "out")
    assert (tmp_path / "out/wheels/a.whl").read_bytes() == b"xxx"


def config(tmp_path: Path, **changes: object) -> dict:
    return {
        "region": "us-east-1",
        "bucket": "models",
        "bundle_key": "bundles/b.tar.gz",
        "bundle_sha256": "0" * 64,
        "runtime_version": "0.1.0",
        "api_keys": "ssm:/fleet/keys",
        "prefix": str(tmp_path / "fs"),
        "python": "/usr/bin/python3",
        "vars": {"model_artifacts_ref": "demo@stable"},
        **changes,
    }


@mock_aws
@pytest.mark.parametrize(
    ("stored", "keys"),
    [
        ("k1\n", ["k1"]),
        ("# the fleet's keys\nk1, k2\n\nk3 # old one\n", ["k1", "k2", "k3"]),
        # A key with its settings stays one line (its models are separated by commas too).
        (
            "k1\nk4 priority=batch models=demo,demo-int8 requests_per_minute=60\n",
            ["k1", "k4 priority=batch models=demo,demo-int8 requests_per_minute=60"],
        ),
    ],
)
def test_keys_are_read_from_parameter_store(
    tmp_path: Path, capsys: pytest.CaptureFixture, stored: str, keys: list
) -> None:
    session = boto3.session.Session(region_name="us-east-1")
    session.client("ssm").put_parameter(Name="/fleet/keys", Type="SecureString", Value=stored)
    assert Boot(config(tmp_path)).read_api_keys(session) == keys
    printed = capsys.readouterr().out
    assert not any(k.split()[0] in printed for k in keys)  # counted in the log, never printed


@mock_aws
def test_keys_are_read_from_secrets_manager(tmp_path: Path) -> None:
    session = boto3.session.Session(region_name="us-east-1")
    session.client("secretsmanager").create_secret(Name="fleet/keys", SecretString="s1,s2")
    assert Boot(config(tmp_path, api_keys="secretsmanager:fleet/keys")).read_api_keys(session) == ["s1", "s2"]


@mock_aws
@pytest.mark.parametrize(
    ("reference", "says"),
    [
        ("ssm:/fleet/missing", "reading ssm:/fleet/missing failed: ParameterNotFound"),
        ("ssm:/fleet/empty", "ssm:/fleet/empty holds no API key"),
        ("vault:fleet/keys", "not ssm:NAME or secretsmanager:NAME"),
    ],
)
def test_a_bad_key_reference_stops_the_boot(tmp_path: Path, reference: str, says: str) -> None:
    session = boto3.session.Session(region_name="us-east-1")
    session.client("ssm").put_parameter(Name="/fleet/empty", Type="SecureString", Value="# nothing yet\n")
    with pytest.raises(BootError, match=says):
        Boot(config(tmp_path, api_keys=reference)).read_api_keys(session)


def test_private_files_are_root_only(tmp_path: Path) -> None:
    path = Boot(config(tmp_path)).write_private("keys.json", {"model_runtime_api_keys": ["k"]})
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert json.loads(path.read_text()) == {"model_runtime_api_keys": ["k"]}


def test_the_role_vars_install_from_the_bundle_under_the_prefix(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    role_vars = Boot(config(tmp_path)).role_vars(bundle)
    assert role_vars["model_artifacts_ref"] == "demo@stable"
    assert role_vars["model_runtime_version"] == "0.1.0"
    assert role_vars["model_runtime_pip_args"] == f"--no-index --find-links {bundle / 'wheels'}"
    prefixes = {role_vars[f"{role}_prefix"] for role in ("model_runtime", "model_artifacts", "cloud_metrics")}
    assert prefixes == {str(tmp_path / "fs")}
    assert role_vars["model_runtime_python"] == "/usr/bin/python3"


@mock_aws
def test_a_failed_boot_is_recorded_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "boot.json"
    path.write_text(json.dumps(config(tmp_path)))
    assert boot.main([str(path)]) == 1
    status = json.loads((tmp_path / "fs/var/lib/model-runtime/boot-status.json").read_text())
    assert status["ok"] is False
    assert "fetching s3://models/bundles/b.tar.gz failed: NoSuchBucket" in status["error"]
    assert "failed: fetching" in (tmp_path / "fs/var/log/model-runtime/boot.log").read_text()


@mock_aws
@pytest.mark.parametrize("pinned", [{"bundle_sha256": ""}, {"bundle_sha256": None}])
def test_a_bundle_without_a_pinned_sha256_is_refused_before_it_is_fetched(
    tmp_path: Path, pinned: dict
) -> None:
    # A good bundle of the right release is in the bucket: only the missing pin stops it.
    manifest = json.dumps({"runtime_version": "0.1.0"}).encode()
    with tarfile.open(tmp_path / "b.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("bundle.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="models")
    s3.upload_file(str(tmp_path / "b.tar.gz"), "models", "bundles/b.tar.gz")
    with pytest.raises(BootError, match="bundle_sha256: the stack pins no sha256"):
        Boot(config(tmp_path, **pinned)).fetch_bundle(s3)
    assert not (tmp_path / "fs/opt").exists()  # nothing fetched, nothing unpacked
