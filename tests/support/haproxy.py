"""A real HAProxy in front of runtime servers on this machine, stopped by whoever started it: the retry
policy of the loadbalancer role's own template (so that a test holds the role to what it promises), and
optionally HAProxy's Prometheus exporter on a stats listener, served the way the template serves it.
Also a bare HAProxy with its runtime API open, for the tests of the runtime API client."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import jinja2
import pytest
import yaml

from harness import REPO
from harness.server import free_port
from model_runtime.readiness import NotReady, ready_url, wait_ready

ROLE = REPO / "roles" / "loadbalancer"
TEMPLATE = ROLE / "templates" / "haproxy.cfg.j2"
RETRY_DIRECTIVES = ("option http-buffer-request", "retries ", "retry-on ", "option redispatch")


def retry_policy() -> list[str]:
    """The template's retry directives, with the role's defaults filled in."""
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    lines = [line.strip() for line in TEMPLATE.read_text().splitlines()]
    policy = [jinja2.Template(line).render(defaults) for line in lines if line.startswith(RETRY_DIRECTIVES)]
    assert any(line.startswith("retry-on ") for line in policy), f"no retry-on line in {TEMPLATE}"
    return policy


class HAProxy:
    """HAProxy on a free loopback port with one backend of `servers` (name -> port on 127.0.0.1),
    health-checked on /health/ready as the role does."""

    def __init__(self, workdir: Path, servers: dict[str, int], exporter: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stats_port = free_port() if exporter else None
        self.config = workdir / f"haproxy-{self.port}.cfg"
        self.servers = servers
        self.process: subprocess.Popen | None = None

    def _config(self) -> str:
        lines = [
            "defaults", "  mode http", "  timeout connect 5s", "  timeout client 60s", "  timeout server 60s",
            *(f"  {directive}" for directive in retry_policy()),
            "frontend model_runtime", f"  bind 127.0.0.1:{self.port}", "  default_backend model_runtime",
            "backend model_runtime", "  option httpchk GET /health/ready", "  http-check expect status 200",
            *(f"  server {name} 127.0.0.1:{port} check inter 200ms" for name, port in self.servers.items()),
        ]  # fmt: skip
        if self.stats_port is not None:
            lines += [
                "listen stats", f"  bind 127.0.0.1:{self.stats_port}",
                "  http-request use-service prometheus-exporter if { path /metrics }",
            ]  # fmt: skip
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 20.0) -> HAProxy:
        """Start, and wait until a server is up behind it."""
        haproxy = shutil.which("haproxy")
        if haproxy is None:
            pytest.skip("haproxy is not installed (.ci/run installs it)")
        self.config.write_text(self._config())
        self.process = subprocess.Popen(
            [haproxy, "-f", str(self.config), "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        try:
            wait_ready(ready_url(self.url), timeout, between=self._still_running, poll_s=0.1)
        except (NotReady, RuntimeError) as exc:
            self.stop()
            raise RuntimeError(f"haproxy did not come up in front of {self.servers}: {exc}") from exc
        return self

    def _still_running(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"haproxy exited with {self.process.returncode}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def __enter__(self) -> HAProxy:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


@contextmanager
def runtime_api(workdir: Path, proxies: str) -> Iterator[Path]:
    """HAProxy running `proxies` (its frontend/backend sections) with the runtime API on an admin socket,
    as the loadbalancer role opens it; yields the socket's path once it answers."""
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("haproxy is not installed (.ci/run installs it)")
    sock = workdir / "admin.sock"
    config = workdir / "haproxy-api.cfg"
    config.write_text(f"global\n  stats socket {sock} mode 600 level admin\n{proxies}")
    process = subprocess.Popen([haproxy, "-db", "-f", str(config)])
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert process.poll() is None, "HAProxy exited"
            assert time.monotonic() < deadline, "HAProxy did not open its runtime API"
            time.sleep(0.05)
        yield sock
    finally:
        process.terminate()
        process.wait(10)
