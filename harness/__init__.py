"""What benchmarks and tests share to drive the real thing: runtime processes (`server`), the demo and
random-weight models (`models`), ansible-playbook runs (`playbooks`), the local fleet (`fleet`), fleets of
SSH hosts (`host_fleet`), a stand-in GPU driver (`standin_driver`), client load (`load`) and the overload
soak (`soak`). Not test code: `bench/` runs it as well as `tests/`."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the repository root: playbooks, inventories, .cache
