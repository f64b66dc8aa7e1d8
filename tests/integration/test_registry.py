"""The registry on both stores: a folder and S3 (moto's server on loopback)."""

from __future__ import annotations

import json
import re
import secrets
import threading
from pathlib import Path

import pytest

from model_runtime.cli import main
from model_runtime.registry import registry as registry_module
from model_runtime.registry import stores
from model_runtime.registry.registry import Registry, RegistryError
from model_runtime.registry.stores import LocalStore
from tests.support.manifests import CASES, Crafted, crafted, manifest_of, plant
from tests.support.s3 import make_bucket

pytestmark = pytest.mark.integration


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


def test_gc_keeps_what_a_deployment_pins(registry: Registry, tmp_path: Path) -> None:
    versions = [registry.push("demo", model_folder(tmp_path / f"m{i}", i))["version"] for i in range(5)]
    # A stack boots instances from demo:versions[0]; a fleet runs versions[1] and may return to versions[2].
    registry.pin("demo", "stack-prod", [versions[0]])
    registry.pin("demo", "fleet-metal", [versions[2], versions[1], versions[1]])
    assert registry.pins("demo") == {"fleet-metal": [versions[1], versions[2]], "stack-prod": [versions[0]]}
    assert registry.gc("demo", keep=1) == [versions[3]]
    # A fleet's next deployment replaces its list: what it no longer runs is free to go.
    registry.pin("demo", "fleet-metal", [versions[2]])
    registry.unpin("demo", "stack-prod")
    assert registry.gc("demo", keep=1) == [versions[0], versions[1]]
    assert registry.versions("demo") == [versions[2], versions[4]]


def test_pins_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(tmp_path / "registry")
    versions = [
        Registry.open(root).push("demo", model_folder(tmp_path / f"m{i}", i))["version"] for i in range(3)
    ]
    assert main(["registry", "--registry", root, "pin", "demo", "fleet-metal", versions[0]]) == 0
    assert main(["registry", "--registry", root, "gc", "demo", "--keep", "1"]) == 0
    out = capsys.readouterr().out
    assert f"kept for fleet-metal: demo:{versions[0]}\nremoved demo:{versions[1]}\n" in out
    assert main(["registry", "--registry", root, "unpin", "demo", "fleet-metal"]) == 0
    assert main(["registry", "--registry", root, "pins", "demo"]) == 0
    assert capsys.readouterr().out.endswith("{}\n")
    assert main(["registry", "--registry", root, "pin", "demo", "fleet-metal", "../etc"]) == 2
    assert "versions[0] '../etc': not a name" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("record", "says"),
    [
        (b"[]", "not a JSON object"),
        (b'{"versions": "20261203-000000.000000-abcdef"}', "not a list"),
        (b'{"versions": ["../../etc"]}', "versions[0] '../../etc': not a name"),
        (b"{", "not valid JSON"),
    ],
)
def test_gc_refuses_while_a_pin_cannot_be_read(
    registry: Registry, tmp_path: Path, record: bytes, says: str
) -> None:
    """Whoever can write to the store may plant a pin: a bad one stops gc (it might protect something),
    and deletes nothing."""
    old, new = (registry.push("demo", model_folder(tmp_path / f"m{i}", i))["version"] for i in range(2))
    registry.store.write_bytes("demo/pins/fleet-x.json", record)
    with pytest.raises(RegistryError, match=re.escape(says)):
        registry.gc("demo", keep=1)
    assert registry.versions("demo") == [old, new]
    with pytest.raises(RegistryError, match=re.escape("holder '../x': not a name")):
        registry.pin("demo", "../x", [old])


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
    for ref in ("", "a b", "demo@", "demo:", "../x", "demo:../x", "demo:a/b", "demo:.hidden", "demo@../x"):
        with pytest.raises(RegistryError, match="not a reference"):
            registry.resolve(ref)


# --- what is read from the store is not trusted (issue 11, item 1) -----------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_a_crafted_manifest_is_refused_before_anything_is_written(
    registry: Registry, tmp_path: Path, case: Crafted
) -> None:
    outside = tmp_path / "outside"
    plant(registry.store, "demo", "v1", crafted(case, outside))
    host = tmp_path / "host"
    host.mkdir()
    with pytest.raises(RegistryError, match=re.escape(case.says)):
        registry.pull("demo:v1", host / "v1")
    with pytest.raises(RegistryError, match=re.escape(case.says)):
        registry.fetch_plan("demo:v1")  # what the model_artifacts role would fetch
    assert list(host.iterdir()) == []  # nothing staged, nothing beside the destination
    assert not outside.exists()


