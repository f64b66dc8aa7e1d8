"""How a problem of the stack's configuration is reported: as `pulumi config` spells its key
(`model-runtime:fleet.maxSize: ...`), in the operator's words, and as a pulumi.RunError, which ends
`pulumi up` with the message and no traceback."""

from __future__ import annotations

from typing import cast

import pulumi
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

PROJECT = "model-runtime"


class ConfigError(pulumi.RunError):
    """A bad stack setting: `pulumi up` stops with this message (no traceback), naming the key."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        super().__init__(f"{PROJECT}:{key}: {problem}")


class Problem(ValueError):
    """What a validator found, in the operator's words. key: the setting it is about, below the object
    being checked (a sibling's rule names the sibling), when it is not the key being checked."""

    def __init__(self, problem: str, key: str = "") -> None:
        super().__init__(problem)
        self.key = key


def _model_at(root: type[BaseModel], path: list[str]) -> type[BaseModel]:
    """The model of the object at path (keys as the stack spells them)."""
    model = root
    for part in path:
        model = cast(
            type[BaseModel], next(f.annotation for f in model.model_fields.values() if f.alias == part)
        )
    return model


def _problem(item: ErrorDetails, root: type[BaseModel], path: list[str]) -> str:
    """A pydantic error in the operator's words (ours already are: the validators raise Problem)."""
    kind, ctx, value = item["type"], item.get("ctx", {}), item["input"]
    if kind == "value_error":
        return str(ctx["error"])
    if kind in ("missing", "extra_forbidden"):
        fields = {str(f.alias): f for f in _model_at(root, path[:-1]).model_fields.values()}
        if kind == "extra_forbidden":
            return f"unknown setting (known here: {', '.join(sorted(fields))})"
        # A required key's description says what it is and where to find it.
        why = fields[path[-1]].description
        return f"is required: {why}" if why else "is required"
    if kind == "model_type":
        return f"must be an object of settings, got {type(value).__name__}"
    if kind == "dict_type":
        return f"must be an object, got {value!r}"
    if kind == "string_type":
        return f"must be a string, got {value!r}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']}, got {value}"
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']}, got {value}"
    if kind == "too_short":
        return "must list at least one value"
    return item["msg"]


def config_error(error: ValidationError, root: type[BaseModel]) -> ConfigError:
    """The first problem pydantic found validating root, named by its key."""
    item = error.errors(include_url=False)[0]
    path = [str(part) for part in item["loc"] if not isinstance(part, int)]
    found = item.get("ctx", {}).get("error")
    if isinstance(found, Problem) and found.key:
        path.extend(found.key.split("."))
    return ConfigError(".".join(path), _problem(item, root, path))
