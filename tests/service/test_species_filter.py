"""Species lists in the service: BIRDSEARCH_SPECIES_LIST, a request's species_list, and query --species-list."""

import httpx
import pytest

from birdsearch.engine.species_list import UnknownSpeciesError

FOCAL = "perch_21100_36_48_16k_10s.flac"


async def post(client, path, **form):
    with open(path, "rb") as f:
        return await client.post("/query", files={"audio": (path.name, f.read())}, data=form)


def answers(api, helpers, settings, *forms):
    path = helpers.audio_file(FOCAL)

    async def main():
        async with api(**settings) as (_, client):
            return [await post(client, path, mode="distilled", species_k="5", **form) for form in forms]

    return helpers.run(main())


def species_of(response):
    assert response.status_code == 200, response.text
    body = response.json()
    return {s["species"] for s in body["species"]} | {i["species"] for i in body["images"]}


def test_the_server_list_limits_every_answer_and_a_request_list_wins(api, helpers, tmp_path):
    site = tmp_path / "site.txt"
    site.write_text("Junco hyemalis_Dark-eyed Junco\nGavia immer_Common Loon\n")  # the loon: not in the index
    plain, own, typo, empty_mix = answers(
        api, helpers, {"species_list": str(site)},
        {}, {"species_list": "Turdus merula\nTurdus migratorius"}, {"species_list": "Turdus migratoryus"},
        {"species_list": "Turdus merula", "species": "Junco hyemalis"},
    )  # fmt: skip
    assert species_of(plain) == {"Junco hyemalis"}  # the unknown loon is skipped for a site list
    assert species_of(own) <= {"Turdus merula", "Turdus migratorius"} and species_of(own)
    assert typo.status_code == 422
    assert (
        "Turdus migratoryus" in typo.json()["detail"]
        and "nearest: Turdus migratorius" in typo.json()["detail"]
    )
    assert empty_mix.status_code == 422 and "listed species" in empty_mix.json()["detail"]


def test_a_bad_species_list_setting_is_refused_at_start(settings_for, tmp_path):
    with pytest.raises(Exception, match="cannot read species list"):
        settings_for(species_list=str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(Exception, match="empty.txt"):
        settings_for(species_list=str(empty))


def test_query_resolves_its_list_against_the_servers_species(monkeypatch, tmp_path):
    from birdsearch import client

    served = {"index": "v9", "species": [
        {"species": "Turdus migratorius", "common_name": "American Robin"},
        {"species": "Junco hyemalis", "common_name": "Dark-eyed Junco"},
    ]}  # fmt: skip
    seen = []

    def fake_get(url, timeout):
        seen.append(url)
        return httpx.Response(200, json=served)

    monkeypatch.setattr(httpx, "get", fake_get)
    listed = tmp_path / "list.txt"
    listed.write_text("Junco hyemalis_Dark-eyed Junco\nturdus migratorius\n")
    assert client.resolve_list(listed, "http://server:8000/") == "Junco hyemalis\nTurdus migratorius"
    assert seen == ["http://server:8000/species"]
    listed.write_text("Junco hiemalis\nTurdus migratorius\n")  # a typo: skipped, only known names are sent
    assert client.resolve_list(listed, "http://server:8000") == "Turdus migratorius"
    with pytest.raises(UnknownSpeciesError, match="nearest: Junco hyemalis"):
        client.resolve_list(listed, "http://server:8000", strict=True)
