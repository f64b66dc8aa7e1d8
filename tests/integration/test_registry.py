"""The registry on both stores: a folder and S3 (moto's server on loopback)."""

from __future__ import annotations

import json
import secrets
import threading
from pathlib import Path

import pytest

from model_runtime.registry import stores
from model_runtime.registry.registry import Registry, RegistryError
from model_runtime.registry.stores import LocalStore
from tests.support.s3 import make_bucket, s3_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3():
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture(params=["folder", "s3"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Registry:
    if request.param == "folder":
        return Registry.open(str(tmp_path / "registry"))
    request.getfixturevalue("s3")
    bucket = f"models-{secrets.token_hex(4)}"
    make_bucket(bucket)
    return Registry.open(f"s3://{bucket}/team/registry")


def model_folder(path: Path, seed: int, size: int = 2048) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"seed": seed}))
    (path / "weights").mkdir()
    (path / "weights" / "part-0.bin").write_bytes(bytes((seed + i) % 251 for i in range(size)))
    return path


def test_push_list_show_pull(registry: Registry, tmp_path: Path) -> None:
    first = registry.push("demo", model_folder(tmp_path / "m1", 1), source="test")
    second = registry.push("demo", model_folder(tmp_path / "m2", 2))
    assert registry.names() == ["demo"]
    assert registry.versions("demo") == sorted([first["version"], second["version"]])
    assert registry.manifest("demo", first["version"])["source"] == "test"
    assert [f["path"] for f in first["files"]] == ["config.json", "weights/part-0.bin"]
    registry.promote("demo", first["version"], "stable")
    pulled = registry.pull("demo@stable", tmp_path / "out")
    assert pulled["version"] == first["version"]
    assert (tmp_path / "out" / "weights" / "part-0.bin").read_bytes() == (
        tmp_path / "m1/weights/part-0.bin"
    ).read_bytes()
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["digest"] == first["digest"]
    assert registry.pull("demo@stable", tmp_path / "out")["version"] == first["version"]  # verified, kept
    with pytest.raises(RegistryError, match="is not demo"):
        registry.pull(f"demo:{second['version']}", tmp_path / "out")


def test_promote_rollback_keeps_history(registry: Registry, tmp_path: Path) -> None:
    versions = [registry.push("demo", model_folder(tmp_path / f"m{i}", i))["version"] for i in range(3)]
    for version in versions:
        registry.promote("demo", version, "stable")
    assert registry.resolve("demo@stable") == ("demo", versions[2])
    assert registry.resolve("demo") == ("demo", versions[2])  # a bare name means @stable
    back = registry.rollback("demo", "stable")
    assert back["version"] == versions[1]
    assert back["history"] == [versions[0]]
    registry.rollback("demo", "stable")
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback("demo", "stable")
    with pytest.raises(RegistryError, match="no such alias"):
        registry.resolve("demo@canary")
    with pytest.raises(RegistryError, match="no such version"):
        registry.promote("demo", "19990101-000000.000000-abcdef", "stable")


def test_gc_keeps_the_newest_and_everything_an_alias_can_reach(registry: Registry, tmp_path: Path) -> None:
    versions = [registry.push("demo", model_folder(tmp_path / f"m{i}", i))["version"] for i in range(5)]
    registry.promote("demo", versions[0], "stable")
    registry.promote("demo", versions[1], "stable")  # versions[0] stays reachable by rollback
    removed = registry.gc("demo", keep=2)
    assert removed == [versions[2]]
    assert registry.versions("demo") == [versions[0], versions[1], versions[3], versions[4]]


def test_a_corrupted_byte_is_caught_on_pull_and_nothing_is_left(registry: Registry, tmp_path: Path) -> None:
    good = registry.push("demo", model_folder(tmp_path / "m1", 1))["version"]
    bad = registry.push("demo", model_folder(tmp_path / "m2", 2))["version"]
    key = f"demo/versions/{bad}/files/weights/part-0.bin"
    data = bytearray(registry.store.read_bytes(key))
    data[100] ^= 0x01
    registry.store.write_bytes(key, bytes(data))
    registry.promote("demo", good, "stable")
    active = tmp_path / "host" / good
    registry.pull("demo@stable", active)
    with pytest.raises(RegistryError, match=r"corrupt: weights/part-0\.bin: sha256 does not match"):
        registry.pull(f"demo:{bad}", tmp_path / "host" / bad)
    assert sorted(p.name for p in (tmp_path / "host").iterdir()) == [good]  # no half-written folder
    assert registry.resolve("demo@stable") == ("demo", good)


class FailingStore(LocalStore):
    """A real folder store whose downloads stop after a few files (a pull cut off halfway)."""

    def __init__(self, root: Path, downloads: int) -> None:
        super().__init__(root)
        self.left = downloads

    def download(self, key: str, dest: Path) -> None:
        if self.left == 0:
            raise ConnectionResetError("connection lost")
        self.left -= 1
        super().download(key, dest)


def test_an_interrupted_pull_leaves_nothing(tmp_path: Path) -> None:
    Registry.open(str(tmp_path / "registry")).push("demo", model_folder(tmp_path / "m1", 1))
    cut = Registry(FailingStore(tmp_path / "registry", downloads=1))
    with pytest.raises(ConnectionResetError):
        cut.pull("demo:" + cut.versions("demo")[0], tmp_path / "dest" / "v1")
    assert list((tmp_path / "dest").iterdir()) == []


def test_concurrent_pushes_both_land(registry: Registry, tmp_path: Path) -> None:
    folders = [model_folder(tmp_path / f"m{i}", i) for i in range(4)]
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda f=f: results.append(registry.push("demo", f)["version"]))
        for f in folders
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 4
    assert sorted(registry.versions("demo")) == sorted(results)


def test_readers_never_see_a_half_promoted_alias(registry: Registry, tmp_path: Path) -> None:
    versions = [registry.push("demo", model_folder(tmp_path / f"m{i}", i))["version"] for i in range(3)]
    registry.promote("demo", versions[0], "stable")
    seen: list[str] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.append(registry.resolve("demo@stable")[1])

    reader = threading.Thread(target=read)
    reader.start()
    for round_ in range(20):
        registry.promote("demo", versions[round_ % 3], "stable")
    done.set()
    reader.join()
    assert seen
    assert set(seen) <= set(versions)


def test_large_files_go_up_in_parts(s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stores, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)  # S3's smallest part
    bucket = f"models-{secrets.token_hex(4)}"
    make_bucket(bucket)
    registry = Registry.open(f"s3://{bucket}")
    folder = model_folder(tmp_path / "big", 3, size=12 * 1024 * 1024)
    version = registry.push("big", folder)["version"]
    head = registry.store.client.head_object(
        Bucket=bucket, Key=f"big/versions/{version}/files/weights/part-0.bin"
    )
    assert "-" in head["ETag"]  # a multipart upload's ETag ends in -<parts>
    registry.pull(f"big:{version}", tmp_path / "out")
    assert (tmp_path / "out/weights/part-0.bin").stat().st_size == 12 * 1024 * 1024


def test_bad_references_are_named(registry: Registry) -> None:
    for ref in ("", "a b", "demo@", "demo:", "../x"):
        with pytest.raises(RegistryError, match="not a reference"):
            registry.resolve(ref)
