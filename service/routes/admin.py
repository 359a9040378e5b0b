"""``POST /admin/reload``: load the published index version now (authenticated)."""

from __future__ import annotations

from fastapi import APIRouter

from birdsearch.engine.redact import redact_paths
from birdsearch.service.deps import AdminDep, RuntimeDep
from birdsearch.service.schemas import ReloadResult, error_responses

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminDep])


@router.post(
    "/reload",
    response_model=ReloadResult,
    summary="Load the published index version now",
    description="Needs `Authorization: Bearer <BIRDSEARCH_ADMIN_KEY>`. Queries in flight finish on the old version.",
    responses=error_responses(401, 403),
)
async def reload(runtime: RuntimeDep) -> ReloadResult:
    assert runtime.holder is not None
    previous = runtime.holder.current.name if runtime.holder.current else None
    changed = await runtime.holder.refresh()
    current = runtime.holder.current.name if runtime.holder.current else None
    return ReloadResult(
        changed=changed,
        previous=previous,
        current=current,
        detail=runtime.holder.last_error and redact_paths(runtime.holder.last_error),
    )
