"""The HTTP process's side of the vLLM engine: start `python -m model_runtime.vllm.worker` with vLLM's
interpreter, on the child's ends of EngineProcess's pipes.

vLLM's environment has its own pins (another transformers, its own torch build), so nothing of ours is
installed there: the worker imports this very package through a folder that holds only a link to it,
which keeps the front and the worker at the same version by construction.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import pickle
import shutil
import signal
import subprocess
import tempfile
from multiprocessing.connection import Connection
from pathlib import Path

import model_runtime
from model_runtime.scheduler.worker.parent import ChildProcess
from model_runtime.vllm.interpreter import foreign_environment
from model_runtime.vllm.params import engine_args
from model_runtime.vllm.spec import VllmSpec

WORKER_MODULE = "model_runtime.vllm.worker"


@functools.cache
def package_path() -> Path:
    """A folder that holds only a link to this package: the vLLM process's import path for it (the
    folder this package is installed in would bring our other dependencies along)."""
    folder = Path(tempfile.mkdtemp(prefix="model-runtime-vllm-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    (folder / "model_runtime").symlink_to(Path(model_runtime.__file__).resolve().parent)
    return folder


def vllm_environment(spec: VllmSpec, base: dict[str, str]) -> dict[str, str]:
    """vLLM's environment for the spec: base without our import path, offline and quiet (models come
    from our registry, nothing phones home), its CPU cache and its device."""
    env = foreign_environment(base)
    env.update(
        HF_HUB_OFFLINE="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        VLLM_CPU_KVCACHE_SPACE=str(spec.vllm.cpu_kv_cache_gib),
    )
    device = spec.model.device
    if device.startswith("cuda:"):
        env["CUDA_VISIBLE_DEVICES"] = device.removeprefix("cuda:")
    # vLLM's CPU build binds its threads to cores counted from 0 and keeps one core for its own front:
    # every instance of a host would compute on core 0 (the second of two on one host never became ready
    # within 3 minutes here). Unbound, the system spreads them; an operator's own binding is kept.
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    if engine_args(spec).get("distributed_executor_backend") == "uni":
        # vLLM's CPU build turns the one-process executor back into worker processes unless this is 0.
        # Its async engine, ours and its server's, keeps the engine core in a process of its own whatever
        # this says.
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    return env


def worker_environment(spec: VllmSpec, base: dict[str, str]) -> dict[str, str]:
    """The worker's environment: vLLM's, and this package through its link folder."""
    return {**vllm_environment(spec, base), "PYTHONPATH": str(package_path()), "PYTHONUNBUFFERED": "1"}


class WorkerProcess:
    """The vLLM process as EngineProcess watches it. It leads a process group of its own (vLLM starts
    engine-core and worker processes under it): a Ctrl-C or a signal to the server's group reaches the
    server alone, which drains and then stops the engine; a kill takes the whole group."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen

    @property
    def exitcode(self) -> int | None:
        return self._popen.poll()

    def is_alive(self) -> bool:
        return self._popen.poll() is None

    def join(self, timeout: float | None = None) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._popen.pid, signal.SIGKILL)


class VllmLaunch:
    """Starts the vLLM process (a Launch for EngineProcess). vLLM's own metrics (vllm:*) go to files in
    metrics_dir (Prometheus's multiprocess mode, which vLLM supports for its own server's processes);
    the front's /metrics reads them from there, beside ours."""

    def __init__(self, spec: VllmSpec) -> None:
        assert spec.vllm.python is not None, "settings check: engine vllm needs vllm.python"
        self.spec = spec
        self.python = spec.vllm.python
        self.metrics_dir = Path(tempfile.mkdtemp(prefix="model-runtime-vllm-metrics-"))

    def __call__(self, commands: Connection, events: Connection) -> ChildProcess:
        fds = (commands.fileno(), events.fileno())
        env = worker_environment(self.spec, dict(os.environ))
        env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        popen = subprocess.Popen(
            [str(self.python), "-m", WORKER_MODULE, *map(str, fds)],
            stdin=subprocess.PIPE,
            pass_fds=fds,
            env=env,
            start_new_session=True,
        )
        assert popen.stdin is not None
        # The spec, once; the pipes carry everything after it. A worker that died at once is seen on
        # the events pipe (EngineProcess reports its exit code).
        with contextlib.suppress(BrokenPipeError), popen.stdin:
            popen.stdin.write(pickle.dumps(self.spec))
        return WorkerProcess(popen)

    def close(self) -> None:
        """After the process ended: its metric files go."""
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
