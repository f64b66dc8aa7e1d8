"""model_runtime_api_keys as the roles read it (filter_plugins/api_keys.py): keys alone, key-file lines
and mappings, into the runtime's key file and HAProxy's map of limits; every problem names the entry's
place, never its key."""

from __future__ import annotations

import hashlib

import pytest

from filter_plugins.api_keys import api_key_for, api_key_lines, api_key_problems, api_key_quotas

pytestmark = pytest.mark.unit

ENTRIES = [
    "sk-plain",
    "sk-line priority=batch models=demo tokens_per_minute=9000",
    {"key": "sk-map", "priority": "interactive", "models": ["demo-int8"], "requests_per_minute": 60},
]


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def test_every_form_gives_the_runtime_its_settings_and_haproxy_only_digests() -> None:
    assert api_key_lines(ENTRIES) == [
        "sk-plain priority=standard",
        "sk-line priority=batch models=demo",
        "sk-map priority=interactive models=demo-int8",
    ]
    quotas = api_key_quotas(ENTRIES)
    assert quotas == [f"{digest('sk-line')} 0 9000", f"{digest('sk-map')} 60 0"]
    assert not any("sk-" in line for line in quotas)


def test_the_smoke_test_takes_a_key_that_may_use_the_model() -> None:
    assert api_key_for(ENTRIES[1:], "demo-int8") == "sk-map"
    assert api_key_for(ENTRIES, "demo") == "sk-plain"


@pytest.mark.parametrize(
    ("entries", "says"),
    [
        (["sk-secret priority=now"], "entry 1: priority 'now' is not one of"),
        (["sk-ok", {"key": "sk-secret", "limit": 3}], "entry 2: unknown field(s) limit"),
        ([{"key": "sk secret"}], "entry 1: `key` must be a string without spaces"),
        ([{"key": "sk-secret", "models": "demo"}], "entry 1: models must be a list"),
        ([{"key": "sk-secret", "tokens_per_minute": 0}], "entry 1: tokens_per_minute must be a whole number"),
        (["sk-secret", {"key": "sk-secret"}], "a key is given twice"),
        ([42], "entry 1: a key, or a mapping"),
        ("sk-secret", "must be a list"),
    ],
)
def test_a_bad_entry_is_named_by_its_place(entries: object, says: str) -> None:
    problems = api_key_problems(entries)
    assert len(problems) == 1
    assert says in problems[0]
    assert "sk-secret" not in problems[0]
