"""Scale runs of the cloud fleet outside Pulumi: the auto scaling group's desired capacity, within its
bounds, and the scheduled actions that `pulumi up` made from the schedule file.

Pulumi leaves the group's desired capacity alone after creation (the program ignores its changes),
so a scale run here is not undone by the next `pulumi up`. The group's bounds stay the stack's:
a number outside them is refused, naming the bound, before anything changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError


class CloudError(RuntimeError):
    """A refused scale run or an AWS call that failed; the message names the group and the cause."""


@dataclass(frozen=True)
class GroupSize:
    name: str
    min_size: int
    max_size: int
    desired: int
    in_service: int


def autoscaling_client(region: str | None = None, endpoint_url: str | None = None) -> Any:
    """The AWS API's autoscaling client; endpoint_url where it is not the public one (a VPC endpoint)."""
    return boto3.client("autoscaling", region_name=region, endpoint_url=endpoint_url)


def _call(what: str, operation: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return operation(*args, **kwargs)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise CloudError(f"{what}: {error.get('Code', '?')}: {error.get('Message', '')}") from None
    except BotoCoreError as exc:
        raise CloudError(f"{what}: {exc}") from None


def describe_group(group: str, client: Any = None) -> GroupSize:
    client = client or autoscaling_client()
    reply = _call(f"{group}: describe", client.describe_auto_scaling_groups, AutoScalingGroupNames=[group])
    groups = reply.get("AutoScalingGroups", [])
    if not groups:
        raise CloudError(f"{group}: no such auto scaling group (pulumi stack output autoscalingGroupName)")
    found = groups[0]
    return GroupSize(
        name=group,
        min_size=found["MinSize"],
        max_size=found["MaxSize"],
        desired=found["DesiredCapacity"],
        in_service=sum(1 for i in found.get("Instances", []) if i.get("LifecycleState") == "InService"),
    )


def scale(group: str, replicas: int, client: Any = None) -> tuple[GroupSize, GroupSize]:
    """Set the desired capacity to replicas; (before, after). Refuses replicas outside [min, max]."""
    client = client or autoscaling_client()
    before = describe_group(group, client)
    if replicas < before.min_size:
        raise CloudError(
            f"{group}: replicas={replicas} refused: below the group's minimum size {before.min_size} "
            "(fleet.minSize in the stack)"
        )
    if replicas > before.max_size:
        raise CloudError(
            f"{group}: replicas={replicas} refused: above the group's maximum size {before.max_size} "
            "(fleet.maxSize in the stack)"
        )
    # Not honouring cooldowns: an operator's scale run is deliberate and should not wait on one.
    _call(
        f"{group}: set desired capacity",
        client.set_desired_capacity,
        AutoScalingGroupName=group,
        DesiredCapacity=replicas,
        HonorCooldown=False,
    )
    return before, describe_group(group, client)


@dataclass(frozen=True)
class ScheduledAction:
    name: str
    recurrence: str
    desired: int | None
    min_size: int | None
    max_size: int | None
    next_start: str
    time_zone: str


def scheduled_actions(group: str, client: Any = None) -> list[ScheduledAction]:
    client = client or autoscaling_client()
    describe_group(group, client)  # a clear error for a wrong name rather than an empty list
    actions: list[ScheduledAction] = []
    paginator = client.get_paginator("describe_scheduled_actions")
    pages = paginator.paginate(AutoScalingGroupName=group)
    for page in _call(f"{group}: scheduled actions", list, pages):
        for action in page.get("ScheduledUpdateGroupActions", []):
            start = action.get("StartTime")
            actions.append(
                ScheduledAction(
                    name=action["ScheduledActionName"],
                    recurrence=action.get("Recurrence", ""),
                    desired=action.get("DesiredCapacity"),
                    min_size=action.get("MinSize"),
                    max_size=action.get("MaxSize"),
                    next_start=start.isoformat() if hasattr(start, "isoformat") else str(start or ""),
                    time_zone=action.get("TimeZone") or "UTC",
                )
            )
    return sorted(actions, key=lambda a: a.name)
