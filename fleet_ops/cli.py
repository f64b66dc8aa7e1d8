"""`python -m fleet_ops ...`, the control node's command: `cloud scale` and `cloud schedules`, scale runs
of the cloud fleet outside Pulumi (boto3; credentials and region the usual AWS way, or --region), and
`autoscale`, the metal fleet's autoscaler."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict

from fleet_ops.autoscale.service import main as autoscale_main
from fleet_ops.cloud_scale import CloudError, autoscaling_client, scale, scheduled_actions


def _scale(args: argparse.Namespace) -> int:
    before, after = scale(args.group, args.replicas, autoscaling_client(args.region))
    print(
        f"{after.name}: desired capacity {before.desired} -> {after.desired} "
        f"(bounds {after.min_size}..{after.max_size}, {after.in_service} in service now)"
    )
    return 0


def _schedules(args: argparse.Namespace) -> int:
    actions = scheduled_actions(args.group, autoscaling_client(args.region))
    if args.json:
        print(json.dumps([asdict(a) for a in actions], indent=2))
        return 0
    if not actions:
        print(f"{args.group}: no scheduled actions")
        return 0
    rows = [("name", "recurrence", "desired", "min", "max", "time zone", "next start")]
    rows += [
        (
            a.name,
            a.recurrence,
            *(("-" if v is None else str(v)) for v in (a.desired, a.min_size, a.max_size)),
            a.time_zone,
            a.next_start,
        )
        for a in actions
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fleet_ops", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    cloud = commands.add_parser("cloud", help="the cloud fleet's auto scaling group: scale runs, schedules")
    sub = cloud.add_subparsers(dest="cloud_command", required=True)

    scale_cmd = sub.add_parser("scale", help="set the group's desired capacity, within its bounds")
    scale_cmd.add_argument(
        "--group", required=True, help="auto scaling group (stack output autoscalingGroupName)"
    )
    scale_cmd.add_argument("--replicas", required=True, type=int, help="instances wanted")
    scale_cmd.add_argument("--region", help="AWS region (default: the usual AWS configuration)")
    scale_cmd.set_defaults(run=_scale)

    schedules = sub.add_parser("schedules", help="list the group's scheduled actions")
    schedules.add_argument(
        "--group", required=True, help="auto scaling group (stack output autoscalingGroupName)"
    )
    schedules.add_argument("--region", help="AWS region (default: the usual AWS configuration)")
    schedules.add_argument("--json", action="store_true", help="print JSON")
    schedules.set_defaults(run=_schedules)

    autoscale = commands.add_parser("autoscale", help="the metal fleet's autoscaler (a long-running service)")
    autoscale.add_argument("--config", required=True, help="its YAML file (fleet_ops/autoscale/service.py)")
    autoscale.add_argument("--dry-run", action="store_true", help="print each decision, change nothing")
    autoscale.add_argument("--once", action="store_true", help="one reading and decision, then exit")
    autoscale.add_argument("--check", action="store_true", help="check the configuration file, then exit")
    autoscale.set_defaults(run=lambda args: autoscale_main(args.config, args.dry_run, args.once, args.check))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except CloudError as exc:  # the operator's to fix: the message, without a traceback
        print(f"fleet_ops: {exc}", file=sys.stderr)
        return 2
