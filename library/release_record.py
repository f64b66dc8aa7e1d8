#!/usr/bin/python
"""Keep a host's release record: what each model-runtime instance runs, and what it ran before."""

from __future__ import annotations

DOCUMENTATION = r"""
module: release_record
short_description: Record what each model-runtime instance of a host runs
description:
  - Keeps one JSON file per host (an Ansible local fact). For each instance given, the release it runs
    now (runtime version, model, model version and folder), since when and set by which run, and its
    state (serving, or scaled-in by a scale run). The engine and its parallel sizes are part of the
    release: a change of engine alone is a release change that a rollback undoes. When an instance's
    release changes, the old one moves
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
    description: The NVIDIA driver the host runs (or none). When it changes, the one before is kept as
      C(previous_driver_version), the version a failed driver upgrade goes back to.
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

# What a release is made of, each with what an instance ran when its record was written before that
# part was recorded ("" where nothing can be assumed): records from before engines were part of a
# release ran the auto engine on one device (as fleet_ops/status.py and instance.yaml.j2 read them).
RELEASE = {
    "runtime_version": "",
    "model": "",
    "model_version": "",
    "model_path": "",
    "engine": "auto",
    "tensor_parallel_size": "1",
    "pipeline_parallel_size": "1",
}


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
        release = {k: str(wanted.get(k, assumed)) for k, assumed in RELEASE.items()}
        current = instances.get(str(key))
        if current and all(str(current.get(k, assumed)) == release[k] for k, assumed in RELEASE.items()):
            entry = dict(current)
        else:
            if current:
                previous[str(key)] = current
            entry = {**release, "since": now, "run": module.params["run"]}
        entry["state"] = wanted.get("state") or (current or {}).get("state") or "serving"
        instances[str(key)] = entry
    driver, driver_before = module.params["driver_version"], record.get("driver_version")
    changed_driver = driver_before not in (None, driver)
    previous_driver = driver_before if changed_driver else record.get("previous_driver_version")
    record = {"instances": instances, "previous": previous, "driver_version": driver}
    if previous_driver:
        record["previous_driver_version"] = previous_driver
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
