"""Liveness (the process answers) apart from readiness (send it traffic): a load balancer takes a replica
out on 503 from /health/ready while it loads, drains or fails, without the supervisor restarting it."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from model_runtime.server.protocol import Health

router = APIRouter(prefix="/health")


@router.get("/live", response_model=Health)
def live() -> Health:
    return Health(status="alive")


@router.get("/ready", response_model=Health, responses={503: {"model": Health}})
def ready(request: Request) -> JSONResponse:
    runtime = request.app.state.runtime
    body = Health(
        status=runtime.phase,
        models={name: m.version for name, m in runtime.models.items()},
        detail=runtime.detail,
    )
    return JSONResponse(body.model_dump(), status_code=200 if runtime.phase == "ready" else 503)
