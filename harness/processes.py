"""What a server's processes cost, read from /proc (Linux): the tree under a process, its resident
memory, and the CPU time each process of it has used. The soak and the serving benchmark share these."""

from __future__ import annotations

import os
import threading
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The processes pid started, from any of its threads (a thread may start one); none once it ended."""
    try:
        threads = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    found = []
    for thread in threads:
        try:
            found += [int(c) for c in (thread / "children").read_text().split()]
        except OSError:
            continue  # the thread ended meanwhile
    return found


def tree(pid: int) -> list[int]:
    """pid and every process below it, each before its own children; empty once pid ended."""
    if not Path(f"/proc/{pid}").is_dir():
        return []
    return [pid] + [each for child in children(pid) for each in tree(child)]


def rss_mb(pid: int) -> float:
    """Resident memory of a process and every process below it, in MB."""
    total = 0
    for each in tree(pid):
        try:
            total += int(Path(f"/proc/{each}/statm").read_text().split()[1])
        except OSError:
            continue  # ended meanwhile
    return total * PAGE / 2**20


def pss_mb(pid: int) -> float:
    """A process's proportional share of memory (shared pages divided among their users), in MB; 0 once
    it ended."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0.0
    line = next((line for line in rollup.splitlines() if line.startswith("Pss:")), "Pss: 0 kB")
    return int(line.split()[1]) / 1024


def role(pid: int) -> str:
    """A process's name for a report: vLLM's title (VLLM::EngineCore), the module run with -m, or the
    program's name."""
    argv = command(pid)
    if argv[0].startswith("VLLM::"):
        return argv[0].split()[0]
    if "-m" in argv[:-1]:
        at = argv.index("-m") + 1
        # The runtime's own command names its role (serve); a module run is its name otherwise.
        return " ".join(filter(None, argv[at : at + 2])) if argv[at] == "model_runtime" else argv[at]
    if any("multiprocessing.forkserver" in arg for arg in argv):
        # The runtime's engine fork server and the engine processes it forks share its command line.
        return (
            "engine (multiprocessing child)"
            if role(_parent(pid)) == "engine fork server"
            else "engine fork server"
        )
    if any("spawn_main" in arg for arg in argv):
        return "engine (multiprocessing child)"
    return Path(argv[0]).name


def command(pid: int) -> list[str]:
    """A process's command line, as its arguments."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").rstrip("\0").split("\0")


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU time (user + system) used so far by each process of the tree, by role; processes of the same
    role are summed."""
    used: dict[str, float] = {}
    for each in tree(pid):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            name = role(each)
        except OSError:
            continue
        # utime and stime are the 14th and 15th fields of stat; fields[0] here is the 3rd (state).
        used[name] = used.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICKS
    return used


class PeakMemory:
    """The highest resident memory of a process tree while the block runs, sampled every interval_s."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.before_mb = 0.0
        self.peak_mb = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self.before_mb = self.peak_mb = rss_mb(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._done.wait(self.interval_s):
            self.peak_mb = max(self.peak_mb, rss_mb(self.pid))
