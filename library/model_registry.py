#!/usr/bin/python
"""Resolve a model registry reference on the control node, for hosts to download from."""

from __future__ import annotations

DOCUMENTATION = r"""
module: model_registry
short_description: Resolve NAME@ALIAS or NAME:VERSION in a model-runtime registry
description:
  - Runs where the registry is reachable with credentials (delegate_to the control node). Returns the
    version's manifest, each file with a URL that a host can fetch without credentials (file:// for a
    folder registry, a presigned https URL for S3), so hosts check every file's sha256 as they fetch it.
  - The reference and the manifest are checked (model_runtime/registry/trust.py, the checks the role's
    preflight runs too). A name, alias or version off the one pattern, or a file entry whose path is
    absolute, holds '..', a backslash or a control character, is hidden or would replace the
    manifest, fails the module, and hosts get nothing to fetch.
  - Needs the model_runtime package in the Python that runs the module (the control node's venv).
options:
  registry:
    description: A folder or s3://bucket/prefix.
    type: str
    required: true
  ref:
    description: NAME, NAME@ALIAS or NAME:VERSION.
    type: str
    required: true
  url_seconds:
    description: Validity of presigned URLs.
    type: int
    default: 3600
author: model-runtime
"""

RETURN = r"""
manifest:
  description: The version's manifest; each entry of files has a url.
  type: dict
  returned: success
"""

from ansible.module_utils.basic import AnsibleModule


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "registry": {"type": "str", "required": True},
            "ref": {"type": "str", "required": True},
            "url_seconds": {"type": "int", "default": 3600},
        },
        supports_check_mode=True,
    )
    try:
        from model_runtime.registry.registry import Registry
        from model_runtime.registry.trust import UntrustedError, check_manifest, split_ref
    except ImportError as exc:
        module.fail_json(msg=f"model_registry needs the model_runtime package on the control node: {exc}")
    ref = module.params["ref"]
    try:
        split_ref(ref)
    except UntrustedError as exc:
        module.fail_json(msg=f"ref: {exc}")
    try:
        plan = Registry.open(module.params["registry"]).fetch_plan(ref, module.params["url_seconds"])
        # What leaves for the hosts is checked here as well, whichever registry code produced it.
        check_manifest(plan, f"{ref} in {module.params['registry']}")
    except Exception as exc:  # the registry's own errors name the reference or the object
        module.fail_json(msg=f"{ref} in {module.params['registry']}: {exc}")
    module.exit_json(changed=False, manifest=plan)


if __name__ == "__main__":
    main()
