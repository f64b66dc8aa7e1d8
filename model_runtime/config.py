"""One typed settings object for the runtime, read from a YAML file, the environment and the command line.

Precedence, lowest first: defaults < config file < environment (`MODEL_RUNTIME_<SECTION>__<KEY>`) < flags.
Every error names the offending key, so that an operator can fix a config file without reading code.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from model_runtime.access import MODEL_NAME, OPEN, KeyFileError, KeyPolicy, read_key_lines
from model_runtime.errors import OperatorError

ENV_PREFIX = "MODEL_RUNTIME_"
# Keys come from this variable rather than a flag: a key on the command line would show in `ps`.
API_KEYS_ENV = "MODEL_RUNTIME_API_KEYS"
# Above this share of a GPU, vLLM leaves no room for a second copy of the model (a hot swap beside).
_HALF = 0.5
ADMIN_KEYS_ENV = "MODEL_RUNTIME_ADMIN_KEYS"


class ConfigError(OperatorError, ValueError):
    """A settings problem, already phrased for the operator (names the key and the source)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSettings(_Section):
    path: str = Field(
        description="Model folder (a Hugging Face folder: safetensors preferred; a .bin is read with "
        "weights_only), or registry:NAME[@ALIAS|:VERSION], pulled from registry.url on start"
    )
    served_name: str | None = Field(default=None, description="Name clients use; defaults to the folder name")
    version: str | None = Field(default=None, description="Version reported in /v1/models; informational")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description=(
            "Weights' precision; auto: bf16 on a GPU that has it (fp16 otherwise); on CPU, bf16 where"
            " the CPU computes it (AMX, AVX-512 BF16) and it keeps top-1 agreement with fp32 on a"
            " sample (the check is logged), fp32 elsewhere"
        ),
    )
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N")
    trust_remote_code: bool = Field(
        default=False, description="Let transformers run Python code shipped in the model folder"
    )
    max_context: int | None = Field(default=None, gt=0, description="Cap below the model's own context")
    engine: Literal["auto", "builtin", "vllm"] = Field(
        default="auto",
        description="builtin: this package's engines, chosen by the folder's format (torch, ONNX, "
        "ensembles); vllm: vLLM in its own environment (vllm.python) behind this server; auto: vllm "
        "on a CUDA host where vllm.python is set and the format is one vLLM reads, builtin otherwise",
    )
    tensor_parallel_size: int = Field(
        default=1, gt=0, description="GPUs one copy of the model is split across, layer by layer (vllm)"
    )
    pipeline_parallel_size: int = Field(
        default=1, gt=0, description="GPUs the model's layers are spread over in stages (vllm)"
    )
    load_timeout_s: float = Field(
        default=900.0, gt=0, description="Longest the engine may take to load, compile and warm up the model"
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("must be auto, cpu, cuda or cuda:N")

    @model_validator(mode="after")
    def _parallel_needs_vllm(self) -> ModelSettings:
        if self.engine == "builtin" and self.gpus > 1:
            raise ValueError(
                f"tensor_parallel_size x pipeline_parallel_size is {self.gpus}: the builtin engine runs "
                "a model on one device; set engine: vllm to split it across GPUs"
            )
        return self

    @property
    def name(self) -> str:
        return self.served_name or Path(self.path).name

    @property
    def gpus(self) -> int:
        """The devices one copy of the model needs."""
        return self.tensor_parallel_size * self.pipeline_parallel_size


class ServerSettings(_Section):
    host: str = Field(
        default="127.0.0.1", description="Address of the public listener (/v1/..., /health/...)"
    )
    # A lone instance listens where instance 1 of a fleet does (the model_runtime role's
    # model_runtime_base_port, 8101; its internal listener: model_runtime_metrics_base_port): the load
    # balancer's front port (loadbalancer_port, 8000) stays the fleet's. tests/unit/test_config.py holds
    # these defaults to the roles'.
    port: int = Field(default=8101, ge=0, le=65535, description="Port of the public listener")
    api_keys_file: Path | None = Field(
        default=None,
        description="One key per line, optionally with its settings (priority=interactive|standard|batch, "
        "models=a,b; requests_per_minute and tokens_per_minute are the load balancer's), '#' starts a "
        f"comment; {API_KEYS_ENV}=k1,k2 adds keys without settings",
    )
    allow_unauthenticated: bool = Field(
        default=False,
        description="Serve without keys; without keys the server refuses to start unless this is set",
    )
    shutdown_grace_s: float = Field(
        default=30.0, ge=0, description="Time in-flight requests (streams too) get to finish on SIGTERM"
    )
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024,
        gt=0,
        description="Largest request body read (larger: 413), checked after the key",
    )
    admin_keys_file: Path | None = Field(
        default=None,
        description=f"Keys of the admin endpoints (hot swap), one per line, or {ADMIN_KEYS_ENV}=k1,k2; "
        "without any, /admin is off",
    )
    hot_swap: Literal["auto", "beside", "restart"] = Field(
        default="auto",
        description="How a hot swap loads the new version: beside the old one (no pause; room for two "
        "copies), restart (the instance drains, out of its pool, and the new version replaces the old), "
        "or auto: beside, unless two copies cannot fit (vLLM on a GPU with gpu_memory_utilization above 0.5)",
    )
    tls_certfile: Path | None = Field(
        default=None, description="PEM certificate: both listeners serve TLS with it (and tls_keyfile)"
    )
    tls_keyfile: Path | None = Field(default=None, description="PEM private key of tls_certfile")
    state_dir: Path | None = Field(
        default=None,
        description="Folder of this instance's state across restarts (its count of process starts); "
        "none: each process counts only itself",
    )
    max_prompt_chars: int = Field(
        default=1_000_000,
        gt=0,
        description="Characters of prompt text (all prompts, or all message contents) in one request; "
        "checked before tokenizing",
    )
    tokenizer_threads: int = Field(
        default=2, gt=0, description="Threads that tokenize prompts, off the event loop; more requests wait"
    )
    listed_models: list[str] = Field(
        default_factory=list,
        description="Models served beside this one through the same endpoint (another instance group "
        "behind a routing tier): GET /v1/models lists them too, to the keys that may use them",
    )
    # The internal listener: /metrics, /admin and /openapi.json, apart from the API that clients reach.
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Address of the internal listener (/metrics, /admin, /openapi.json): loopback or private",
    )
    metrics_port: int = Field(
        default=9101, ge=0, le=65535, description="Port of the internal listener; not server.port"
    )

    @field_validator("listed_models")
    @classmethod
    def _model_names(cls, value: list[str]) -> list[str]:
        # The names a key's models= lists (model_runtime/access.py): the ones it is compared with.
        for index, name in enumerate(value):
            if not MODEL_NAME.fullmatch(name):
                raise ValueError(f"entry {index + 1} {name!r}: not a model name")
        return value

    @field_validator("metrics_host")
    @classmethod
    def _internal_address(cls, value: str) -> str:
        """Scrapers and operators reach the internal listener; clients must not, so it never binds a
        wildcard or a public address."""
        if value == "localhost":
            return value
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r}: must be an IP address (loopback or private) or localhost") from None
        if address.is_unspecified or not (address.is_loopback or address.is_private):
            raise ValueError(f"{value}: must be a loopback or private address, not a public or wildcard one")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerSettings:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("tls_certfile and tls_keyfile: give both to serve TLS, or neither")
        for name in ("tls_certfile", "tls_keyfile"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: {path} is not a file")
        return self

    @model_validator(mode="after")
    def _two_listeners(self) -> ServerSettings:
        if self.metrics_port and self.metrics_port == self.port:
            raise ValueError(
                f"metrics_port: {self.metrics_port} is server.port too; the internal listener needs its own"
            )
        return self


class SchedulerSettings(_Section):
    max_batch_size: int = Field(default=32, gt=0, description="Sequences decoded together in one step")
    max_queue: int = Field(
        default=64, ge=0, description="Requests waiting beyond the free batch slots; more get 429"
    )
    max_prefill_tokens: int = Field(
        default=4096, gt=0, description="Prompt tokens per pass; a longer prompt is prefilled in chunks"
    )
    queue_timeout_s: float = Field(default=60.0, gt=0, description="Longest wait for a batch slot (then 429)")
    request_timeout_s: float = Field(default=600.0, gt=0, description="Longest a request may run (then 504)")
    engine_stall_s: float = Field(
        default=30.0,
        gt=0,
        description="Readiness turns 503 when the engine completes no step for this long while work waits",
    )
    engine_stall_exit_s: float = Field(
        default=120.0,
        gt=0,
        description="A stall this long ends the requests in flight (503 engine_stalled) and the process "
        "(exit 1, for the service manager to restart it); at least engine_stall_s",
    )
    max_n: int = Field(default=8, gt=0, description="Largest `n` (choices per request) accepted")
    priority_max_bypass: int = Field(
        default=8,
        ge=0,
        description="How many requests of a higher priority class that arrived later may be admitted "
        "ahead of a waiting one before it goes next: what bounds a lower class's wait (0: arrival order)",
    )
    interactive_slots: int = Field(
        default=0,
        ge=0,
        description="Batch slots that only interactive requests may take, so that one finds a slot "
        "without waiting for standard or batch work to finish; below max_batch_size",
    )
    torch_threads: int | None = Field(
        default=None,
        gt=0,
        description="Engine intra-op threads; none: measured at start (all cores, or one left free for "
        "the HTTP process, whichever decodes faster)",
    )

    @model_validator(mode="after")
    def _slots_left_for_every_class(self) -> SchedulerSettings:
        if self.interactive_slots >= self.max_batch_size:
            raise ValueError(
                f"interactive_slots: {self.interactive_slots} leaves no batch slot of {self.max_batch_size} "
                "(max_batch_size) to standard and batch requests"
            )
        return self

    @model_validator(mode="after")
    def _stall_limits_in_order(self) -> SchedulerSettings:
        if self.engine_stall_exit_s < self.engine_stall_s:
            raise ValueError(
                f"engine_stall_exit_s: {self.engine_stall_exit_s} is below engine_stall_s "
                f"({self.engine_stall_s}); the exit comes after readiness has turned 503"
            )
        return self


class RegistrySettings(_Section):
    url: str | None = Field(
        default=None, description="Registry (a folder or s3://bucket/prefix) for registry: paths"
    )
    cache_dir: Path = Field(
        default=Path("~/.cache/model-runtime/registry"), description="Where pulled versions are kept"
    )


class VllmSettings(_Section):
    python: Path | None = Field(
        default=None,
        description="The interpreter of vLLM's own environment (its pins differ from this package's); "
        "none: the vllm engine is off",
    )
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="Share of each GPU's memory vLLM takes for weights and cache"
    )
    cpu_kv_cache_gib: int = Field(
        default=4, gt=0, description="On a CPU host: GiB of memory vLLM keeps for the attention cache"
    )
    enforce_eager: bool = Field(
        default=False,
        description="Skip compilation and CUDA graphs: a faster start, slower tokens",
    )

    @property
    def one_copy_per_gpu(self) -> bool:
        """Whether one copy of the model takes more than half of each GPU: no room for a second beside it."""
        return self.gpu_memory_utilization > _HALF


class LoggingSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Least severe level logged"
    )
    json_format: bool = Field(
        default=False, alias="json", description="One JSON object per line, with the request id"
    )


class Settings(_Section):
    model: ModelSettings = Field(description="The model served: where it is, its name, where it runs")
    server: ServerSettings = Field(
        default=ServerSettings(), description="The HTTP side: listeners, keys, TLS, request limits"
    )
    scheduler: SchedulerSettings = Field(
        default=SchedulerSettings(), description="Batching, queueing, time limits and the engine's threads"
    )
    registry: RegistrySettings = Field(
        default=RegistrySettings(),
        description="The model registry that registry: paths and ensemble members come from",
    )
    vllm: VllmSettings = Field(
        default=VllmSettings(), description="Where vLLM's environment is and how it uses the device"
    )
    logging: LoggingSettings = Field(default=LoggingSettings(), description="What the runtime logs, and how")

    @model_validator(mode="after")
    def _vllm_installed(self) -> Settings:
        if self.model.engine == "vllm" and self.vllm.python is None:
            raise ValueError(
                "vllm.python: model.engine is vllm, which needs the interpreter of vLLM's environment"
            )
        return self

    @model_validator(mode="after")
    def _room_for_a_swap_beside(self) -> Settings:
        share = self.vllm.gpu_memory_utilization
        on_gpu = self.model.engine == "vllm" and self.model.device != "cpu"
        if self.server.hot_swap == "beside" and on_gpu and self.vllm.one_copy_per_gpu:
            raise ValueError(
                f"server.hot_swap: beside loads a second copy of the model next to the first, but "
                f"vllm.gpu_memory_utilization {share:g} gives one copy that share of each GPU: set hot_swap "
                f"to auto or restart (a drained restart), or gpu_memory_utilization to {_HALF:g} or less"
            )
        return self

    def api_keys(self) -> dict[str, KeyPolicy]:
        """Keys from the key file (each with its policy) and the environment (the open policy). Read once
        at start."""
        keys = _read_keys("server.api_keys_file", self.server.api_keys_file, API_KEYS_ENV)
        if not keys and not self.server.allow_unauthenticated:
            raise ConfigError(
                "server.api_keys_file: no API key configured; give a key file or "
                f"{API_KEYS_ENV}, or set server.allow_unauthenticated: true to serve without auth"
            )
        return keys

    def admin_keys(self) -> frozenset[str]:
        """Keys of the admin endpoints; none means the admin endpoints do not exist."""
        return frozenset(_read_keys("server.admin_keys_file", self.server.admin_keys_file, ADMIN_KEYS_ENV))


