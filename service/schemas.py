"""Request and response models of the HTTP app's own routes (the OpenAPI schema is generated from these).

``POST /query``'s form is the engine's ``Question`` plus the upload; its answer is the engine's
``QueryResponse`` (``birdsearch.engine.schemas``).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import UploadFile
from pydantic import BaseModel, Field

from birdsearch.engine.schemas import IndexInfo, Question


class QueryForm(Question):
    """The multipart form of ``POST /query``: the recording and what to do with it (unknown fields: 422)."""

    audio: UploadFile = Field(
        description="the recording: wav, flac, ogg/vorbis, opus or mp3, any sample rate and channel count "
        "(at most BIRDSEARCH_MAX_UPLOAD_BYTES, refused with 413 while it streams)"
    )


class SpeciesInfo(BaseModel):
    species: str = Field(examples=["Turdus migratorius"])
    common_name: str = Field(examples=["American Robin"])
    genus: str = Field(examples=["Turdus"])
    family: str = Field(examples=["Turdidae"])
    order: str = Field(examples=["Passeriformes"])
    images: int = Field(examples=[87])
    species_code: str = Field(
        "", description="eBird species code, where the index has it", examples=["amerob"]
    )


class SpeciesList(BaseModel):
    index: str = Field(examples=["v0007"])
    species: list[SpeciesInfo]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool = Field(examples=[True])
    index: str | None = Field(None, examples=["v0007"])
    modes: list[str] = Field(
        default_factory=list, examples=[["distilled", "classifier", "hybrid", "cascade"]]
    )
    detail: str | None = Field(None, examples=[None])


class VersionInfo(BaseModel):
    birdsearch: str = Field(examples=["0.1.0"])
    api: int = Field(examples=[1])
    default_mode: str = Field(examples=["distilled"], description="what mode=auto answers with")
    default_mode_reason: str | None = Field(
        None,
        description="why: the encoder's validation choice, as its card records it (none for the cascade)",
        examples=["classifier: the highest validation mAP, 84.1 (against distilled 77.0, hybrid 84.1)"],
    )
    modes: list[str] = Field(
        default_factory=list, examples=[["distilled", "classifier", "hybrid", "cascade"]]
    )
    models: dict[str, dict[str, Any]] = Field(description="each mode's model facts")
    open_set: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="each mode's open-set gate: the novelty signal, its threshold, the min_conf chosen with it "
        "(a mode without one answers every window)",
    )
    index: IndexInfo | None


class ReloadResult(BaseModel):
    changed: bool = Field(examples=[True])
    previous: str | None = Field(examples=["v0006"])
    current: str | None = Field(examples=["v0007"])
    detail: str | None = Field(None, description="why a published version was not loaded", examples=[None])


class ErrorResponse(BaseModel):
    """Every error: a message naming the problem and a stable machine-readable code."""

    detail: Any = Field(
        examples=["upload: not a recording libsndfile can read (...); use wav, flac, ogg, opus or mp3"]
    )
    code: str = Field(examples=["unsupported_audio"])


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route can give."""
    described = {
        401: ("Missing or wrong admin key", "unauthorized"),
        403: ("Admin routes are disabled (no BIRDSEARCH_ADMIN_KEY)", "admin_disabled"),
        404: ("Unknown image, or a path that leads nowhere", "not_found"),
        413: ("Upload or recording too large (refused while streaming)", "upload_too_large"),
        415: ("Not a recording this server can decode", "unsupported_audio"),
        422: ("Bad parameter, or corrupt, empty or silent audio", "bad_parameter"),
        503: ("Not ready: no index published yet, or models still loading", "not_ready"),
    }
    return {
        status: {
            "model": ErrorResponse,
            "description": described[status][0],
            "content": {
                "application/json": {
                    "example": {"detail": described[status][0], "code": described[status][1]}
                }
            },
        }
        for status in statuses
    }


class EvaluationReport(BaseModel):
    ready: bool = Field(
        description="false until the report file exists (the demo writes it when its evaluation is done)",
        examples=[True],
    )
    markdown: str | None = Field(
        None, description="the report (tables of every method)", examples=["| method | mAP |"]
    )
