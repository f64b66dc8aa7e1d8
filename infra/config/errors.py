"""How a problem of the stack's configuration is reported: as `pulumi config` spells its key
(`model-runtime:fleet.maxSize: ...`), in the operator's words, and as a pulumi.RunError, which ends
`pulumi up` with the message and no traceback."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast, get_args

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


def key_of(path: Sequence[str | int]) -> str:
    """A path as `pulumi config set --path` spells it: `models[1].maxSize`."""
    key = ""
    for part in path:
        key += f"[{part}]" if isinstance(part, int) else f".{part}" if key else part
    return key


def _model_at(root: type[BaseModel], path: Sequence[str | int]) -> type[BaseModel]:
    """The model of the object at path (keys as the stack spells them; an index: a list's item)."""
    model: Any = root
    for part in path:
        if isinstance(part, int):
            model = get_args(model)[0]  # tuple[Item, ...]
            continue
        model = next(f.annotation for f in model.model_fields.values() if f.alias == part)
        # An optional object (X | None): the object's model.
        if type(None) in get_args(model):
            model = next(a for a in get_args(model) if a is not type(None))
    return cast(type[BaseModel], model)


def _problem(item: ErrorDetails, root: type[BaseModel], path: list[str | int]) -> str:
    """A pydantic error in the operator's words (ours already are: the validators raise Problem)."""
    kind, ctx, value = item["type"], item.get("ctx", {}), item["input"]
    if kind == "value_error":
        return str(ctx["error"])
    if kind in ("missing", "extra_forbidden"):
        fields = {str(f.alias): f for f in _model_at(root, path[:-1]).model_fields.values()}
        name = str(path[-1])
        if kind == "extra_forbidden":
            return f"unknown setting (known here: {', '.join(sorted(fields))})"
        # A required key's description says what it is and where to find it.
        why = fields[name].description
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
    if kind in ("tuple_type", "list_type"):
        return f"must be a list, got {value!r}"
    return item["msg"]


def config_error(
    error: ValidationError,
    root: type[BaseModel],
    origin: Callable[[list[str | int]], tuple[list[str | int], str]] | None = None,
) -> ConfigError:
    """The first problem pydantic found validating root, named by its key. origin: where the operator
    wrote the value checked at a path, when that is not the path itself (and a note to add)."""
    item = error.errors(include_url=False)[0]
    path: list[str | int] = list(item["loc"])
    found = item.get("ctx", {}).get("error")
    if isinstance(found, Problem) and found.key:
        path.extend(int(p) if p.isdigit() else p for p in found.key.split("."))
    problem = _problem(item, root, path)
    written, note = origin(path) if origin else (path, "")
    return ConfigError(key_of(written), problem + note)
