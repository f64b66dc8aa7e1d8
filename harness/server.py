"""A real `model-runtime serve` process on free loopback ports (the public listener and the internal one
for metrics and admin), stopped by whoever started it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx
import openai
import yaml
from prometheus_client.parser import text_string_to_metric_families

from harness.processes import command, role, tree
from model_runtime.readiness import NotReady, ready_url, wait_ready

API_KEY = "test-key-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RuntimeProcess:
    def __init__(
        self,
        model: Path,
        workdir: Path,
        settings: dict | None = None,
        name: str | None = None,
        verify: ssl.SSLContext | None = None,  # a server with server.tls_certfile: the client's trust
        command: Sequence[str] = (sys.executable, "-m", "model_runtime"),  # or another venv's model-runtime
    ) -> None:
        self.command = command
        self.port = free_port()
        self.verify = verify or True
        scheme = "https" if verify else "http"
        self.base_url = f"{scheme}://127.0.0.1:{self.port}"
        self.metrics_port = free_port()
        self.internal_url = f"{scheme}://127.0.0.1:{self.metrics_port}"  # /metrics, /admin, /openapi.json
        self.name = name or model.name
        keys = workdir / "api-keys"
        keys.write_text(f"# test keys\n{API_KEY}\n")
        keys.chmod(0o600)
        config = {
            "model": {"path": str(model), "served_name": self.name, "version": "test"},
            "server": {"port": self.port, "metrics_port": self.metrics_port, "api_keys_file": str(keys)},
            "scheduler": {"torch_threads": 1},
        }
        for section, values in (settings or {}).items():
            config.setdefault(section, {}).update(values)
        self.config_file = workdir / f"config-{self.port}.yaml"
        self.config_file.write_text(yaml.safe_dump(config))
        self.log_file = workdir / f"server-{self.port}.log"
        self.process: subprocess.Popen | None = None

    def start(self, wait_ready: bool = True, timeout: float = 120.0) -> RuntimeProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log_file.open("w") as log:
            self.process = subprocess.Popen(
                [*self.command, "serve", "--config", str(self.config_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        try:
            wait_ready(ready_url(self.base_url), timeout, self.tls(), self._still_running, poll_s=0.1)
        except NotReady as exc:
            raise TimeoutError(f"server not ready within {timeout}s:\n{self.log()}") from exc

    def _still_running(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")

    def tls(self) -> ssl.SSLContext | None:
        """The client side of the server's TLS (the trust it was given); None for plain HTTP."""
        return self.verify if isinstance(self.verify, ssl.SSLContext) else None

    def client(self, **kwargs: object) -> openai.OpenAI:
        kwargs.setdefault("api_key", API_KEY)
        kwargs.setdefault("max_retries", 0)  # the client would otherwise retry 429/503 behind our back
        if self.verify is not True:
            kwargs.setdefault("http_client", openai.DefaultHttpxClient(verify=self.verify))
        return openai.OpenAI(base_url=f"{self.base_url}/v1", **kwargs)

    def http(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=60,
            verify=self.verify,
        )

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def engine_pid(self) -> int:
        assert self.process is not None
        return engine_pid(self.process.pid)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def engine_pid(server_pid: int, marker: str | None = None) -> int:
    """A server's engine process, below it: the builtin engine's (forked by the runtime's engine fork
    server), or the first whose command line has marker (the vllm engine's runs model_runtime.vllm.worker,
    and vLLM's engine core, titled VLLM::EngineCore, is that one's child)."""
    for pid in tree(server_pid)[1:]:
        with contextlib.suppress(OSError):  # ended meanwhile
            found = (
                role(pid) == "engine (multiprocessing child)"
                if marker is None
                else any(marker in arg for arg in command(pid))
            )
            if found:
                return pid
    raise AssertionError(f"no engine process ({marker or 'builtin'}) under {server_pid}")


def metric_value(server: RuntimeProcess, name: str, **labels: str) -> float:
    """Sum of the samples of one metric (optionally filtered by labels) from /metrics (on the internal
    listener), parsed with prometheus_client's own parser."""
    text = httpx.get(f"{server.internal_url}/metrics").text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
