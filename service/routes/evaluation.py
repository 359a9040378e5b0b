"""``GET /evaluation``: how the served models were evaluated, from the file ``BIRDSEARCH_EVALUATION_REPORT``."""

from __future__ import annotations

from fastapi import APIRouter

from birdsearch.engine.redact import redact_paths
from birdsearch.service.deps import SettingsDep
from birdsearch.service.errors import NotFoundError
from birdsearch.service.schemas import EvaluationReport

router = APIRouter(tags=["operations"])


@router.get(
    "/evaluation",
    response_model=EvaluationReport,
    summary="The served models' evaluation report (Markdown), once it is written",
    responses={404: {"description": "no report configured (BIRDSEARCH_EVALUATION_REPORT is unset)"}},
)
async def evaluation(settings: SettingsDep) -> EvaluationReport:
    """The report, or ``ready: false`` while its file does not exist yet (the page asks again later)."""
    if settings.evaluation_report is None:
        raise NotFoundError(
            "this server has no evaluation report: set BIRDSEARCH_EVALUATION_REPORT to a Markdown file"
        )
    try:
        text = settings.evaluation_report.read_text(encoding="utf-8")
    except FileNotFoundError:
        return EvaluationReport(ready=False)
    return EvaluationReport(ready=True, markdown=redact_paths(text))  # a report may name the server's files
