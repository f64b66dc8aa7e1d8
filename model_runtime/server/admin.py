"""The admin endpoints: off unless admin keys are configured, their own keys (checked by the edge
middleware), and served on the internal listener only, never on the one clients reach."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from model_runtime.server.errors import APIError

router = APIRouter(prefix="/admin", include_in_schema=False)


class SwapRequest(BaseModel):
    path: str = Field(description="Model folder, or registry:NAME[@ALIAS|:VERSION]")
    version: str | None = None


class SwapResponse(BaseModel):
    model: str
    version: str
    previous: str | None
    seconds: float


@router.post("/models/{name}/swap", response_model=SwapResponse)
async def swap(name: str, body: SwapRequest, request: Request) -> SwapResponse:
    runtime = request.app.state.runtime
    if runtime.phase != "ready":
        raise APIError(409, f"the server is {runtime.phase}; a swap needs it ready", code="not_ready")
    current = runtime.settings.model
    model = current.model_copy(update={"path": body.path, "version": body.version, "served_name": name})
    result = await request.app.state.swapper.swap(model)
    return SwapResponse(
        model=result.name, version=result.version, previous=result.previous, seconds=result.seconds
    )


@router.get("/models")
def models(request: Request) -> dict:
    runtime = request.app.state.runtime
    return {
        name: {
            "version": m.version,
            "outstanding": m.scheduler.outstanding,
            "max_context": m.info.max_context,
        }
        for name, m in runtime.models.items()
    }
