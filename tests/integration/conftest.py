from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from model_runtime.registry.registry import Registry
from tests.support.s3 import make_bucket, s3_server


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    """moto's S3 server, one per module; boto3 (ours and the control node's module) reaches it
    through the AWS_* variables it sets."""
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture(params=["folder", "s3"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Registry:
    """An empty registry in each store: a folder, and a fresh bucket under a prefix on S3."""
    if request.param == "folder":
        return Registry.open(str(tmp_path / "registry"))
    request.getfixturevalue("s3")
    bucket = f"models-{secrets.token_hex(4)}"
    make_bucket(bucket)
    return Registry.open(f"s3://{bucket}/team/registry")
