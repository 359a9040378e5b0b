"""No answer tells a client where things live on the server: every string of every answer is scanned
for the test's temporary folders, the home directory and any absolute path that exists on disk."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from birdsearch.engine.redact import model_name, redact_paths

FOCAL = "perch_21100_36_48_16k_10s.flac"
# "/a/b..." not glued to a word, a dot or a URL's host (URLs such as /images/3?h=... do not exist on disk)
PATH_LIKE = re.compile(r"(?<![\w.…/])(?:/[\w.@+~-]+){2,}")


def strings(value):
    """Every string in a decoded JSON answer, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def leaks(text: str, secrets: list[str]) -> list[str]:
    """The server paths in ``text``: a known folder, or an absolute path (or a parent of it) on disk."""
    found = [secret for secret in secrets if secret in text]
    for match in PATH_LIKE.finditer(text):
        parts = Path(match.group(0)).parts  # ("/", "a", "b", ...)
        if any(Path(*parts[:n]).exists() for n in range(3, len(parts) + 1)):
            found.append(match.group(0))
    return found


@pytest.fixture
def secrets(tmp_path_factory, tmp_path, tiny_models, index_root):
    """Folders no answer may name: pytest's temporary root, this test's folder, the models, the home."""
    folders = [tmp_path_factory.getbasetemp(), tmp_path, index_root, Path.cwd()]
    folders += [Path(str(spec).removeprefix("local-dir:")) for spec in tiny_models.values()]
    home = Path.home()
    names = [str(folder.resolve()) for folder in folders] + [str(folder) for folder in folders]
    return sorted(set(names)) + [f"{home}/", f"~{os.sep}"]


def scan(answers: dict[str, object], secrets: list[str]) -> dict[str, list[str]]:
    """Each answer's leaks, by what was asked; empty lists dropped."""
    out = {}
    for asked, response in answers.items():
        kind = response.headers.get("content-type", "")
        body = response.json() if kind.startswith("application/json") else [response.text]
        found = [leak for text in strings(body) for leak in leaks(text, secrets)]
        if found:
            out[asked] = found
    return out


def test_no_answer_names_a_server_path(api, helpers, secrets):
    audio = helpers.audio_file(FOCAL).read_bytes()

    async def main():
        async with api() as (_, client):
            files = {"audio": (FOCAL, audio)}
            return {
                "version": await client.get("/version"),
                "readyz": await client.get("/readyz"),
                "healthz": await client.get("/healthz"),
                "species": await client.get("/species"),
                "query": await client.post("/query", files=files),
                "cascade query": await client.post("/query", files=files, data={"mode": "cascade"}),
                "bad upload": await client.post("/query", files={"audio": ("x.wav", b"not audio at all")}),
                "empty upload": await client.post("/query", files={"audio": ("x.wav", b"")}),
                "unknown image": await client.get("/images/999999"),
                "not an id": await client.get("/images/..%2f..%2fetc%2fpasswd"),
                "bad parameter": await client.post("/query", files=files, data={"k": "100000"}),
                "bad number": await client.post("/query", files=files, data={"hop_s": "soon"}),
                "unknown species": await client.post("/query", files=files, data={"species": "Dodo dodo"}),
                "unknown route": await client.get("/no/such/route"),
                "admin without key": await client.post("/admin/reload"),
                "metrics": await client.get("/metrics"),
                "openapi": await client.get("/openapi.json"),
            }

    answers = helpers.run(main())
    assert answers["query"].status_code == 200 and answers["version"].status_code == 200
    statuses = {k: answers[k].status_code for k in ("bad upload", "unknown image", "bad parameter")}
    assert statuses == {"bad upload": 415, "unknown image": 404, "bad parameter": 422}
    assert scan(answers, secrets) == {}


def test_models_are_named_by_their_spec_or_directory_name(api, helpers, tiny_models):
    async def main():
        async with api() as (_, client):
            return (await client.get("/version")).json()

    models = helpers.run(main())["models"]
    assert models["distilled"]["id"] == Path(tiny_models["encoder"]).name
    assert models["distilled"]["teacher"]["id"] == "local-dir:teacher"
    assert models["distilled"]["details"]["base_student"] == "local-dir:student"
    assert models["cascade"]["id"] == "local-dir:student"  # as the settings named it, less the path


def test_not_ready_and_missing_photo_answers_name_no_path(api, helpers, tiny_models, tmp_path, secrets):
    """The two answers whose reasons quote a path: no index published yet, a photo gone from disk."""
    gallery = helpers.write_gallery(tmp_path / "gallery", ("Turdus migratorius",))
    root = helpers.build_index(gallery, tmp_path / "root", str(tiny_models["teacher"]))
    for photo in gallery.rglob("*.jpg"):
        photo.unlink()

    async def main():
        answers = {}
        async with api(index_root=tmp_path / "empty-root") as (_, client):
            answers["readyz, nothing published"] = await client.get("/readyz")
            answers["query, nothing published"] = await client.post(
                "/query", files={"audio": ("x.wav", b"RIFF")}
            )
        async with api(index_root=root) as (_, client):
            answers["photo gone"] = await client.get("/images/0")
        return answers

    answers = helpers.run(main())
    assert answers["readyz, nothing published"].status_code == 503
    assert "no index published" in answers["readyz, nothing published"].json()["detail"]
    assert answers["photo gone"].status_code == 404
    assert "no longer at …/photo" in answers["photo gone"].json()["detail"]
    assert scan(answers, secrets + [str(tmp_path)]) == {}


@pytest.mark.parametrize(
    "spec, shown",
    [
        ("hf-hub:imageomics/bioclip-2", "hf-hub:imageomics/bioclip-2"),
        ("davidrrobinson/BioLingual", "davidrrobinson/BioLingual"),
        ("toy", "toy"),
        ("toy:small", "toy:small"),
        ("local-dir:/srv/models/encoder-v2", "local-dir:encoder-v2"),
        ("/srv/models/encoder-v2/", "encoder-v2"),
        ("~/models/enc", "enc"),
    ],
)
def test_model_names(spec, shown):
    assert model_name(spec) == shown


def test_redacting_free_text_keeps_routes_urls_and_specs():
    text = (
        "index version v2 refused: cannot read /data/index/v2/vectors.faiss (see GET /species, "
        "http://host/a/b, hf-hub:org/repo, local-dir:/srv/m/enc, 3/4 windows)"
    )
    assert redact_paths(text) == (
        "index version v2 refused: cannot read …/vectors.faiss (see GET /species, "
        "http://host/a/b, hf-hub:org/repo, local-dir:…/enc, 3/4 windows)"
    )
    assert json.dumps(redact_paths("at ~/private/x")) == json.dumps("at …/x")
