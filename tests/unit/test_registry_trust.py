"""The one set of checks on what the registry reads (model_runtime/registry/trust.py), as the registry,
the model writer, ensemble specs, the role's filter plugin and the cloud boot script use it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from harness import REPO
from model_runtime.engine.base import ModelLoadError
from model_runtime.ensemble.spec import make_spec
from model_runtime.registry.manifest import ManifestError, build_manifest, verify_folder
from model_runtime.registry.trust import (
    UntrustedError,
    check_manifest,
    manifest_problems,
    path_problem,
    split_ref,
)
from tests.support.manifests import manifest_of

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "path", ["config.json", "weights/part-0.bin", "a..b/c", "tokenizer/manifest.json.bak", "x y/z"]
)
def test_paths_inside_the_folder_are_accepted(path: str) -> None:
    assert path_problem(path, "path") is None


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/etc/cron.d/job", "is absolute"),
        ("../x", "leaves its folder"),
        ("a/../../x", "leaves its folder"),
        ("..", "leaves its folder"),
        ("a\\..\\x", "contains a backslash"),
        ("a\x00b", "contains a NUL"),
        ("a\nb", "contains a NUL or another control character"),
        ("a//b", "has an empty component"),
        ("a/", "has an empty component"),
        ("", "not a relative path"),
        ("./a", "has a hidden component"),
        (".verified", "has a hidden component"),
        ("a/.git/config", "has a hidden component"),
        ("manifest.json", "collides with the version's manifest.json"),
        (42, "not a relative path"),
    ],
)
def test_paths_that_could_leave_the_folder_are_refused(path: object, says: str) -> None:
    problem = path_problem(path, "files[0].path")
    assert problem is not None
    assert problem.startswith("files[0].path ")
    assert says in problem


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"size": -1}, "files[0].size -1: not a whole number of bytes >= 0"),
        ({"size": True}, "files[0].size True"),
        ({"size": "10"}, "files[0].size '10'"),
        ({"sha256": "A" * 64}, "files[0].sha256 'AAAA"),
        ({"sha256": "0" * 63}, "not 64 lowercase hex digits"),
    ],
)
def test_an_entry_needs_a_size_and_a_sha256(change: dict, says: str) -> None:
    manifest = manifest_of("demo", "v1", ["config.json"])
    manifest["files"][0].update(change)
    assert any(says in p for p in manifest_problems(manifest))


def test_a_manifest_lists_each_file_once_and_no_file_as_a_folder() -> None:
    problems = manifest_problems(manifest_of("demo", "v1", ["a", "a", "b", "b/c"]))
    assert problems == ["files: 'a' is listed more than once", "files: 'b/c' lies under 'b', which is a file"]


@pytest.mark.parametrize(
    ("manifest", "says"),
    [
        ([], "not a JSON object"),
        ({"name": "demo", "version": "v1", "digest": "0" * 64, "files": []}, "files: not a non-empty list"),
        ({**manifest_of("demo", "v1", ["a"]), "digest": None}, "digest None"),
        ({**manifest_of("demo", "v1", ["a"]), "name": "a b"}, "name 'a b': not a name"),
        ({**manifest_of("demo", "v1", ["a"]), "version": ".v1"}, "version '.v1': not a name"),
    ],
)
def test_a_manifest_names_what_is_wrong(manifest: object, says: str) -> None:
    with pytest.raises(UntrustedError, match=r"^s3://b/demo/versions/v1/manifest\.json: refused: ") as caught:
        check_manifest(manifest, "s3://b/demo/versions/v1/manifest.json")
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("ref", "parsed"),
    [("demo", ("demo", None, "stable")), ("demo@canary", ("demo", None, "canary")),
     ("demo:20250101-000000.000001-abcdef", ("demo", "20250101-000000.000001-abcdef", None))],
)  # fmt: skip
def test_references_split_into_checked_names(ref: str, parsed: tuple) -> None:
    assert split_ref(ref) == parsed


@pytest.mark.parametrize("ref", ["demo:../x", "demo:a/b", "demo:", "demo@.x", "../demo", None, "a" * 101])
def test_references_with_a_bad_part_are_refused(ref: object) -> None:
    with pytest.raises(UntrustedError, match="not a reference"):
        split_ref(ref)


def test_build_manifest_lists_nothing_hidden_and_refuses_bad_names(tmp_path: Path) -> None:
    (tmp_path / ".cache" / "huggingface").mkdir(parents=True)
    (tmp_path / ".cache" / "huggingface" / "meta").write_text("a download tool's bookkeeping")
    (tmp_path / "config.json").write_text("{}")
    assert [f["path"] for f in build_manifest(tmp_path, "demo", "v1")["files"]] == ["config.json"]
    for name, version in (("../demo", "v1"), ("demo", "1.0+local")):
        with pytest.raises(ManifestError, match="not a name"):
            build_manifest(tmp_path, name, version)


def test_verify_refuses_a_crafted_manifest_before_reading_anything(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="leaves its folder"):
        verify_folder(tmp_path, manifest_of("demo", "v1", ["../../etc/passwd"]))


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("registry:demo:../x", "not a reference"),
        ("registry:demo:a/b", "not a reference"),
        ("members\\..\\..\\x", "contains a backslash"),
        ("members/../../x", "leaves its folder"),
        ("/srv/models/x", "is absolute"),
    ],
)
def test_ensemble_members_are_checked_with_the_same_rules(source: str, says: str) -> None:
    spec = {
        "method": "average",
        "members": [{"name": "a", "source": source}, {"name": "b", "source": "members/b"}],
        "weights": [0.5, 0.5],
    }
    with pytest.raises(ModelLoadError, match=r"members\.0\.source") as caught:
        make_spec(spec, "ensemble.json")
    assert says in str(caught.value)


def test_the_role_filters_are_the_registry_checks() -> None:
    spec = importlib.util.spec_from_file_location("manifest_filters", REPO / "filter_plugins" / "manifest.py")
    assert spec is not None
    assert spec.loader is not None
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    filters = plugin.FilterModule().filters()
    crafted = manifest_of("demo", "v1", ["../x"])
    assert filters["manifest_problems"](crafted) == manifest_problems(crafted)
    assert filters["name_problems"]("demo", "model_artifacts_name") == []
    assert filters["name_problems"]("../x", "model_artifacts_name") == [
        "model_artifacts_name '../x': not a name (a letter or digit, then letters, digits, '.', '_' or '-', "
        "at most 100 characters)"
    ]


def runtime_wheel(bundle: Path) -> Path:
    """A bundle's wheels folder with the runtime wheel's pure-Python registry checks in it."""
    wheels = bundle / "wheels"
    wheels.mkdir(parents=True)
    wheel = wheels / "model_runtime-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for part in ("__init__.py", "registry/__init__.py", "registry/trust.py"):
            archive.write(REPO / "model_runtime" / part, f"model_runtime/{part}")
    return wheel


@pytest.mark.parametrize(
    ("ref", "says"),
    [
        ("demo@stable", "model demo@stable ok"),
        ("demo:../../etc", "model_artifacts_ref: 'demo:../../etc': not a reference"),
        ("../demo", "model_artifacts_ref: '../demo': not a reference"),
        (None, "model_artifacts_ref: None: not a reference"),
    ],
)
def test_the_boot_script_checks_the_model_reference_with_the_bundles_rules(
    tmp_path: Path, ref: str | None, says: str
) -> None:
    """Run as on an instance: a Python without site-packages (nothing of ours installed), so the checks
    can only come from the bundle's runtime wheel."""
    runtime_wheel(tmp_path / "bundle")
    config = {
        "runtime_version": "0.1.0",
        "prefix": str(tmp_path / "fs"),
        "vars": {"model_artifacts_ref": ref},
    }
    script = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(REPO / 'infra')!r})\n"
        "import boot\n"
        "try:\n"
        "    ref = boot.Boot(json.loads(sys.argv[1])).check_model_ref(boot.Path(sys.argv[2]))\n"
        "    print('model', ref, 'ok')\n"
        "except boot.BootError as exc:\n"
        "    print(exc)\n"
    )
    arguments = [json.dumps(config), str(tmp_path / "bundle")]
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script, *arguments], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(says), done.stdout
