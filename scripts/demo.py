"""`make demo`: build the demo model, serve it on loopback, and ask it one chat question."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.models import ensure_demo_model  # noqa: E402
from tests.support.server import RuntimeProcess  # noqa: E402


def main() -> int:
    print("building the demo model (about 90 s the first time)...", flush=True)
    model = ensure_demo_model()
    workdir = REPO / ".cache" / "demo-run"
    workdir.mkdir(parents=True, exist_ok=True)
    server = RuntimeProcess(model, workdir, name="demo")
    print(f"serving {model} on {server.base_url} ...", flush=True)
    server.start()
    try:
        answer = server.client().chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": "What may I do with the Program?"}],
            max_tokens=48,
            temperature=0.7,
            seed=secrets.randbelow(1000),
        )
        print(f"\nQ: What may I do with the Program?\nA:{answer.choices[0].message.content}\n")
        print(f"({answer.usage.completion_tokens} tokens, served by {answer.system_fingerprint})")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
