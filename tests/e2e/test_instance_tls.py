"""An instance serving TLS (server.tls_certfile and server.tls_keyfile), as the model_runtime role sets
it up on bare metal with a certificate from the fleet CA: a client trusting that CA is served on both
listeners, plain HTTP gets no answer, TLS 1.2 suites without forward secrecy or AEAD are refused,
`doctor` reads the instance over TLS, and a certificate without its key is refused at start."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from harness.server import RuntimeProcess
from model_runtime.config import ConfigError, load_settings
from tests.support.pki import make_pki

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def server(demo_model: Path, pki: Path, tmp_path_factory: pytest.TempPathFactory):
    tls = {"tls_certfile": str(pki / "server.crt"), "tls_keyfile": str(pki / "server.key")}
    trust = ssl.create_default_context(cafile=pki / "ca.pem")
    process = RuntimeProcess(
        demo_model, tmp_path_factory.mktemp("tls-server"), {"server": tls}, name="demo", verify=trust
    ).start()
    yield process
    process.stop()


def test_the_api_is_served_over_verified_tls(server: RuntimeProcess) -> None:
    assert server.base_url.startswith("https://")
    client = server.client()
    assert [model.id for model in client.models.list().data] == ["demo"]
    reply = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert reply.choices[0].message.content


def test_the_internal_listener_speaks_tls_too(server: RuntimeProcess) -> None:
    assert httpx.get(f"{server.internal_url}/metrics", verify=server.verify).status_code == 200


@pytest.mark.parametrize("url", ["base_url", "internal_url"])
def test_plain_http_gets_no_answer(server: RuntimeProcess, url: str) -> None:
    plain = getattr(server, url).replace("https://", "http://")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{plain}/health/ready", timeout=10)


def handshake(server: RuntimeProcess, cipher: str) -> httpx.Response:
    """A TLS 1.2 request offering only `cipher` (the suite is the question here, not the certificate)."""
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.set_ciphers(cipher)
    return httpx.get(f"{server.base_url}/health/ready", verify=client, timeout=10)


@pytest.mark.parametrize("cipher", ["AES128-SHA", "AES256-GCM-SHA384", "ECDHE-RSA-AES128-SHA"])
def test_suites_without_forward_secrecy_or_aead_are_refused(server: RuntimeProcess, cipher: str) -> None:
    with pytest.raises(httpx.ConnectError):
        handshake(server, cipher)


def test_a_forward_secret_aead_suite_is_served(server: RuntimeProcess) -> None:
    assert handshake(server, "ECDHE-RSA-AES128-GCM-SHA256").status_code == 200


def test_doctor_reads_an_instance_serving_tls(server: RuntimeProcess) -> None:
    command = [sys.executable, "-m", "model_runtime", "doctor", "--config", str(server.config_file)]
    done = subprocess.run([*command, "--min-free-gb", "0"], capture_output=True, text=True, check=False)
    checks = {check["name"]: check for check in json.loads(done.stdout)["checks"]}
    assert checks["instance_ready"]["status"] == "ok", checks["instance_ready"]
    # The version it reports comes from the instance's metrics, read over TLS too.
    assert server.base_url in checks["runtime_version"]["detail"], checks["runtime_version"]


def tls_settings(demo_model: Path, **server: str) -> None:
    load_settings(overrides={"model": {"path": str(demo_model)}, "server": server})


def test_a_certificate_without_its_key_is_refused(pki: Path, demo_model: Path) -> None:
    with pytest.raises(ConfigError, match="tls_certfile and tls_keyfile: give both"):
        tls_settings(demo_model, tls_certfile=str(pki / "server.crt"))
    with pytest.raises(ConfigError, match=r"tls_keyfile: \S+/missing.key is not a file"):
        tls_settings(demo_model, tls_certfile=str(pki / "server.crt"), tls_keyfile=str(pki / "missing.key"))
