"""Health, readiness, version and metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from birdsearch.service.deps import RuntimeDep
from birdsearch.service.metrics import exposition
from birdsearch.service.schemas import Health, Readiness, VersionInfo

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="The process is up")
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Models loaded and an index served (the container healthcheck)",
    responses={503: {"model": Readiness, "description": "not ready, with the reason"}},
)
async def readyz(runtime: RuntimeDep) -> Response:
    ready, detail = runtime.readiness()
    current = runtime.holder.current if runtime.holder else None
    body = Readiness(ready=ready, index=current.name if current else None, modes=runtime.modes, detail=detail)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/version", response_model=VersionInfo, summary="Software, models and index versions")
async def version(runtime: RuntimeDep) -> VersionInfo:
    return VersionInfo(**runtime.versions())


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics",
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format"}},
)
async def metrics() -> Response:
    body, content_type = exposition()
    return Response(body, media_type=content_type)
