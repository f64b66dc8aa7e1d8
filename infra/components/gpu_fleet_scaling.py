"""What moves the GPU group's desired capacity: target tracking on the sequences waiting per instance
(the runtime's queue, which each instance publishes to CloudWatch) and, as an option, on the load
balancer's requests per instance; and the schedule file's scale runs as scheduled actions."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from infra.metrics import FLEET_DIMENSION, METRICS_NAMESPACE
from infra.schedules import Schedule


def _target_tracking(
    name: str, group: aws.autoscaling.Group, metric: dict, target: float, opts: pulumi.ResourceOptions
) -> aws.autoscaling.Policy:
    """A target-tracking policy of the group: `metric` is the configuration's metric specification."""
    return aws.autoscaling.Policy(
        name,
        autoscaling_group_name=group.name,
        policy_type="TargetTrackingScaling",
        target_tracking_configuration={**metric, "target_value": float(target)},
        opts=opts,
    )


def track_requests_per_instance(
    name: str,
    group: aws.autoscaling.Group,
    request_count_label: pulumi.Input[str],
    target: int,
    opts: pulumi.ResourceOptions,
) -> aws.autoscaling.Policy:
    metric = {
        "predefined_metric_specification": {
            "predefined_metric_type": "ALBRequestCountPerTarget",
            "resource_label": request_count_label,
        }
    }
    return _target_tracking(f"{name}-requests-per-instance", group, metric, target, opts)


def track_queue_per_instance(
    name: str, group: aws.autoscaling.Group, fleet_name: str, target: float, opts: pulumi.ResourceOptions
) -> aws.autoscaling.Policy:
    """The group's average of each instance's QueueDepth: it grows with the work waiting, whatever
    the prompts' lengths, and shrinks as instances are added (what target tracking needs)."""
    metric = {
        "customized_metric_specification": {
            "metric_name": "QueueDepth",
            "namespace": METRICS_NAMESPACE,
            "statistic": "Average",
            "unit": "Count",
            "metric_dimensions": [{"name": FLEET_DIMENSION, "value": fleet_name}],
        }
    }
    return _target_tracking(f"{name}-queue-per-instance", group, metric, target, opts)


def scheduled_scale_run(
    name: str, group: aws.autoscaling.Group, schedule: Schedule, opts: pulumi.ResourceOptions
) -> aws.autoscaling.Schedule:
    return aws.autoscaling.Schedule(
        f"{name}-{schedule.name}",
        autoscaling_group_name=group.name,
        scheduled_action_name=schedule.name,
        recurrence=schedule.cron,
        time_zone="Etc/UTC",
        desired_capacity=schedule.replicas,
        # -1: leave the bounds as the stack sets them (the provider's default would set them to 0).
        min_size=-1,
        max_size=-1,
        opts=opts,
    )
