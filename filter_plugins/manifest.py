"""Jinja filters for the model_artifacts role's preflight: the registry's own checks on names and
manifests (model_runtime/registry/trust.py), so that a manifest from a folder, an HTTP server or the
registry is judged by one piece of code before the role writes anything."""

from __future__ import annotations

from model_runtime.registry.trust import manifest_problems, name_problem


def name_problems(value: object, what: str) -> list[str]:
    """[] for a valid name, alias or version; else the one problem, naming `what`."""
    problem = name_problem(value, what)
    return [problem] if problem else []


class FilterModule:
    def filters(self) -> dict:
        return {"manifest_problems": manifest_problems, "name_problems": name_problems}
