"""The user data the program renders is valid cloud-config, as cloud-init itself judges it
(`cloud-init schema`, from Debian's cloud-init package): for both example stacks and the variants
that change its shape."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.pulumi_mocks import run_program

# pulumi_aws warns, as it loads, about resource types this program does not use.
pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning:pulumi_aws")]


def schema(path: Path) -> subprocess.CompletedProcess:
    cloud_init = shutil.which("cloud-init")
    assert cloud_init, "cloud-init is not installed (apt-get install cloud-init): it validates the user data"
    return subprocess.run(
        [cloud_init, "schema", "--config-file", str(path)], capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize(
    ("stack", "overrides"),
    [
        ("dev", {}),
        ("prod", {}),
        ("dev", {"fleet.bootPackages": [], "network.nat": "none"}),
        (
            "prod",
            {
                "apiKeys": "secretsmanager:arn:aws:secretsmanager:us-east-1:123456789012:secret:keys-AbCdEf",
                "fleet.torchRequirement": "torch==2.13.0",
                "fleet.runtimeSettings": {"model": {"dtype": "bfloat16"}},
            },
        ),
    ],
)
def test_the_rendered_user_data_is_valid_cloud_config(stack: str, overrides: dict, tmp_path: Path) -> None:
    run = run_program(stack, overrides)
    user_data = tmp_path / "user-data.yaml"
    user_data.write_bytes(
        base64.b64decode(run.one("aws:ec2/launchTemplate:LaunchTemplate").inputs["userData"])
    )
    checked = schema(user_data)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Valid cloud-config" in checked.stdout


def test_the_validator_refuses_what_cloud_init_would_not_run(tmp_path: Path) -> None:
    # The same check fails on a document cloud-init would reject: it does judge, it is not a formality.
    run = run_program("dev")
    text = base64.b64decode(run.one("aws:ec2/launchTemplate:LaunchTemplate").inputs["userData"]).decode()
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace("encoding: gz+b64", "encoding: zip"))
    checked = schema(broken)
    assert checked.returncode != 0
    assert "encoding" in checked.stdout + checked.stderr