def test_a_pulled_copy_whose_files_lead_outside_is_refused(registry: Registry, tmp_path: Path) -> None:
    """An existing destination is verified, not downloaded again: a link in it must not pass for the
    model's files, which the server would then load from wherever the link points."""
    version = registry.push("demo", model_folder(tmp_path / "m1", 1))["version"]
    dest = tmp_path / "host" / version
    registry.pull(f"demo:{version}", dest)
    elsewhere = tmp_path / "elsewhere"
    (dest / "weights").rename(elsewhere)
    (dest / "weights").symlink_to(elsewhere)  # the same bytes, outside the folder
    with pytest.raises(RegistryError, match=r"weights/part-0\.bin: resolves to .*elsewhere.*, outside"):
        registry.pull(f"demo:{version}", dest)


@pytest.mark.parametrize(
    ("record", "says"),
    [
        ({"version": "../escaped", "history": []}, "version '../escaped': not a name"),
        ({"version": "v1", "history": ["v0", "/etc"]}, "history[1] '/etc': not a name"),
        ({"version": "v1"}, "history None: not a list"),
    ],
    ids=["target", "history", "no-history"],
)
def test_a_crafted_alias_record_is_refused(
    registry: Registry, tmp_path: Path, record: dict, says: str
) -> None:
    plant(registry.store, "demo", "v1", manifest_of("demo", "v1", ["config.json"]))
    registry.store.write_bytes("demo/aliases/stable.json", json.dumps(record).encode())
    for action in (
        lambda: registry.resolve("demo@stable"),
        lambda: registry.pull("demo@stable", tmp_path / "host" / "v1"),
        lambda: registry.promote("demo", "v1", "stable"),
        lambda: registry.rollback("demo", "stable"),
    ):
        with pytest.raises(RegistryError, match=re.escape(f"demo/aliases/stable.json: refused: {says}")):
            action()
    assert not (tmp_path / "host").exists()


def test_a_manifest_stored_under_another_version_is_refused(registry: Registry) -> None:
    plant(registry.store, "demo", "v1", manifest_of("demo", "v2", ["config.json"]))
    with pytest.raises(RegistryError, match="refused: it describes demo:v2"):
        registry.fetch_plan("demo:v1")


# --- alias moves are compare-and-swap (issue 11, item 16) -------------------------------------------


def test_concurrent_promotions_lose_no_version(registry: Registry, tmp_path: Path) -> None:
    """Every promotion lands: its version is the alias's target or in its history, whatever the
    interleaving (before, two writers read the same record and the second write dropped the first)."""
    writers = 8
    versions = [registry.push("demo", model_folder(tmp_path / f"m{i}", i))["version"] for i in range(writers)]
    start = threading.Barrier(writers)
    failures: list[BaseException] = []

    def promote(version: str) -> None:
        start.wait()
        try:
            registry.promote("demo", version, "stable")
        except BaseException as exc:  # reported by the assertion below, not lost in the thread
            failures.append(exc)

    threads = [threading.Thread(target=promote, args=(v,)) for v in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    record = registry.aliases("demo")["stable"]
    assert sorted([record["version"], *record["history"]]) == sorted(versions)


class OutrunStore(LocalStore):
    """A real folder store in which another writer moves the alias between every read and write."""

    def write_if(self, key: str, data: bytes, tag: str | None) -> bool:
        current = json.loads(self.read_bytes(key))
        self.write_bytes(key, json.dumps({**current, "updated": secrets.token_hex(4)}).encode())
        return super().write_if(key, data, tag)


def test_a_promotion_that_keeps_losing_gives_up_with_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_module, "ALIAS_WRITE_ATTEMPTS", 3)
    plain = Registry.open(str(tmp_path / "registry"))
    first, second = (plain.push("demo", model_folder(tmp_path / f"m{i}", i))["version"] for i in range(2))
    plain.promote("demo", first, "stable")
    outrun = Registry(OutrunStore(tmp_path / "registry"))
    with pytest.raises(RegistryError, match="other writers moved the alias during each of 3 attempts"):
        outrun.promote("demo", second, "stable")
    assert plain.resolve("demo@stable") == ("demo", first)