def _read_keys(setting: str, path: Path | None, env: str) -> dict[str, KeyPolicy]:
    keys: dict[str, KeyPolicy] = {}
    if path is not None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{setting}: cannot read {path}: {exc}") from exc
        try:
            keys.update(read_key_lines(text.splitlines(), f"{setting} ({path})"))
        except KeyFileError as exc:
            raise ConfigError(str(exc)) from None
    for key in os.environ.get(env, "").split(","):
        if key.strip():
            keys.setdefault(key.strip(), OPEN)
    return keys


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """MODEL_RUNTIME_SCHEDULER__MAX_QUEUE=8 -> {"scheduler": {"max_queue": "8"}} (pydantic coerces)."""
    tree: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == API_KEYS_ENV or "__" not in name:
            continue
        section, key = name[len(ENV_PREFIX) :].lower().split("__", 1)
        tree.setdefault(section, {})[key] = value
    return tree


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping):
            current = merged.get(key)
            merged[key] = _merge(dict(current) if isinstance(current, Mapping) else {}, value)
        elif value is not None:
            merged[key] = value
    return merged


def _read_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of sections")
    return data


def _describe(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        if item["type"] == "value_error":  # our own validators' words, without pydantic's prefix
            message = str(item["ctx"]["error"])
        lines.append(f"{key}: {message}")
    return f"invalid settings ({source}):\n  " + "\n  ".join(lines)


def load_settings(
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings; raises ConfigError naming every bad key."""
    environ = os.environ if environ is None else environ
    tree: dict[str, Any] = _read_file(config_file) if config_file else {}
    tree = _merge(tree, _env_overrides(environ))
    tree = _merge(tree, overrides or {})
    sources = ", ".join(
        s for s in (str(config_file) if config_file else "", "environment", "flags" if overrides else "") if s
    )
    if "model" not in tree or not (tree["model"] or {}).get("path"):
        raise ConfigError(
            f"model.path: required (--model, model.path in the config file); read from {sources}"
        )
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, sources)) from exc
