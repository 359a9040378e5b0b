"""A client of the query service over HTTP: send a recording, get the answer (``birdsearch query``,
``analyze --url``)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from birdsearch.errors import BirdsearchError

DEFAULT_URL = "http://127.0.0.1:8000"


class ServiceError(BirdsearchError):
    """The server refused the query or could not be reached; the message carries its reason."""

    code = "service_error"

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.server_code = code


def default_url() -> str:
    return os.environ.get("BIRDSEARCH_URL", DEFAULT_URL)


def query_file(
    path: str | Path,
    url: str | None = None,
    timeout_s: float = 120.0,
    **params: Any,
) -> dict[str, Any]:
    """POST ``path`` to ``{url}/query`` with form ``params`` (k, species_k, mode, ...); the JSON answer.

    Raises ServiceError with the server's ``detail`` for an error answer.
    """
    import httpx

    path = Path(path)
    base = (url or default_url()).rstrip("/")
    form: dict[str, Any] = {}
    for key, value in params.items():
        if value is None or value == []:
            continue
        form[key] = [str(v) for v in value] if isinstance(value, list | tuple) else str(value)
    try:
        with path.open("rb") as f:
            response = httpx.post(
                f"{base}/query",
                files={"audio": (path.name, f, "application/octet-stream")},
                data=form,
                timeout=timeout_s,
            )
    except FileNotFoundError as e:
        raise ServiceError(f"{path}: no such file") from e
    except httpx.HTTPError as e:
        raise ServiceError(
            f"cannot reach the query service at {base} ({e}); start it with 'birdsearch serve'"
        ) from e
    if response.status_code != 200:
        try:
            body = response.json()
            detail, code = body.get("detail"), body.get("code")
        except ValueError:
            detail, code = response.text[:500], None
        raise ServiceError(
            f"{path.name}: the server answered {response.status_code}: {detail}", response.status_code, code
        )
    return response.json()


def resolve_list(
    path: str | Path, url: str | None = None, timeout_s: float = 30.0, strict: bool = False
) -> str:
    """A species list file resolved against the server's species (``GET /species``): the names, one a line.

    Checked here, before any upload: names the server lacks are skipped with a warning that gives the
    nearest names it holds (``strict``: refused), so that only names it knows are sent.
    """
    from birdsearch.engine.species_list import STRICT_HINT, read_species_list, resolve_species_list

    entries = read_species_list(path)
    body = get_json("species", url, timeout_s)
    species = [SimpleNamespace(scientific=s["species"], common=s["common_name"]) for s in body["species"]]
    index = f"the server's index {body['index']}"
    return "\n".join(resolve_species_list(entries, species, strict, index=index, hint=STRICT_HINT))


def get_json(endpoint: str, url: str | None = None, timeout_s: float = 30.0) -> dict[str, Any]:
    """``GET {url}/{endpoint}`` (species, version, ...): the JSON answer, or a ServiceError saying why not."""
    import httpx

    base = (url or default_url()).rstrip("/")
    try:
        response = httpx.get(f"{base}/{endpoint}", timeout=timeout_s)
    except httpx.HTTPError as e:
        raise ServiceError(
            f"cannot reach the query service at {base} ({e}); start it with 'birdsearch serve'"
        ) from e
    if response.status_code != 200:
        raise ServiceError(
            f"GET /{endpoint} answered {response.status_code}: {response.text[:300]}", response.status_code
        )
    return response.json()


def render_table(answer: dict[str, Any]) -> str:
    """The answer as text: facts, the species ranking, the photos and (for long recordings) the timeline."""
    q = answer["query"]
    lines = [
        f"{q['duration_s']:.1f} s, {q['windows']} window(s) of {q['window_s']:g} s (hop {q['hop_s']:g} s); "
        f"mode {q['model']['mode']}, index {q['index']['name']} ({q['index']['count']} images); "
        f"{q['timings_ms']['total']:.0f} ms",
        "",
        f"{'#':>2}  {'score':>6}  {'conf':>5}  {'windows':>7}  species",
    ]
    if answer.get("abstained"):
        words = "not in this gallery" if answer.get("reason") == "novel" else "nothing detected"
        lines.append(f"    {words}: {answer.get('message') or 'no species reached the confidence threshold'}")
    for i, s in enumerate(answer["species"], 1):
        name = f"{s['common_name']} ({s['species']})" if s["common_name"] else s["species"]
        nearest = "" if s.get("detected", True) else "  (nearest, not detected)"
        lines.append(f"{i:>2}  {s['score']:>6.3f}  {confidence(s):>5}  {s['windows']:>7}  {name}{nearest}")
    lines += ["", f"{'#':>2}  {'score':>6}  {'image':>6}  species / license / attribution"]
    for i, hit in enumerate(answer["images"], 1):
        extra = " / ".join(x for x in (hit["license"], hit["attribution"]) if x)
        lines.append(
            f"{i:>2}  {hit['score']:>6.3f}  {hit['id']:>6}  {hit['species']}"
            + (f" / {extra}" if extra else "")
        )
    if len(answer["timeline"]) > 1:
        lines += ["", "timeline:"]
        for w in answer["timeline"]:
            heard = [s for s in w["species"] if s.get("detected", True)]
            best = ", ".join(f"{s['common_name'] or s['species']} {s['score']:.3f}" for s in heard[:3])
            if not best and w.get("abstained"):
                best = ("not in this gallery (unlike the recordings the model knows)" if w.get("reason") == "novel"
                        else "nothing above the threshold")  # fmt: skip
            lines.append(f"  {w['start_s']:7.1f}–{w['end_s']:<7.1f} {best}")
    return "\n".join(lines) + "\n"


def confidence(hit: dict[str, Any]) -> str:
    """A species' calibrated confidence for the table; "-" when the server has no calibration."""
    value = hit.get("confidence")
    return "-" if value is None else f"{value:.2f}"
