"""How many times this instance's process has started, counted in a file of its state folder
(server.state_dir) that outlives the process: exported as model_runtime_process_starts_total, a rising
count shows a service manager restarting a process that keeps dying."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from model_runtime.config import ConfigError

STARTS_FILE = "process-starts"


def count_start(state_dir: Path | None) -> int:
    """Add this start to the count kept in state_dir and return the count, this start included (1
    without a state folder). Counted before anything else can fail, so that a process dying while
    it loads its model counts too. A folder it cannot write is a ConfigError naming the setting."""
    if state_dir is None:
        return 1
    path = state_dir / STARTS_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    except OSError as exc:
        raise ConfigError(f"server.state_dir: cannot read {path}: {exc.strerror or exc}") from exc
    # A file that holds no count (edited by hand) starts the count again rather than stopping the
    # service; the rename below never leaves a half-written one.
    count = (int(text) if text.isdecimal() else 0) + 1
    partial = path.with_name(f".{STARTS_FILE}.{os.getpid()}")
    try:
        partial.write_text(f"{count}\n")
        partial.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        raise ConfigError(f"server.state_dir: cannot write {path}: {exc.strerror or exc}") from exc
    return count
