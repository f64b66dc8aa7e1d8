"""The fleet as operators see it: release records and the status table (playbooks and Fabric)."""
