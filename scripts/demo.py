"""The end of `make demo`: one chat completion through the local fleet's load balancer, over HTTPS
with the certificate of the fleet's own CA (made by the loadbalancer role; nothing else is trusted)."""

from __future__ import annotations

import ssl
import sys
from pathlib import Path

import httpx
import openai

REPO = Path(__file__).resolve().parents[1]
CA = REPO / ".cache" / "fleet" / "etc" / "haproxy" / "tls" / "ca.pem"
QUESTION = "What may I do with the Program?"


def main() -> int:
    key = (REPO / ".cache" / "demo-api-key").read_text().strip()
    trust = httpx.Client(verify=ssl.create_default_context(cafile=CA))
    client = openai.OpenAI(
        base_url="https://127.0.0.1:8000/v1", api_key=key, max_retries=2, http_client=trust
    )
    answer = client.chat.completions.with_raw_response.create(
        model="demo", messages=[{"role": "user", "content": QUESTION}], max_tokens=48, temperature=0.7
    )
    completion = answer.parse()
    print(f"\nQ: {QUESTION}\nA:{completion.choices[0].message.content}\n")
    request_id = answer.headers["x-request-id"]
    print(f"served by {completion.system_fingerprint} through HAProxy (request id {request_id})")
    print(
        "\nThe fleet answers at https://127.0.0.1:8000/v1 (OpenAI API; key in .cache/demo-api-key),\n"
        f"trusting the fleet's CA: {CA.relative_to(REPO)}\n"
        "HAProxy's stats at http://127.0.0.1:8404/stats, instances at 127.0.0.1:8101 and :8102.\n"
        "Stop it with: make demo-stop"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
