"""``GET /species``: the species of the served index, for filters and pick lists."""

from __future__ import annotations

from fastapi import APIRouter

from birdsearch.service.deps import RuntimeDep
from birdsearch.service.schemas import SpeciesInfo, SpeciesList, error_responses

router = APIRouter(tags=["index"])


@router.get(
    "/species", response_model=SpeciesList, responses=error_responses(503), summary="Species in the index"
)
async def species(runtime: RuntimeDep) -> SpeciesList:
    served = runtime.served()
    return SpeciesList(
        index=served.name,
        species=[
            SpeciesInfo(
                species=r.scientific, common_name=r.common, genus=r.genus, family=r.family,
                order=r.order, images=r.image_count, species_code=r.code,
            )
            for r in served.species
        ],
    )  # fmt: skip
