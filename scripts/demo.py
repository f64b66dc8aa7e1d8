"""The end of `make demo`: a chat completion from each model the local fleet serves (GET /v1/models),
through its one load balancer, over HTTPS with the certificate of the fleet's own CA (made by the
loadbalancer role; nothing else is trusted).

Addresses, ports and paths are read from inventories/local as a play sees them (the roles' defaults,
then the inventory's variables), so this script repeats none of them.

  python -m scripts.demo   (from the repository root: fleet_ops sits beside the playbooks)
"""

from __future__ import annotations

import ssl
import sys
from pathlib import Path

import httpx
import openai

from fleet_ops.inventory import FleetHost, load_fleet

REPO = Path(__file__).resolve().parents[1]
INVENTORY = REPO / "inventories" / "local"
API_KEY = REPO / ".cache" / "demo-api-key"  # written by `make demo`, read by the inventory
QUESTION = "What may I do with the Program?"


def host_in(fleet: dict[str, FleetHost], group: str) -> FleetHost:
    return next(host for host in fleet.values() if group in host.groups)


def main() -> int:
    fleet = load_fleet(INVENTORY)
    balancer, server = host_in(fleet, "loadbalancers"), host_in(fleet, "gpu_servers")
    lb = balancer.vars
    ca = Path(lb["loadbalancer_tls_dir"]) / "ca.pem"
    base_url = f"https://{lb['loadbalancer_bind_address']}:{lb['loadbalancer_port']}/v1"
    trust = httpx.Client(verify=ssl.create_default_context(cafile=ca))
    client = openai.OpenAI(
        base_url=base_url, api_key=API_KEY.read_text().strip(), max_retries=2, http_client=trust
    )
    print(f"\nQ: {QUESTION}")
    for model in client.models.list():
        answer = client.chat.completions.with_raw_response.create(
            model=model.id, messages=[{"role": "user", "content": QUESTION}], max_tokens=48, temperature=0.7
        )
        completion = answer.parse()
        request_id = answer.headers["x-request-id"]
        print(f"\n{model.id}:{completion.choices[0].message.content}")
        print(f"  (served by {completion.system_fingerprint} through HAProxy, request id {request_id})")
    instances = ", ".join(
        f"{server.vars['model_runtime_listen_address']}:{server.port(i)}" for i in server.instances()
    )
    print(
        f"\nThe fleet answers at {base_url} (OpenAI API; key in {API_KEY.relative_to(REPO)}),\n"
        f"trusting the fleet's CA: {ca.relative_to(REPO)}\n"
        f"HAProxy's stats at http://{lb['loadbalancer_stats_address']}:{lb['loadbalancer_stats_port']}/stats,"
        f" instances at {instances}.\n"
        "Stop it with: make demo-stop"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
