"""``GET /images/{id}`` and ``GET /images/{id}/thumbnail``: the photos of the served index.

Ids are the served version's; the optional ``h`` (the photo's content hash, which query answers put
in every URL) finds the same photo after a newer version renumbered it. Anything that is not a
plain id, an unknown id or a hash of no photo is a 404: there is no path in the URL to play with.
"""

from __future__ import annotations

import asyncio
import re
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, Response

from birdsearch.engine.index_state import ServedIndex
from birdsearch.errors import BirdsearchError
from birdsearch.service.deps import RuntimeDep, SettingsDep, ThumbnailsDep
from birdsearch.service.errors import NotFoundError
from birdsearch.service.schemas import error_responses

router = APIRouter(tags=["images"])

ID_PATTERN = re.compile(r"[0-9]{1,12}")
HASH_PATTERN = re.compile(r"[0-9a-f]{64}")
CACHE_CONTROL = "public, max-age=3600"
HashQuery = Annotated[str | None, Query(description="the photo's content hash (from a query answer)")]
PHOTO_RESPONSES = {
    200: {"content": {"image/jpeg": {}, "image/png": {}}, "description": "the photo"},
    **error_responses(404, 503),
}


def resolve_id(served: ServedIndex, image_id: str, content_hash: str | None) -> int:
    """The id in the served version of the photo the client means, or NotFoundError."""
    if not ID_PATTERN.fullmatch(image_id) or (
        content_hash is not None and not HASH_PATTERN.fullmatch(content_hash)
    ):
        raise NotFoundError(f"no image {image_id!r}: image ids are numbers from a /query answer")
    number = int(image_id)
    version = served.version
    if content_hash is None:
        if number >= version.count:
            raise NotFoundError(f"no image {number} in index {served.name} (0..{version.count - 1})")
        return number
    if number < version.count and version.image(number).content_hash == content_hash:
        return number
    moved = version.ids_for_hash(content_hash)
    if moved.size == 0:
        raise NotFoundError(
            f"image {number} with hash {content_hash[:12]}… is not in index {served.name} any more"
        )
    return int(moved[0])


def photo_path(served: ServedIndex, image_id: str, content_hash: str | None):
    number = resolve_id(served, image_id, content_hash)
    try:
        return number, served.version.image_file(number)
    except BirdsearchError as e:  # the file went missing from the gallery
        raise NotFoundError(str(e)) from e


@router.get("/images/{image_id}", response_class=FileResponse, responses=PHOTO_RESPONSES, summary="A photo")
async def image(image_id: str, runtime: RuntimeDep, h: HashQuery = None) -> FileResponse:
    served = runtime.served()
    _, path = await asyncio.to_thread(photo_path, served, image_id, h)
    return FileResponse(path, headers={"Cache-Control": CACHE_CONTROL})


@router.get(
    "/images/{image_id}/thumbnail",
    response_class=Response,
    responses=PHOTO_RESPONSES,
    summary="A photo's thumbnail",
)
async def thumbnail(
    image_id: str, runtime: RuntimeDep, settings: SettingsDep, thumbnails: ThumbnailsDep, h: HashQuery = None
) -> Response:
    served = runtime.served()

    def load() -> Response:
        number = resolve_id(served, image_id, h)
        record = served.version.image(number)
        stored = served.version.root / record.thumbnail if record.thumbnail else None
        if stored is not None and stored.is_file():
            return FileResponse(stored, media_type="image/jpeg", headers={"Cache-Control": CACHE_CONTROL})
        _, original = photo_path(served, str(number), None)
        size = settings.thumbnail_size
        data = thumbnails.get((record.content_hash, size), original, size)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": CACHE_CONTROL})

    return await asyncio.to_thread(load)
