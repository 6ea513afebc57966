"""GET /healthz (the process is up), GET /readyz (Triton and every model ready), GET /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from orchestrator.routers.deps import ServiceDep
from orchestrator.schemas import HealthResponse, ReadinessResponse

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=HealthResponse, summary="The process is up")
async def healthz() -> HealthResponse:
    return HealthResponse()


@router.get("/readyz", response_model=ReadinessResponse,
            responses={503: {"model": ReadinessResponse, "description": "Triton down or a model not ready."}},
            summary="Triton is live and every model of the pipeline is ready")
async def readyz(service: ServiceDep) -> JSONResponse:
    readiness = await service.readiness()
    body = ReadinessResponse(ready=readiness.live and not readiness.not_ready,
                             indextts_version=service.assets.version, triton_live=readiness.live,
                             models=readiness.models, not_ready=readiness.not_ready)
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
