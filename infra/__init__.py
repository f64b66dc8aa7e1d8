"""The Pulumi program of the cloud fleet (see README.md), importable as `infra` by its tests."""
