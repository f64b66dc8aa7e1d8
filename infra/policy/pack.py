"""The policy pack's thin wrappers: pulumi_policy's validation callbacks over rules.py.

Kept apart from __main__.py (which needs pulumi_policy and serves the CLI forever) so that the
adapters are plain functions over the shapes pulumi_policy passes: `args.resource_type`, `args.props`,
`args.name`, `args.urn` for a resource; `args.resources` (each with `dependencies`) for a stack.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from infra.policy.rules import RESOURCE_RULES, STACK_RULES, Resource, ResourceRule, StackRule

Report = Callable[..., None]


def resource_validator(rule: ResourceRule) -> Callable[[Any, Report], None]:
    def validate(args: Any, report_violation: Report) -> None:
        if args.resource_type not in rule.types:
            return
        resource = Resource(args.resource_type, args.name, args.props, args.urn)
        for message in rule.check(resource):
            report_violation(message)

    return validate


def stack_validator(rule: StackRule) -> Callable[[Any, Report], None]:
    def validate(args: Any, report_violation: Report) -> None:
        resources = [
            Resource(r.resource_type, r.name, r.props, r.urn, frozenset(d.urn for d in r.dependencies))
            for r in args.resources
        ]
        for resource, message in rule.check(resources):
            report_violation(message, resource.urn)

    return validate


def build_policies() -> list[Any]:
    """Every rule as a pulumi_policy policy, mandatory: a violation stops `pulumi up`."""
    from pulumi_policy import EnforcementLevel, ResourceValidationPolicy, StackValidationPolicy

    policies: list[Any] = [
        ResourceValidationPolicy(
            name=rule.name,
            description=rule.description,
            validate=resource_validator(rule),
            enforcement_level=EnforcementLevel.MANDATORY,
        )
        for rule in RESOURCE_RULES
    ]
    policies += [
        StackValidationPolicy(
            name=rule.name,
            description=rule.description,
            validate=stack_validator(rule),
            enforcement_level=EnforcementLevel.MANDATORY,
        )
        for rule in STACK_RULES
    ]
    return policies
