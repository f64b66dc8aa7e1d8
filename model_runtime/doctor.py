"""`model-runtime doctor --config FILE`: is this host fit to serve the instance that FILE configures?

Checks the NVIDIA driver (skipped where the PCI bus shows no NVIDIA device), the GPU as torch sees it,
the engine the instance gets and the builds it runs on (driver <-> CUDA <-> torch <-> vLLM, see
compat.py), whether that engine implements the model's architecture, the runtime version (installed,
and running), the model folder against its manifest, the instance's readiness, and free disk on the
model's filesystem. Prints one JSON report and exits 0 (all ok), 1 (a
warning) or 2 (a failure), so that scripts and `fab doctor` can act on it. Every check stands alone:
one that cannot run (nothing listening, no manifest) says why in its own line.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import ipaddress
import json
import shutil
import ssl
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from prometheus_client.parser import text_string_to_metric_families

from model_runtime import __version__
from model_runtime.compat import GpuHost, check_architecture, check_builds, driver_cuda
from model_runtime.config import ConfigError, Settings, load_settings
from model_runtime.readiness import answer, ready_url
from model_runtime.registry.manifest import ManifestError, read_manifest, verify_folder
from model_runtime.registry.resolve import PREFIX as REGISTRY_PREFIX
from model_runtime.vllm.probe import VllmBuild, VllmProbeError, probe

Status = Literal["ok", "warn", "fail", "skip"]
EXIT_CODES = {"ok": 0, "warn": 1, "fail": 2}
PCI_DEVICES = Path("/sys/bus/pci/devices")
NVIDIA_VENDOR = "0x10de"
GIB = 1 << 30


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str


@dataclass(frozen=True)
class Limits:
    min_free_gb: float = 10.0  # warn below
    fail_free_gb: float = 1.0  # fail below
    timeout_s: float = 5.0  # per HTTP probe and per nvidia-smi call
    probe_timeout_s: float = 120.0  # for vLLM's interpreter to import vLLM and say what it holds


def overall(checks: list[Check]) -> Literal["ok", "warn", "fail"]:
    statuses = {c.status for c in checks}
    return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "ok"


# --- the GPU --------------------------------------------------------------------------------------------
def nvidia_devices(pci_devices: Path = PCI_DEVICES) -> list[str]:
    """PCI addresses of NVIDIA devices, read from sysfs (no driver needed to see them there)."""
    found = []
    for vendor in sorted(pci_devices.glob("*/vendor")):
        try:
            if vendor.read_text().strip().lower() == NVIDIA_VENDOR:
                found.append(vendor.parent.name)
        except OSError:
            continue
    return found


def check_driver(gpus: list[str], nvidia_smi: str | None, timeout_s: float) -> Check:
    name = "nvidia_driver"
    if not gpus:
        return Check(name, "skip", "no GPU: no NVIDIA device on the PCI bus")
    if nvidia_smi is None:
        return Check(
            name, "fail", f"{len(gpus)} NVIDIA device(s) but no nvidia-smi: is the driver installed?"
        )
    query = [nvidia_smi, "--query-gpu=name,driver_version", "--format=csv,noheader"]
    try:
        done = subprocess.run(query, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check(name, "fail", f"nvidia-smi did not answer: {exc}")
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return Check(name, "fail", f"nvidia-smi exited {done.returncode}: {reason[0]}")
    answered = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if len(answered) < len(gpus):
        return Check(
            name, "fail", f"{len(gpus)} NVIDIA device(s) on the bus, the driver sees {len(answered)}"
        )
    return Check(name, "ok", "; ".join(answered))


def check_torch_gpu(gpus: list[str], device: str) -> Check:
    name = "torch_gpu"
    if not gpus:
        return Check(name, "skip", "no GPU on this host")
    if device == "cpu":
        return Check(name, "skip", "model.device is cpu")
    import torch  # only here: the other checks run without it

    if not torch.cuda.is_available():
        return Check(
            name,
            "fail",
            f"torch {torch.__version__} sees no CUDA device (a CPU build of torch, or CUDA_VISIBLE_DEVICES?)",
        )
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return Check(name, "ok", f"torch {torch.__version__}, CUDA {torch.version.cuda}: {', '.join(names)}")


# --- the engine -----------------------------------------------------------------------------------------
# Model formats whose config.json names the architecture an engine must implement.
ARCHITECTURE_FORMATS = frozenset({"safetensors", "pytorch", "int8"})


def gpu_host(gpus: list[str], nvidia_smi: str | None, timeout_s: float) -> GpuHost:
    """The GPUs and the newest CUDA their driver supports (from nvidia-smi's header)."""
    if not gpus or nvidia_smi is None:
        return GpuHost(len(gpus), None)
    try:
        done = subprocess.run([nvidia_smi], capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return GpuHost(len(gpus), None)
    return GpuHost(len(gpus), driver_cuda(done.stdout))


def engine_checks(settings: Settings, host: GpuHost, probe_timeout_s: float) -> list[Check]:
    """Which engine the instance gets, whether the builds under it fit the host, and whether it
    implements the model's architecture."""
    import torch  # only here: the other checks run without it
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from model_runtime.engine.base import ModelLoadError
    from model_runtime.engine.loading import detect_format
    from model_runtime.vllm.choice import choose_engine

    if settings.model.path.startswith(REGISTRY_PREFIX):
        skipped = f"{settings.model.path}: pulled at the start; run doctor on its folder to check it"
        return [Check("engine", "skip", skipped)]
    vllm: VllmBuild | None = None
    if settings.vllm.python is not None and settings.model.engine != "builtin":
        try:
            vllm = probe(settings.vllm.python, probe_timeout_s)
        except VllmProbeError as exc:
            severity: Status = "fail" if settings.model.engine == "vllm" else "warn"
            return [Check("engine", severity, f"vllm.python: {exc}")]
    try:
        fmt = detect_format(Path(settings.model.path))
        engine = choose_engine(settings.model, settings.vllm, fmt)
    except ModelLoadError as exc:
        return [Check("engine", "fail", str(exc))]
    status, detail = check_builds(host, engine, torch.__version__, torch.version.cuda, vllm)
    checks = [Check("engine", status, detail)]
    if fmt.kind in ARCHITECTURE_FORMATS:
        config = json.loads((fmt.folder / "config.json").read_text())
        status, detail = check_architecture(
            config.get("architectures") or [], engine, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values(), vllm
        )
        checks.append(Check("model_architecture", status, detail))
    return checks


# --- the runtime and the instance -----------------------------------------------------------------------
def _listener_url(host: str, port: int, tls: bool = False) -> str:
    """Where to reach a listener from this host: a wildcard listen address means loopback."""
    scheme = "https" if tls else "http"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # a host name
        return f"{scheme}://{host}:{port}"
    if address.is_unspecified:
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    shown = f"[{address}]" if address.version == 6 else str(address)
    return f"{scheme}://{shown}:{port}"


def instance_url(settings: Settings) -> str:
    """The instance's API and health (the public listener)."""
    return _listener_url(settings.server.host, settings.server.port, settings.server.tls_certfile is not None)


def metrics_url(settings: Settings) -> str:
    """The instance's metrics (the internal listener)."""
    return _listener_url(
        settings.server.metrics_host, settings.server.metrics_port, settings.server.tls_certfile is not None
    )


def instance_tls(settings: Settings) -> ssl.SSLContext | None:
    """For an instance serving TLS: a client that trusts exactly the instance's own certificate. Asked
    from its own host, by an address its certificate need not name, the certificate is what is checked."""
    if settings.server.tls_certfile is None:
        return None
    context = ssl.create_default_context(cafile=settings.server.tls_certfile)
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the certificate itself is the trust anchor
    context.check_hostname = False
    return context


def running_version(internal_url: str, timeout_s: float, tls: ssl.SSLContext | None = None) -> str | None:
    """The version the instance reports in its metrics (model_runtime_info), or None if unknown."""
    try:
        status, text = answer(f"{internal_url}/metrics", timeout_s, tls)
    except OSError:
        return None
    if status != 200:
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "model_runtime_info":
                return sample.labels.get("version")
    return None


def check_version(installed: str, running: str | None, base_url: str) -> Check:
    name = "runtime_version"
    try:
        distribution = importlib.metadata.version("model-runtime")
    except importlib.metadata.PackageNotFoundError:
        return Check(name, "warn", f"model_runtime {installed} runs from a source tree, not an install")
    if distribution != installed:
        return Check(name, "warn", f"package metadata says {distribution}, the code says {installed}")
    if running is not None and running != installed:
        return Check(name, "warn", f"installed {installed}, but {base_url} runs {running} (restart it?)")
    return Check(name, "ok", f"model-runtime {installed}" + (f", running at {base_url}" if running else ""))


def check_ready(base_url: str, timeout_s: float, tls: ssl.SSLContext | None = None) -> Check:
    name = "instance_ready"
    url = ready_url(base_url)
    try:
        status, body = answer(url, timeout_s, tls)
    except OSError as exc:
        return Check(name, "fail", f"nothing answers at {url}: {getattr(exc, 'reason', exc)}")
    try:
        health = json.loads(body)
    except ValueError:
        return Check(name, "fail", f"{url} answered {status} with something other than JSON")
    phase, models = health.get("status"), health.get("models") or {}
    if status == 200:
        served = ", ".join(f"{n}@{v}" for n, v in models.items()) or "no models"
        return Check(name, "ok", f"ready, serving {served}")
    # Loading and draining pass on their own; a failed model does not.
    severity: Status = "warn" if phase in ("loading", "draining", "swapping") else "fail"
    return Check(
        name,
        severity,
        f"{url} answered {status}: {phase}" + (f" ({health['detail']})" if health.get("detail") else ""),
    )


# --- the model and its disk -----------------------------------------------------------------------------
def model_folder(settings: Settings) -> Path:
    """Where the model's files are: the folder, or for a registry reference the registry's cache."""
    if settings.model.path.startswith(REGISTRY_PREFIX):
        return Path(settings.registry.cache_dir).expanduser()
    return Path(settings.model.path)


def check_manifest(settings: Settings) -> Check:
    name = "model_manifest"
    if settings.model.path.startswith(REGISTRY_PREFIX):
        return Check(name, "skip", f"{settings.model.path}: the registry checks every file's sha256 on pull")
    folder = Path(settings.model.path)
    if not folder.is_dir():
        return Check(name, "fail", f"{folder}: not a folder")
    if not (folder / "manifest.json").exists():
        return Check(name, "warn", f"{folder}: no manifest.json, so its files cannot be verified")
    try:
        manifest = read_manifest(folder)
        verify_folder(folder, manifest)
    except (ManifestError, KeyError, TypeError) as exc:
        return Check(name, "fail", f"{folder}: {exc}")
    return Check(
        name,
        "ok",
        f"{folder}: {len(manifest['files'])} files match {manifest.get('name')} {manifest.get('version')}",
    )


def check_disk(folder: Path, limits: Limits) -> Check:
    name = "disk_free"
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None:
        return Check(name, "fail", f"{folder}: no such path")
    usage = shutil.disk_usage(existing)
    free_gb = usage.free / GIB
    detail = f"{free_gb:.1f} GiB free of {usage.total / GIB:.1f} GiB on the filesystem of {existing}"
    if free_gb < limits.fail_free_gb:
        return Check(name, "fail", f"{detail}; below {limits.fail_free_gb:g} GiB")
    if free_gb < limits.min_free_gb:
        return Check(name, "warn", f"{detail}; below {limits.min_free_gb:g} GiB")
    return Check(name, "ok", detail)


# --- the whole -------------------------------------------------------------------------------------------
def diagnose(
    settings: Settings,
    limits: Limits,
    pci_devices: Path = PCI_DEVICES,
    nvidia_smi: str | None = None,
) -> list[Check]:
    gpus = nvidia_devices(pci_devices)
    base_url = instance_url(settings)
    tls = instance_tls(settings)
    return [
        check_driver(gpus, nvidia_smi, limits.timeout_s),
        check_torch_gpu(gpus, settings.model.device),
        *engine_checks(settings, gpu_host(gpus, nvidia_smi, limits.timeout_s), limits.probe_timeout_s),
        check_version(__version__, running_version(metrics_url(settings), limits.timeout_s, tls), base_url),
        check_manifest(settings),
        check_ready(base_url, limits.timeout_s, tls),
        check_disk(model_folder(settings), limits),
    ]


def report(checks: list[Check]) -> dict:
    return {"status": overall(checks), "checks": [asdict(c) for c in checks]}


def report_from_output(output: str) -> dict:
    """The report in what a remote `doctor` printed (after any warnings on stderr); a failing report of
    its own when there is none (no such release, no doctor command in it)."""
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if line == "{"]  # indented JSON: only its first line
    if starts:
        try:
            return json.loads("\n".join(lines[starts[-1] :]))
        except ValueError:
            pass
    tail = " | ".join(lines[-3:]) or "no output"
    return report([Check("doctor", "fail", f"no report: {tail}")])


def _run(args: argparse.Namespace) -> int:
    limits = Limits(args.min_free_gb, args.fail_free_gb, args.timeout)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        checks = [Check("settings", "fail", str(exc))]
    else:
        where = f"{args.config}" if args.config else "the environment"
        checks = [
            Check("settings", "ok", f"read from {where}: model {settings.model.name}"),
            *diagnose(settings, limits, nvidia_smi=shutil.which("nvidia-smi")),
        ]
    result = report(checks)
    print(json.dumps(result, indent=2))
    return EXIT_CODES[result["status"]]


def register(commands: argparse._SubParsersAction) -> None:
    doctor = commands.add_parser(
        "doctor", help="check this host and the instance its settings describe; exit 0 ok, 1 warn, 2 fail"
    )
    doctor.add_argument("--config", type=Path, help="the instance's YAML settings file (as for serve)")
    doctor.add_argument("--min-free-gb", type=float, default=Limits.min_free_gb, help="warn below (GiB)")
    doctor.add_argument("--fail-free-gb", type=float, default=Limits.fail_free_gb, help="fail below (GiB)")
    doctor.add_argument("--timeout", type=float, default=Limits.timeout_s, help="per probe (seconds)")
    doctor.set_defaults(run=_run)
