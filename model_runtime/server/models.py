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
    served = [
        ModelCard(id=name, created=m.created, version=m.version, max_model_len=m.info.max_context)
        for name, m in runtime.models.items()
    ]
    # The endpoint's other models: their own instances know their version and context length.
    beside = [
        ModelCard(id=name, created=0)
        for name in runtime.settings.server.listed_models
        if name not in runtime.models
    ]
    return ModelList(data=[card for card in served + beside if policy.may_use(card.id)])
