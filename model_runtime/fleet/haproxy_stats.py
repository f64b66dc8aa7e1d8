"""HAProxy's statistics CSV (the runtime API's `show stat`, or the stats page's `;csv`), read by its
header: one dict per proxy row, so that callers name the columns they want (`svname`, `status`, `scur`,
`check_status`...) instead of counting positions."""

from __future__ import annotations

SUMMARY_ROWS = ("FRONTEND", "BACKEND")


def stats_rows(csv: str) -> list[dict[str, str]]:
    lines = csv.strip().splitlines()
    if not lines:
        return []
    header = lines[0].lstrip("# ").split(",")
    return [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]


def server_rows(csv: str, backend: str) -> list[dict[str, str]]:
    """The rows of the backend's servers (its FRONTEND/BACKEND summary rows left out)."""
    return [
        row
        for row in stats_rows(csv)
        if row.get("pxname") == backend and row.get("svname") not in SUMMARY_ROWS
    ]
