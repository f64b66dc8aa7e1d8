"""The control node's tools, apart from the runtime wheel: the fleet as an Ansible inventory describes
it, the status table and the timed rolling-cycle line (the playbooks' filter plugins and Fabric), and
scale runs of the cloud fleet (`python -m fleet_ops cloud ...`). Imported from the repository checkout,
next to the playbooks and the fabfile they serve; its dependencies are pyproject.toml's `ops` extra."""
