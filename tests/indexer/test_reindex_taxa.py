"""`birdsearch reindex` reads the species tables the index was built with, unless told otherwise."""

import shutil
from pathlib import Path

from birdsearch.indexer.store import IndexRoot

from .test_reindex_first_version import cli

CLEMENTS = Path(__file__).parents[1] / "data" / "world_lists" / "clements_v2024.csv"


def common_names(out):
    return {s.scientific: s.common for s in IndexRoot(out).open_current().species()}


def test_reindex_remembers_the_species_tables(tmp_path, tiny_teacher_spec, synthetic_photos):
    gallery, out = tmp_path / "gallery", tmp_path / "index"
    table = Path(shutil.copy(CLEMENTS, tmp_path / "clements.csv"))
    synthetic_photos(
        gallery / "Struthio_molybdophanes", 2, seed=1
    )  # in the checklist, not in the bundled table
    common = ["--out", str(out), "--device", "cpu", "--workers", "0", "--no-progress"]
    first = cli(
        "index", "--gallery", str(gallery), "--teacher", tiny_teacher_spec, "--taxa", str(table), *common
    )
    assert first.returncode == 0, first.stderr
    assert common_names(out) == {"Struthio molybdophanes": "Somali Ostrich"}
    assert [s.code for s in IndexRoot(out).open_current().species()] == [
        "ostric3"
    ]  # the checklist's eBird code

    synthetic_photos(gallery / "Struthio_molybdophanes", 3, seed=2)  # one new photo, two changed
    second = cli("reindex", *common)
    assert second.returncode == 0, second.stderr
    assert "published v0002" in second.stdout
    assert common_names(out) == {"Struthio molybdophanes": "Somali Ostrich"}  # not the bundled fallback

    table.unlink()
    synthetic_photos(gallery / "Struthio_molybdophanes", 4, seed=3)
    gone = cli("reindex", *common)
    assert gone.returncode == 2 and str(table) in gone.stderr and "--no-taxa" in gone.stderr
    assert IndexRoot(out).current_name() == "v0002"

    contradicting = cli("reindex", "--taxa", str(CLEMENTS), "--no-taxa", *common)
    assert contradicting.returncode == 2 and "contradict" in contradicting.stderr
    bundled_only = cli("reindex", "--no-taxa", *common)
    assert bundled_only.returncode == 0, bundled_only.stderr
    assert common_names(out) != {"Struthio molybdophanes": "Somali Ostrich"}
    assert IndexRoot(out).open_current().manifest["taxa"] == []
