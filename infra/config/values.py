"""How the stack's configuration is read: the objects (Section) and the value types, each refusal
phrased for the operator.

Values come as YAML gives them or as `pulumi config set` writes them (text), so a whole number may
arrive as "3" or 3.0, and a flag as "true"; a bool is never a number, and a string is never a list.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, model_validator
from pydantic.alias_generators import to_camel

from infra.config.errors import Problem
from infra.config.gpus import GPUS_PER_INSTANCE_TYPE
from model_runtime.registry.registry import RegistryError, parse_ref


class Section(BaseModel):
    """One object of the configuration: its keys are camelCase, as `pulumi config` spells them, and an
    unknown one is an error rather than a silent default."""

    model_config = ConfigDict(alias_generator=to_camel, extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _as_given(cls, raw: Any) -> Any:
        """Pulumi hands a program its objects as JSON text, and an empty value means the default."""
        if not isinstance(raw, dict):
            return raw
        given = {key: value for key, value in raw.items() if value is not None and value != ""}
        for field in cls.model_fields.values():
            if not (isinstance(field.annotation, type) and issubclass(field.annotation, Section)):
                continue
            key = str(field.alias)
            given[key] = decoded(given, key, "an object")
            # A section left out is a section of defaults, still checked (its required keys, its rules).
            if given.get(key) is None:
                given[key] = {}
        return given


def decoded(given: dict[str, Any], key: str, what: str) -> Any:
    """given[key], decoded when Pulumi handed it over as JSON text (a top-level object or list)."""
    value = given.get(key)
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise Problem(f"must be {what}, got {value!r}", key=key) from None


def merged(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """override over base, objects merged key by key (a list or a value replaces)."""
    result = dict(base)
    for key, value in override.items():
        current = result.get(key)
        result[key] = (
            merged(current, value) if isinstance(value, Mapping) and isinstance(current, Mapping) else value
        )
    return result


def _whole(value: Any) -> int:
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Problem(f"must be a whole number, got {value!r}")
    return value


def _flag(value: Any) -> bool:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise Problem(f"must be true or false, got {value!r}")
    return value


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise Problem(f"must be a list of strings, got {value!r}")
    return tuple(value)


def _wholes(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and float(v).is_integer() for v in value
    ):
        raise Problem(f"must be a list of whole numbers, got {value!r}")
    return tuple(int(v) for v in value)


def one_of(*choices: str) -> BeforeValidator:
    def check(value: Any) -> str:
        if value not in choices:
            raise Problem(f"must be one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return BeforeValidator(check)


def matching(pattern: str, what: str) -> AfterValidator:
    """Text that is all of pattern; else `'VALUE' is not WHAT`."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise Problem(f"{value!r} is not {what}")
        return value

    return AfterValidator(check)


def _each(check: Callable[[str], object]) -> AfterValidator:
    def check_all(values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            check(value)
        return values

    return AfterValidator(check_all)


def _vpc_network(cidr: str) -> str:
    try:
        network = ipaddress.ip_network(cidr)
    except ValueError:
        raise Problem(f"{cidr!r} is not an IPv4 network (e.g. 10.40.0.0/16)") from None
    if network.version != 4 or not 16 <= network.prefixlen <= 22:
        raise Problem(f"must be an IPv4 network from /16 to /22, got {cidr}")
    return cidr


def _network(cidr: str) -> str:
    try:
        ipaddress.ip_network(cidr)
    except ValueError:
        raise Problem(f"{cidr!r} is not a network (e.g. 203.0.113.0/24)") from None
    return cidr


def _instance_type(name: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9-]*\.[a-z0-9]+", name):
        raise Problem(f"{name!r} is not an EC2 instance type")
    if name not in GPUS_PER_INSTANCE_TYPE:
        families = sorted({t.split(".")[0] for t in GPUS_PER_INSTANCE_TYPE})
        raise Problem(
            f"{name!r} is not a GPU instance type this stack knows ({', '.join(families)}); "
            "infra/config/gpus.py lists them with their GPU counts"
        )
    return name


def _model_ref(ref: str) -> str:
    """The registry's own rules, and no character a YAML or shell line would read differently."""
    try:
        parse_ref(ref)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*([@:][A-Za-z0-9._-]+)?", ref):
            raise RegistryError(f"{ref!r}: not a reference (NAME, NAME@ALIAS or NAME:VERSION)")
    except RegistryError as exc:
        raise Problem(f"{exc}: e.g. demo@stable or demo:20261128-101500.000000-a1b2c3") from None
    return ref


class ApiKeysRef(BaseModel):
    """Where the instances read their API keys at boot: never the keys themselves."""

    model_config = ConfigDict(frozen=True)

    service: str  # ssm or secretsmanager
    name: str  # a parameter name (/a/b) or a secret's name or ARN


def _api_keys(value: Any) -> ApiKeysRef:
    if not isinstance(value, str):
        raise Problem(f"must be a string, got {value!r}")
    service, _, name = value.partition(":")
    if service not in ("ssm", "secretsmanager") or not name:
        raise Problem(
            "must say where the keys are, ssm:/PARAMETER/NAME (a SecureString) or secretsmanager:NAME; "
            "the keys themselves never go into stack configuration or user data"
        )
    if service == "ssm" and not re.fullmatch(r"/[A-Za-z0-9_.\-/]+", name):
        raise Problem(f"{name!r} is not an SSM parameter name (/path/to/name)")
    if service == "secretsmanager" and not re.fullmatch(r"[A-Za-z0-9/_+=.@:\-]+", name):
        raise Problem(f"{name!r} is not a Secrets Manager name or ARN")
    return ApiKeysRef(service=service, name=name)


Whole = Annotated[int, BeforeValidator(_whole)]
Flag = Annotated[bool, BeforeValidator(_flag)]
Strings = Annotated[tuple[str, ...], BeforeValidator(_strings)]
Wholes = Annotated[tuple[int, ...], BeforeValidator(_wholes)]
RuntimeRelease = Annotated[
    str, matching(r"[0-9]+(\.[0-9]+)*([a-z0-9.+-]*)", "a runtime release (e.g. 0.1.0)")
]
Sha256 = Annotated[str, matching(r"[0-9a-f]{64}", "a sha256 (64 hex digits)")]
ModelRef = Annotated[str, AfterValidator(_model_ref)]
# What clients send as the body's `model`: the same rule as the registry's and the inventory's names.
ModelName = Annotated[
    str,
    matching(
        r"[A-Za-z0-9][A-Za-z0-9._-]*",
        "a model name (a letter or digit, then letters, digits, '.', '_' or '-')",
    ),
]
ApiKeysSource = Annotated[ApiKeysRef, BeforeValidator(_api_keys)]
KmsKeyArn = Annotated[str, matching(r"arn:aws[a-z-]*:kms:.+", "a KMS key ARN")]
AcmCertificateArn = Annotated[str, matching(r"arn:aws[a-z-]*:acm:.+", "an ACM certificate ARN")]
BucketName = Annotated[
    str, matching(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", "an S3 bucket name (a-z, 0-9, '.', '-')")
]
KeyPrefix = Annotated[str, matching(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*", "a key prefix")]
AmiId = Annotated[str, matching(r"ami-[0-9a-f]{8,17}", "an AMI ID (ami-...)")]
VpcNetwork = Annotated[str, AfterValidator(_vpc_network)]
Networks = Annotated[Strings, _each(_network)]
InstanceTypes = Annotated[Strings, _each(_instance_type)]
