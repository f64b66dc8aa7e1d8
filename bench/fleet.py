"""What a push run costs per host, over fleets of 1, 4, 8 and 12 SSH hosts, and how a rolling cycle splits.

For each size, a fresh fleet of that many serving hosts and a load balancer host (harness.host_fleet:
network namespaces on this machine, one demo instance a host) gets, in turn: site.yml; an upgrade to a
new runtime release in batches of a quarter of the fleet (upgrade.yml -e batch=25%) under constant load
through the load balancer (4 clients, plain and streamed); a scale run to half its instances, a quarter
of the hosts at a time (scale.yml -e batch=25%). For each run it prints the wall time and the time per
host, the control node's CPU time (ansible-playbook, its forks and their ssh clients: what this machine
would spend for a real fleet) and per host, the most forks at once, and the most memory one fork and the
whole run held (Pss: shared pages counted once). Then, for each size, the rolling cycle's steps (medians
over the upgrade's instances) and Ansible's share of a cycle: what is neither drain, the runtime's own
start to ready nor the smoke test.

The hosts share this machine's cores, so the wall times here grow with the fleet where a real fleet's
would not: the control node's CPU and memory per host are the figures that carry over to 100 or 1,000
hosts (docs/benchmarks.md turns them into a plan). Needs root (namespaces, sshd).

    .venv/bin/python bench/fleet.py [--sizes 1,4,8,12]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import resource
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass

# harness.models before Ansible's modules (see bench/upgrade.py).
from harness.models import ensure_demo_model  # isort: split

from bench.upgrade import ANSIBLE_SHARE, RUNTIME_OWN, add_shares, print_cycles, print_requests
from fleet_ops.cycle import STEPS, parse_cycles
from harness.host_fleet import HostFleet
from harness.playbooks import playbook_command, playbook_environment
from harness.processes import command, pss_mb, tree


@dataclass
class RunCost:
    playbook: str
    returncode: int
    output: str
    seconds: float
    cpu_s: float  # the control node's: the run's processes, user and system
    forks: int  # the most worker processes at once
    fork_mb: float  # the most Pss one worker held
    total_mb: float  # the most Pss the run's processes held together


def measured(fleet: HostFleet, name: str, extra: dict) -> RunCost:
    """Run a playbook on the fleet while sampling its processes every half second."""
    peaks = {"forks": 0, "fork_mb": 0.0, "total_mb": 0.0}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    process = subprocess.Popen(
        playbook_command(name, fleet.inventory, extra), env=playbook_environment(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            found = tree(process.pid)
            workers = [pid for pid in found[1:] if _is_ansible(pid)]
            peaks["forks"] = max(peaks["forks"], len(workers))
            peaks["fork_mb"] = max([peaks["fork_mb"], *map(pss_mb, workers)])
            peaks["total_mb"] = max(peaks["total_mb"], sum(map(pss_mb, found)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = process.communicate()[0]
    seconds = time.monotonic() - started
    done.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return RunCost(name, process.returncode, output, seconds, cpu, peaks["forks"], peaks["fork_mb"],
                   peaks["total_mb"])  # fmt: skip


def _is_ansible(pid: int) -> bool:
    try:
        return any(arg.endswith("ansible-playbook") for arg in command(pid)[:2])
    except OSError:
        return False


def one_size(size: int) -> tuple[list[RunCost], dict[str, dict[str, float]], list]:
    """The three runs on a fresh fleet of `size` serving hosts; the upgrade's cycles and requests."""
    with HostFleet(ensure_demo_model(), size=size) as fleet:
        site = measured(fleet, "site.yml", {})
        if site.returncode != 0:
            raise SystemExit(f"site.yml failed on {size} hosts:\n{site.output[-3000:]}")
        # One host cannot roll without an outage; its run says how much that costs all the same.
        target = {"model_runtime_version": fleet.new_runtime, "batch": "25%",
                  **({"fleet_min_serving": 0} if size == 1 else {})}  # fmt: skip
        with fleet.load() as traffic:
            traffic.wait_for(20)
            served_before = len(traffic.outcomes)
            upgrade = measured(fleet, "upgrade.yml", target)
            during = traffic.outcomes[served_before:]
        if upgrade.returncode != 0:
            raise SystemExit(f"upgrade.yml failed on {size} hosts:\n{upgrade.output[-3000:]}")
        cycles = parse_cycles(upgrade.output)
        add_shares(cycles, lambda server: fleet.log_dir(server.rsplit("-", 1)[0]))
        scale = measured(fleet, "scale.yml", {"replicas": max(1, size // 2), "batch": "25%"})
        if scale.returncode != 0:
            raise SystemExit(f"scale.yml failed on {size} hosts:\n{scale.output[-3000:]}")
    return [site, upgrade, scale], cycles, during


def median(cycles: dict[str, dict[str, float]], label: str) -> float:
    return statistics.median(steps.get(label, 0) for steps in cycles.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,4,8,12", help="fleet sizes (serving hosts), comma-separated")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    columns = ["hosts", "run", "wall", "wall per host", "control CPU", "CPU per host", "forks",
               "Pss per fork", "Pss of the run"]  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("|---" * len(columns) + "|", flush=True)
    results = {}
    for size in sizes:  # each size's rows as soon as it is measured (the largest take many minutes)
        results[size] = one_size(size)
        for run in results[size][0]:
            print(f"| {size} | {run.playbook} | {run.seconds:.1f} s | {run.seconds / size:.1f} s | "
                  f"{run.cpu_s:.1f} s | {run.cpu_s / size:.2f} s | {run.forks} | {run.fork_mb:.0f} MB | "
                  f"{run.total_mb:.0f} MB |", flush=True)  # fmt: skip
        cycles, during = results[size][1], results[size][2]
        print(f"|   | (the upgrade's median cycle {median(cycles, 'total'):.1f} s, Ansible's share "
              f"{median(cycles, ANSIBLE_SHARE):.0f}%; {sum(not o.ok for o in during)} of {len(during)} "
              "requests failed meanwhile) |", flush=True)  # fmt: skip

    labels = [*STEPS.values(), "total", RUNTIME_OWN, ANSIBLE_SHARE]
    print("\nrolling cycle by fleet size (medians over the upgrade's instances)\n")
    print("| hosts | " + " | ".join(labels) + " |")
    print("|---" * (len(labels) + 1) + "|")
    for size, (_, cycles, _) in results.items():
        medians = [median(cycles, label) for label in labels]
        cells = [f"{m:.1f} s" for m in medians[:-1]] + [f"{medians[-1]:.0f}%"]
        print(f"| {size} | " + " | ".join(cells) + " |")

    largest = max(sizes)
    cycles = results[largest][1]
    print(f"\nthe {largest}-host upgrade, instance by instance\n")
    print_cycles(cycles)
    for size, (_, _, during) in results.items():
        print(f"\n{size} hosts:", end="")
        print_requests(during)


if __name__ == "__main__":
    main()
