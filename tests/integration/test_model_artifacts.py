"""The model_artifacts role run for real (ansible-playbook, this machine as the host, root as on a
server): a manifest from a folder source or from the registry (a folder, or S3 on moto's server) that
would write outside the version's folder is refused in preflight, before anything is written; a model
folder that links elsewhere is refused too; downloads stage on the model's volume, not in Ansible's
remote_tmp, and the disk check measures that volume."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness import REPO
from harness.playbooks import PlaybookRun, playbook
from model_runtime.registry.manifest import build_manifest, write_manifest
from model_runtime.registry.registry import Registry
from tests.support.manifests import CASES, Crafted, crafted, manifest_of, plant, source_folder

pytestmark = pytest.mark.integration

PLAYBOOK = REPO / "tests" / "integration" / "playbooks" / "model_artifacts.yml"
MODELS = "var/lib/model-runtime/models"  # the role's root under its prefix
# Results as JSON: the refusals' messages come back whole, not folded as YAML would.
JSON_RESULTS = {"ANSIBLE_CALLBACK_RESULT_FORMAT": "json"}


def install(tmp_path: Path, settings: dict, env: dict[str, str] | None = None) -> PlaybookRun:
    """The role on this machine, every path under tmp_path/fs."""
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(f"localhost ansible_python_interpreter={sys.executable}\n")
    settings = {"model_artifacts_prefix": str(tmp_path / "fs"), **settings}
    return playbook(str(PLAYBOOK), inventory, settings, env={**JSON_RESULTS, **(env or {})})


def assert_refused_before_any_change(run: PlaybookRun, says: str) -> None:
    assert run.returncode != 0, run.output[-3000:]
    assert says in run.output, run.output[-3000:]
    assert run.changed() == 0, run.output[-3000:]  # nothing staged, no folder made


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_a_crafted_manifest_from_a_folder_source_is_refused(tmp_path: Path, case: Crafted) -> None:
    outside = tmp_path / "outside"
    source = source_folder(tmp_path / "source", crafted(case, outside))
    run = install(tmp_path, {"model_artifacts_name": case.name, "model_artifacts_source": str(source)})
    assert_refused_before_any_change(run, "is refused, nothing was written")
    assert case.says in run.output, run.output[-3000:]
    assert not (tmp_path / "fs").exists()
    assert not outside.exists()


@pytest.mark.parametrize(
    ("manifest", "target", "says"),
    [
        (manifest_of("demo", "v1", ["config.json", "../escaped.bin"]), "v1", "leaves its folder"),
        (manifest_of("demo", "v1", ["config.json"]), "../escaped", "version '../escaped': not a name"),
    ],
    ids=["entry-path", "alias-target"],
)
def test_a_crafted_registry_entry_is_refused_on_the_control_node(
    registry: Registry, tmp_path: Path, manifest: dict, target: str, says: str
) -> None:
    plant(registry.store, "demo", "v1", manifest)
    record = {"version": target, "history": []}
    registry.store.write_bytes("demo/aliases/stable.json", json.dumps(record).encode())
    settings = {"model_artifacts_ref": "demo@stable", "model_artifacts_registry": registry.store.url}
    run = install(tmp_path, settings)
    assert_refused_before_any_change(run, says)
    assert not (tmp_path / "fs").exists()


def test_a_model_folder_that_links_outside_is_refused(tmp_path: Path) -> None:
    source = source_folder(tmp_path / "source", manifest_of("demo", "v1", ["config.json", "weights.bin"]))
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "fs" / MODELS
    root.mkdir(parents=True)
    (root / "demo").symlink_to(outside)  # left by someone else: the version would land in outside/
    run = install(tmp_path, {"model_artifacts_name": "demo", "model_artifacts_source": str(source)})
    assert_refused_before_any_change(run, "leads outside")
    assert list(outside.iterdir()) == []


@pytest.fixture
def tiny_tmpfs() -> Iterator[Callable[[Path], Path]]:
    """Mounts a 1 MiB filesystem (smaller than the model) on a new folder; unmounts it after the test."""
    mounts: list[Path] = []

    def mount(folder: Path) -> Path:
        folder.mkdir(parents=True)
        command = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounts.append(folder)
        return folder

    yield mount
    for folder in mounts:
        subprocess.run(["umount", str(folder)], check=True)


def big_model(folder: Path) -> Path:
    """A 3 MiB model, three times the tiny filesystem."""
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "weights.bin").write_bytes(bytes(range(256)) * (12 * 1024))
    write_manifest(folder, build_manifest(folder, "big", "v1"))
    return folder


def test_downloads_stage_on_the_model_volume_not_in_remote_tmp(
    tmp_path: Path, tiny_tmpfs: Callable[[Path], Path]
) -> None:
    """Ansible's remote_tmp (the root filesystem, ~/.ansible/tmp, on a real host) is smaller than the
    model: the download must not pass through it."""
    source = big_model(tmp_path / "source")
    volume = tmp_path / "volume"
    volume.mkdir()
    root = tmp_path / "fs" / MODELS
    root.parent.mkdir(parents=True)
    root.symlink_to(volume)  # the model root as a mounted volume often is: a link is fine at the root
    run = install(
        tmp_path,
        {"model_artifacts_name": "big", "model_artifacts_source": str(source)},
        env={"ANSIBLE_REMOTE_TMP": str(tiny_tmpfs(tmp_path / "remote-tmp"))},
    )
    assert run.returncode == 0, run.output[-3000:]
    installed = volume / "big" / "v1"
    assert (installed / "weights.bin").read_bytes() == (source / "weights.bin").read_bytes()
    assert (installed / ".verified").is_file()
    assert sorted(p.name for p in (volume / "big").iterdir()) == ["current", "v1"]  # no partial left


def test_the_disk_check_measures_the_volume_the_files_land_on(
    tmp_path: Path, tiny_tmpfs: Callable[[Path], Path]
) -> None:
    """The model's own folder is a mount smaller than the model, the root above it is not: the check
    must stop the run before anything is written there."""
    source = big_model(tmp_path / "source")
    volume = tiny_tmpfs(tmp_path / "fs" / MODELS / "big")
    run = install(tmp_path, {"model_artifacts_name": "big", "model_artifacts_source": str(source)})
    assert_refused_before_any_change(run, f"not enough free disk under {volume}")
    assert list(volume.iterdir()) == []
