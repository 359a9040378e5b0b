"""``POST /query``: a recording in, species and photos out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile

from birdsearch.service.deps import RuntimeDep
from birdsearch.service.errors import BadParameterError
from birdsearch.service.schemas import QueryForm, QueryResponse, error_responses

router = APIRouter(tags=["query"])

AUDIO_DESCRIPTION = (
    "the recording: wav, flac, ogg/vorbis, opus or mp3, any sample rate and channel count "
    "(at most BIRDSEARCH_MAX_UPLOAD_BYTES, refused with 413 while it streams)"
)


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
    request: Request,
    runtime: RuntimeDep,
    audio: Annotated[UploadFile, File(description=AUDIO_DESCRIPTION)],
    form: Annotated[QueryForm, Form()],
) -> QueryResponse:
    await refuse_unknown_fields(request)
    return await runtime.query(audio.file, form)


async def refuse_unknown_fields(request: Request) -> None:
    """A misspelt field (``top_k``) is an error, not a silently ignored wish."""
    known = set(QueryForm.model_fields) | {"audio"}
    unknown = sorted(set((await request.form()).keys()) - known)
    if unknown:
        raise BadParameterError(
            f"unknown form field(s) {unknown}; known: audio, {', '.join(QueryForm.model_fields)}"
        )
