"""``POST /query``: a recording in, species and photos out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form

from birdsearch.engine.schemas import QueryResponse
from birdsearch.service.deps import RuntimeDep
from birdsearch.service.schemas import QueryForm, error_responses

router = APIRouter(tags=["query"])


@router.post(
    "/query",
    response_model=QueryResponse,
    summary="Species and photos for a bird recording",
    description=(
        "Decodes the upload to 48 kHz mono, cuts it into windows (`window_s`, `hop_s`), embeds the windows "
        "(micro-batched with concurrent requests) and searches the photo index with each. The answer ranks "
        "species over the whole recording (see `aggregation`), lists the best photos, and gives a per-window "
        "timeline. Example: `curl -F audio=@robin.mp3 -F k=12 -F species_k=5 http://HOST/query`."
    ),
    responses=error_responses(413, 415, 422, 503),
)
async def query(
    runtime: RuntimeDep, form: Annotated[QueryForm, Form(media_type="multipart/form-data")]
) -> QueryResponse:
    return await runtime.query(form.audio.file, form)
