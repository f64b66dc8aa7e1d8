"""A CA and a server certificate it signs for localhost and 127.0.0.1 (what the fleet_ca role makes per
host), made with the real openssl."""

from __future__ import annotations

import subprocess
from pathlib import Path


def openssl(*argv: str) -> None:
    subprocess.run(["openssl", *argv], check=True, capture_output=True)


def make_pki(folder: Path) -> Path:
    """folder/ca.pem, ca.key, server.crt, server.key; returns folder."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
            "-keyout", str(folder / "ca.key"), "-out", str(folder / "ca.pem"))  # fmt: skip
    openssl("req", "-x509", "-CA", str(folder / "ca.pem"), "-CAkey", str(folder / "ca.key"), "-newkey",
            "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-addext", "basicConstraints=critical,CA:FALSE", "-addext", "extendedKeyUsage=serverAuth",
            "-keyout", str(folder / "server.key"), "-out", str(folder / "server.crt"))  # fmt: skip
    return folder
