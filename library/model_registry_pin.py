#!/usr/bin/python
"""Pin, in a model-runtime registry, the versions a fleet runs or may return to."""

from __future__ import annotations

DOCUMENTATION = r"""
module: model_registry_pin
short_description: Keep a fleet's model versions from the registry's gc
description:
  - Writes the holder's pin of one model (model_runtime/registry/registry.py): its whole list of
    versions, replacing the one before, so that C(model-runtime registry gc) never deletes a version an
    instance runs or a rollback returns to. Versions the registry does not hold (a fleet's own builds
    from a source) may be listed: gc has nothing of theirs to keep. An empty list removes the pin.
  - Runs where the registry is reachable with credentials (delegate_to the control node), with the
    model_runtime package in its Python. Changed only when the list differs from the pin's.
options:
  registry:
    description: A folder or s3://bucket/prefix.
    type: str
    required: true
  name:
    description: The model's registry name.
    type: str
    required: true
  holder:
    description: Who pins (one pin per holder and model), e.g. fleet-production.
    type: str
    required: true
  versions:
    description: The versions to keep.
    type: list
    elements: str
    required: true
author: model-runtime
"""

RETURN = r"""
versions:
  description: The versions the pin holds now.
  type: list
  returned: success
"""

from ansible.module_utils.basic import AnsibleModule


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "registry": {"type": "str", "required": True},
            "name": {"type": "str", "required": True},
            "holder": {"type": "str", "required": True},
            "versions": {"type": "list", "elements": "str", "required": True},
        },
        supports_check_mode=True,
    )
    try:
        from model_runtime.registry.registry import Registry, pin_record
    except ImportError as exc:
        module.fail_json(msg=f"model_registry_pin needs the model_runtime package on the control node: {exc}")
    name, holder = module.params["name"], module.params["holder"]
    where = f"{name} in {module.params['registry']}"
    wanted = pin_record(module.params["versions"])["versions"]
    try:
        registry = Registry.open(module.params["registry"])
        pinned = registry.pins(name).get(holder)
        # Nothing to keep: no pin at all (an empty one would put a model the registry does not hold
        # into its listing).
        changed = pinned != wanted and (pinned is not None or bool(wanted))
        if changed and not module.check_mode:
            if wanted:
                registry.pin(name, holder, wanted)
            else:
                registry.unpin(name, holder)
    except Exception as exc:  # the registry's own errors name the holder, the version or the object
        module.fail_json(msg=f"{where}: {exc}")
    module.exit_json(changed=changed, versions=wanted)


if __name__ == "__main__":
    main()
