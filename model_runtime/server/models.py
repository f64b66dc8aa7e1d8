"""GET /v1/models: the table of served models."""

from __future__ import annotations

from fastapi import APIRouter, Request

from model_runtime.server.auth import key_policy
from model_runtime.server.protocol import ModelCard, ModelList

router = APIRouter()


@router.get("/v1/models", response_model=ModelList)
def list_models(request: Request) -> ModelList:
    runtime = request.app.state.runtime
    policy = key_policy(request)
    return ModelList(
        data=[
            ModelCard(id=name, created=m.created, version=m.version, max_model_len=m.info.max_context)
            for name, m in runtime.models.items()
            if policy.may_use(name)
        ]
    )
