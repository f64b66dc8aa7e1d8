"""Jinja filters over model_runtime_api_keys, whose entries are a key (a string: the key alone, or a line
of the key file's grammar, `KEY priority=batch models=a,b`, as an SSM parameter holds them) or a mapping
(key, priority, models, requests_per_minute, tokens_per_minute). One parser judges both forms: the
runtime's own (model_runtime/access.py). Every problem names the entry by its place, never the key."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

from model_runtime.access import LIMITS, SETTINGS, KeyFileError, KeyPolicy, parse_key_line, policy_of

_FIELDS = ("key", *SETTINGS)


def _entry(entry: object, where: str) -> tuple[str, KeyPolicy]:
    if isinstance(entry, str):
        parsed = parse_key_line(entry, where)
        if parsed is None:
            raise KeyFileError(f"{where}: no key")
        return parsed
    if not isinstance(entry, Mapping):
        raise KeyFileError(f"{where}: a key, or a mapping with `key` and its settings")
    unknown = sorted(str(name) for name in entry if name not in _FIELDS)
    if unknown:
        raise KeyFileError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(_FIELDS)}")
    key = entry.get("key")
    if not isinstance(key, str) or not key or any(c.isspace() or c == "#" for c in key):
        raise KeyFileError(f"{where}: `key` must be a string without spaces or '#'")
    models = entry.get("models")
    values = {name: str(entry[name]) for name in SETTINGS if entry.get(name) is not None}
    if models is not None:
        if not isinstance(models, list):
            raise KeyFileError(f"{where}: models must be a list of model names")
        values["models"] = ",".join(str(m) for m in models)
    return key, policy_of(values, where)


def _policies(entries: object) -> list[tuple[str, KeyPolicy]]:
    if not isinstance(entries, list):
        raise KeyFileError("model_runtime_api_keys: must be a list")
    policies = [_entry(e, f"model_runtime_api_keys entry {i}") for i, e in enumerate(entries, 1)]
    if len({key for key, _ in policies}) != len(policies):
        raise KeyFileError("model_runtime_api_keys: a key is given twice")
    return policies


def api_key_problems(entries: object) -> list[str]:
    """[] when every entry reads; else the problem (for a preflight's assert)."""
    try:
        _policies(entries)
    except KeyFileError as exc:
        return [str(exc)]
    return []


def api_key_lines(entries: object) -> list[str]:
    """The runtime's key file: one line a key, with the settings it reads."""
    lines = []
    for key, policy in _policies(entries):
        settings = [f"priority={policy.priority}"]
        if policy.models is not None:
            settings.append("models=" + ",".join(sorted(policy.models)))
        lines.append(" ".join([key, *settings]))
    return lines


def api_key_for(entries: object, model: str) -> str:
    """A key that may use model (the smoke test's); the first one."""
    for key, policy in _policies(entries):
        if policy.may_use(model):
            return key
    raise KeyFileError(f"model_runtime_api_keys: no key may use the model {model!r}")


def key_id(key: str) -> str:
    """What the load balancer knows a key by: the hex SHA-256 of it (keys are random and long, so the
    digest gives nothing away), as HAProxy computes it from the Authorization header."""
    return hashlib.sha256(key.encode()).hexdigest()


def api_key_quotas(entries: object) -> list[str]:
    """HAProxy's map of per-minute limits: `KEY_ID REQUESTS TOKENS` for each key that has a limit (0: no
    limit of that kind)."""
    lines = []
    for key, policy in _policies(entries):
        limits = [getattr(policy, name) or 0 for name in LIMITS]
        if any(limits):
            lines.append(f"{key_id(key)} {limits[0]} {limits[1]}")
    return lines


def model_list(models: Sequence[str]) -> str:
    """The body of GET /v1/models listing these models, compact (one line of a map file). The load
    balancer knows the models' names only: an instance's own list adds its version and context length."""
    cards = [{"id": name, "object": "model", "created": 0, "owned_by": "model-runtime"} for name in models]
    return json.dumps({"object": "list", "data": cards}, separators=(",", ":"))


def api_key_model_lists(entries: object, served: Sequence[str]) -> list[str]:
    """HAProxy's map of what each key sees: `KEY_ID BODY`, where BODY is GET /v1/models's answer with the
    served models the key may use. A key in it is a key the fleet knows."""
    return [
        f"{key_id(key)} {model_list([m for m in served if policy.may_use(m)])}"
        for key, policy in _policies(entries)
    ]


class FilterModule:
    def filters(self) -> dict:
        return {
            "api_key_problems": api_key_problems,
            "api_key_lines": api_key_lines,
            "api_key_for": api_key_for,
            "api_key_quotas": api_key_quotas,
            "api_key_model_lists": api_key_model_lists,
            "model_list": model_list,
        }
