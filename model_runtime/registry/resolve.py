"""`model.path: registry:NAME@ALIAS` -> a verified local copy of that version (pulled once, cached)."""

from __future__ import annotations

from pathlib import Path

from model_runtime.config import ModelSettings, RegistrySettings
from model_runtime.registry.registry import Registry, RegistryError
from model_runtime.registry.trust import UntrustedError, check_name

PREFIX = "registry:"


def materialize(model: ModelSettings, registry: RegistrySettings) -> ModelSettings:
    """Settings whose path is a local folder: a registry reference is resolved and pulled (or found
    already pulled and verified in the cache), and the version it resolved to is reported."""
    if not model.path.startswith(PREFIX):
        return model
    if not registry.url:
        raise RegistryError(f"model.path is {model.path}, but registry.url is not set")
    store = Registry.open(registry.url)
    name, version = store.resolve(model.path.removeprefix(PREFIX))
    # Both become path components: checked here too, whatever store or alias record produced them.
    try:
        parts = (check_name(name, "name"), check_name(version, "version"))
    except UntrustedError as exc:
        raise RegistryError(f"{model.path}: {exc}") from None
    folder = Path(registry.cache_dir).expanduser().joinpath(*parts)
    store.pull(f"{name}:{version}", folder)  # verifies an existing copy instead of downloading again
    return model.model_copy(
        update={
            "path": str(folder),
            "served_name": model.served_name or name,
            "version": model.version or version,
        }
    )
