"""Liveness (the process answers) apart from readiness (send it traffic): a load balancer takes a replica
out on 503 from /health/ready while it loads, drains, failed or its engine stalls, without the
supervisor restarting it. Readiness says why in fixed words; what went wrong in detail is in the log."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from model_runtime.server.errors import NOT_READY_MESSAGES
from model_runtime.server.protocol import Health

router = APIRouter(prefix="/health")


@router.get("/live", response_model=Health)
def live() -> Health:
    return Health(status="alive")


@router.get("/ready", response_model=Health, responses={503: {"model": Health}})
def ready(request: Request) -> JSONResponse:
    runtime = request.app.state.runtime
    state = runtime.readiness()
    body = Health(
        status=state,
        models={name: m.version for name, m in runtime.models.items()},
        detail=NOT_READY_MESSAGES.get(state),
    )
    return JSONResponse(body.model_dump(), status_code=200 if state == "ready" else 503)
