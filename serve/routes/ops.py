"""The operational routes: liveness, readiness and Prometheus metrics (no API key).

The route functions carry no docstrings: FastAPI would publish them in the OpenAPI schema.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from serve.deps import ready_state, server_state
from serve.http_schemas import ErrorResponse, Status
from serve.state import ServerState

router = APIRouter()


@router.get("/healthz", response_model=Status, summary="Liveness: the process answers")
async def healthz() -> Status:
    return Status(status="ok")


@router.get("/readyz", response_model=Status, summary="Readiness: model loaded and warmed up",
            responses={503: {"model": ErrorResponse, "description": "not ready yet"}})  # fmt: skip
async def readyz(state: Annotated[ServerState, Depends(ready_state)]) -> Status:
    return Status(status="ready")


@router.get("/metrics", summary="Prometheus metrics",
            responses={200: {"content": {"text/plain": {}}}})  # fmt: skip
async def metrics(state: Annotated[ServerState, Depends(server_state)]) -> Response:
    return Response(state.metrics.render(), media_type=state.metrics.content_type)
