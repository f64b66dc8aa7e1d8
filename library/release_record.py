#!/usr/bin/python
"""Keep a host's release record: what each model-runtime instance runs, and what it ran before."""

from __future__ import annotations

DOCUMENTATION = r"""
module: release_record
short_description: Record what each model-runtime instance of a host runs
description:
  - Keeps one JSON file per host (an Ansible local fact). For each instance given, the release it runs
    now (runtime version, model, model version and folder), since when and set by which run, and its
    state (serving, or scaled-in by a scale run). When an instance's release changes, the old one moves
    to C(previous), which is where a rollback goes. Unchanged instances keep their time and run, so a
    re-run changes nothing. Written atomically, and only when something changed.
options:
  path:
    description: The record file.
    type: path
    required: true
  run:
    description: Names the run that makes a change.
    type: str
    required: true
  instances:
    description: Instance id -> {release... , state}; instances not listed are left as they are.
    type: dict
    required: true
  driver_version:
    description: The NVIDIA driver the host runs (or none).
    type: str
    default: none
author: model-runtime
"""

RETURN = r"""
record:
  description: The record after the update.
  type: dict
  returned: always
"""

import json
import os
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule

RELEASE_KEYS = ("runtime_version", "model", "model_version", "model_path")


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "run": {"type": "str", "required": True},
            "instances": {"type": "dict", "required": True},
            "driver_version": {"type": "str", "default": "none"},
        },
        supports_check_mode=True,
    )
    path = module.params["path"]
    try:
        with open(path) as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        record = {}
    before = json.dumps(record, sort_keys=True)
    instances = dict(record.get("instances") or {})
    previous = dict(record.get("previous") or {})
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for key, wanted in module.params["instances"].items():
        release = {k: str(wanted.get(k, "")) for k in RELEASE_KEYS}
        current = instances.get(str(key))
        if current and all(current.get(k) == release[k] for k in RELEASE_KEYS):
            entry = dict(current)
        else:
            if current:
                previous[str(key)] = current
            entry = {**release, "since": now, "run": module.params["run"]}
        entry["state"] = wanted.get("state") or (current or {}).get("state") or "serving"
        instances[str(key)] = entry
    record = {"instances": instances, "previous": previous, "driver_version": module.params["driver_version"]}
    changed = json.dumps(record, sort_keys=True) != before
    if changed and not module.check_mode:
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".model_runtime.fact.")
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    module.exit_json(changed=changed, record=record)


if __name__ == "__main__":
    main()
