"""What each API key may do: its priority class and the models it may use, read from the key file.

A line of the key file is a key, optionally followed by settings (`name=value`, separated by spaces):

    sk-team-a                                    # every model, the standard class
    sk-team-b priority=interactive models=demo   # goes before standard and batch work; demo only
    sk-nightly priority=batch requests_per_minute=60 tokens_per_minute=50000

The runtime reads `priority` and `models`. The per-minute limits hold fleet-wide, so the load balancer
enforces them (the loadbalancer role writes them to HAProxy under a hash of the key); the runtime checks
only that they are whole numbers. The file is untrusted input: an unknown setting or a bad value is a
ConfigError that names the file's line, never the key. Only the standard library is used here: the cloud
boot script reads keys from SSM with it before the runtime's dependencies exist.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

Priority = Literal["interactive", "standard", "batch"]
# Highest first: a waiting request of an earlier class is admitted before one of a later class.
PRIORITIES: tuple[Priority, ...] = get_args(Priority)
DEFAULT_PRIORITY: Priority = "standard"
# The limits the load balancer enforces: requests, and tokens (prompt estimate plus the most the
# request may generate), per key per minute.
LIMITS = ("requests_per_minute", "tokens_per_minute")
SETTINGS = ("priority", "models", *LIMITS)
# A served model's name as the runtime and the load balancer accept it in a key's allow-list.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


class KeyFileError(ValueError):
    """A line of a key file that cannot be read; the message names the line, never the key."""


@dataclass(frozen=True)
class KeyPolicy:
    priority: Priority = DEFAULT_PRIORITY
    models: frozenset[str] | None = None  # None: every model the server serves
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


OPEN = KeyPolicy()


def parse_key_line(line: str, where: str) -> tuple[str, KeyPolicy] | None:
    """(key, policy) of one line of a key file, or None for a blank or comment line. where names the
    line in errors (`api-keys line 3`)."""
    words = line.split("#", 1)[0].split()
    if not words:
        return None
    key, settings = words[0], words[1:]
    if "=" in key:
        raise KeyFileError(f"{where}: the line must start with the key, then name=value settings")
    values: dict[str, str] = {}
    for word in settings:
        name, sep, value = word.partition("=")
        if not sep or name not in SETTINGS:
            raise KeyFileError(f"{where}: unknown setting {name!r}; known: {', '.join(SETTINGS)}")
        if name in values:
            raise KeyFileError(f"{where}: {name} is given twice")
        values[name] = value
    return key, policy_of(values, where)


def policy_of(values: dict[str, str], where: str) -> KeyPolicy:
    priority = values.get("priority", DEFAULT_PRIORITY)
    if priority not in PRIORITIES:
        raise KeyFileError(f"{where}: priority {priority!r} is not one of {', '.join(PRIORITIES)}")
    models = None
    if "models" in values:
        names = [m for m in values["models"].split(",") if m]
        bad = [m for m in names if not MODEL_NAME.fullmatch(m)]
        if not names or bad:
            raise KeyFileError(f"{where}: models must be model names separated by commas")
        models = frozenset(names)
    rpm, tpm = (_limit(values[name], name, where) if name in values else None for name in LIMITS)
    return KeyPolicy(priority, models, rpm, tpm)


def _limit(value: str, name: str, where: str) -> int:
    if not value.isdigit() or int(value) <= 0:
        raise KeyFileError(f"{where}: {name} must be a whole number above 0")
    return int(value)


def read_key_lines(lines: Iterable[str], source: str) -> dict[str, KeyPolicy]:
    """Every key of a key file's lines with its policy; a key given twice is an error (which of its
    settings would hold?)."""
    table: dict[str, KeyPolicy] = {}
    for number, line in enumerate(lines, start=1):
        where = f"{source} line {number}"
        parsed = parse_key_line(line, where)
        if parsed is None:
            continue
        key, policy = parsed
        if key in table:
            raise KeyFileError(f"{where}: this key is already given on an earlier line")
        table[key] = policy
    return table
