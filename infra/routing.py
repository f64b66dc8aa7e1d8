"""The routing tier's configuration: HAProxy on the router instances, from the stack's models.

The ALB cannot read a body, so a router reads the OpenAI body's `model` (HAProxy's json_query over
the buffered body), answers an unknown or missing model itself in the runtime's error envelope, and
sends the request on, unchanged but for one header naming the model (ROUTE_HEADER), to the internal
load balancer, whose listener rule for that header forwards to the model's group. The header is
removed from what clients send: only a router sets it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from infra.facts import READY_PATH
from infra.userdata import render
from model_runtime.server.errors import APIError, bad_request, model_not_found_body

TEMPLATES = Path(__file__).parent / "templates"
HAPROXY_TEMPLATE = TEMPLATES / "router-haproxy.cfg.j2"
CLOUD_INIT_TEMPLATE = TEMPLATES / "router-cloud-init.yaml.j2"
ROUTE_HEADER = "x-model-route"
ROUTER_PORT = 8080
# The listing has no body: the router sends it to the first model, whose instances list every model
# of the stack (server.listed_models, infra/userdata.py) that the key may use.
LISTING_PATH = "/v1/models"
MAXCONN = 4096
# Room for header rewrites (tune.maxrewrite) above the body.
REWRITE_ROOM = 16 * 1024


def quoted(text: str) -> str:
    """text as one HAProxy argument: double quotes, with backslash and double quote escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _body(error: APIError) -> str:
    return json.dumps(error.body())


def haproxy_config(names: Sequence[str], internal_dns: str, *, body_limit_kib: int, timeout_s: int) -> str:
    """names: the models, the first also answering the listing; internal_dns: the internal load
    balancer's name; timeout_s: the longest a response may take (streams included)."""
    body_limit = body_limit_kib * 1024
    too_large = APIError(413, f"The request body is larger than {body_limit_kib} KiB.", code="body_too_large")
    return render(
        HAPROXY_TEMPLATE,
        limit=1 << 20,
        maxconn=MAXCONN,
        bufsize=body_limit + REWRITE_ROOM,
        timeout_s=timeout_s,
        port=ROUTER_PORT,
        ready_path=READY_PATH,
        body_limit=body_limit,
        too_large=quoted(_body(too_large)),
        header=ROUTE_HEADER,
        listing_path=LISTING_PATH,
        listing_model=names[0],
        missing=quoted(_body(bad_request("you must provide a model parameter", param="model"))),
        names=list(names),
        # The model's name goes in through HAProxy's json converter (escaped for a JSON string).
        not_found=quoted(model_not_found_body("%[var(txn.model),json(utf8s)]")),
        internal_dns=internal_dns,
    )


def router_user_data(names: Sequence[str], haproxy_cfg: str) -> str:
    return render(CLOUD_INIT_TEMPLATE, names=list(names), haproxy_cfg=haproxy_cfg)
