"""The world's checklists as species tables: excerpts in the eBird, eBird/Clements and IOC layouts."""

from pathlib import Path

import numpy as np
import pytest

from birdsearch.errors import ConfigError
from birdsearch.indexer.taxonomy import TaxonomyResolver
from birdsearch.model.distill.manifest import load_manifest, load_species_table
from birdsearch.model.world_lists import detect_layout, read_world_list

LISTS = Path(__file__).parents[1] / "data" / "world_lists"
OSTRICHES = [
    ("Struthio camelus", "Common Ostrich", "Struthioniformes", "Struthionidae", "Struthio"),
    ("Struthio molybdophanes", "Somali Ostrich", "Struthioniformes", "Struthionidae", "Struthio"),
]
MALLARD = ("Anas platyrhynchos", "Mallard", "Anseriformes", "Anatidae", "Anas")
ROBIN = ("Turdus migratorius", "American Robin", "Passeriformes", "Turdidae", "Turdus")


def rows(world):
    return [(t.scientific, t.common, t.order, t.family, t.genus) for t in world.taxa]


@pytest.mark.parametrize(
    "name, layout, species, keys",
    [
        ("ebird_taxonomy_v2024.csv", "ebird", [*OSTRICHES, MALLARD, ROBIN], ["ostric2", "ostric3", "mallar3", "amerob"]),
        ("ebird_taxonomy_v2022.csv", "ebird", OSTRICHES, ["ostric2", "ostric3"]),
        ("clements_v2024.csv", "clements", [*OSTRICHES, MALLARD], ["ostric2", "ostric3", "mallar3"]),
        ("ioc_master_v14.1.csv", "ioc", [*OSTRICHES, MALLARD], ["", "", ""]),
        ("ioc_multilingual_v14.1.csv", "ioc_multilingual", [*OSTRICHES, MALLARD, ROBIN], ["", "", "", ""]),
    ],
)  # fmt: skip
def test_each_layout_keeps_species_rank_rows_with_their_lineage(name, layout, species, keys):
    # slash, spuh, issf, subspecies and group rows are dropped; "Family (gloss)" loses its gloss;
    # the IOC tree gives each epithet its genus, family and order (capitals undone)
    world = read_world_list(LISTS / name)
    assert world.layout == layout
    assert rows(world) == species
    assert world.keys == keys


def test_the_multilingual_list_keeps_each_language_in_its_own_column():
    world = read_world_list(LISTS / "ioc_multilingual_v14.1.csv")
    assert list(world.languages)[:3] == [
        "Catalan",
        "Chinese",
        "Chinese (Traditional)",
    ]  # English is the taxa's
    assert len(world.languages) == 43 and world.languages["Thai"] == ["", "", "", ""]
    assert world.languages["German"] == ["Strauß", "Somalistrauß", "Stockente", "Wanderdrossel"]
    assert world.languages["Swedish"][1] == ""  # a name the excerpt leaves out: the lookup falls back


def test_the_species_table_loader_reads_world_lists_and_their_codes():
    table = load_species_table(LISTS / "ebird_taxonomy_v2024.csv")
    assert table.taxa[table.lookup("ostric3")].scientific == "Struthio molybdophanes"
    assert table.lookup("Somali Ostrich") == table.lookup("Struthio molybdophanes")
    ioc = load_species_table(LISTS / "ioc_master_v14.1.csv")
    assert [t.scientific for t in ioc.taxa] == [s[0] for s in [*OSTRICHES, MALLARD]]


def test_other_tables_are_left_to_the_project_layout(tmp_path):
    own = tmp_path / "taxa.csv"
    own.write_text(
        "scientific_name,common_name,order,family\nStruthio camelus,Common Ostrich,Struthioniformes,Struthionidae\n"
    )
    assert read_world_list(own) is None
    assert load_species_table(own).taxa[0].common == "Common Ostrich"
    assert detect_layout(["TAXON_ORDER", "CATEGORY", "SPECIES_CODE"]) is None  # a partial header is no layout


def test_an_ioc_species_without_a_genus_row_is_an_error(tmp_path):
    bad = tmp_path / "ioc.csv"
    text = (LISTS / "ioc_master_v14.1.csv").read_text().replace(",,,,Struthio,,,", ",,,,,,,")
    bad.write_text(text)
    with pytest.raises(ConfigError, match="camelus.*no genus row"):
        read_world_list(bad)


def test_index_resolves_labels_through_given_lists_and_warns_once_naming_what_is_missing(caplog):
    resolver = TaxonomyResolver([LISTS / "clements_v2024.csv"])
    somali = resolver.resolve("Struthio_molybdophanes")
    assert (somali.common, somali.family, somali.order, somali.resolved_by) == (
        "Somali Ostrich", "Struthionidae", "Struthioniformes", "table",
    )  # fmt: skip
    assert resolver.resolve("ostric2").scientific == "Struthio camelus"  # by species code
    assert (somali.code, resolver.resolve("ostric2").code) == ("ostric3", "ostric2")  # BirdNET's Species Code
    assert resolver.resolve("Turdus migratorius").code == ""  # the bundled table has no codes
    assert resolver.resolve("Turdus migratorius").common == "American Robin"  # the bundled table still counts
    with caplog.at_level("WARNING"):
        resolver.resolve("Xenoglaux loweryi")
        resolver.resolve("Xenoglaux loweryi")
    warnings = [r.getMessage() for r in caplog.records if "Xenoglaux" in r.getMessage()]
    assert len(warnings) == 1
    assert "common name, family, order" in warnings[0] and "clements_v2024.csv" in warnings[0]


def test_a_species_takes_its_code_from_whichever_table_has_one():
    # the IOC list comes first and wins the names and lineage, but has no codes; eBird's fills them
    resolver = TaxonomyResolver([LISTS / "ioc_master_v14.1.csv", LISTS / "ebird_taxonomy_v2024.csv"])
    mallard = resolver.resolve("Anas platyrhynchos")
    assert (mallard.common, mallard.code) == ("Mallard", "mallar3")
    assert (
        resolver.resolve("Anas platyrhynchos", {"species_code": "mymallard"}).code == "mymallard"
    )  # manifest wins
    assert TaxonomyResolver([LISTS / "ioc_master_v14.1.csv"]).resolve("Anas platyrhynchos").code == ""


def test_index_refuses_a_taxa_file_in_no_published_layout(tmp_path):
    own = tmp_path / "taxa.csv"
    own.write_text("scientific_name\nStruthio camelus\n")
    with pytest.raises(ConfigError, match="none of the published layouts"):
        TaxonomyResolver([own])


def test_a_manifest_names_species_by_code_and_keeps_only_the_species_it_uses(tmp_path):
    # a checklist lists every bird; the data set's species (classes, distillation targets) are its own
    import soundfile as sf

    rows = ["path,species,split"]
    for i, name in enumerate(["amerob", "Mallard", "amerob", "Anas platyrhynchos"]):
        sf.write(tmp_path / f"c{i}.wav", np.zeros(1600, np.float32), 16000)
        rows.append(f"c{i}.wav,{name},{'val' if i > 1 else 'train'}")
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(rows) + "\n")
    loaded = load_manifest(manifest, LISTS / "ebird_taxonomy_v2024.csv")
    assert [t.scientific for t in loaded.taxa] == ["Anas platyrhynchos", "Turdus migratorius"]  # table order
    assert [loaded.taxa[c.species].common for c in loaded.clips] == ["American Robin", "Mallard"] * 2


def test_soundscape_labels_cover_the_annotated_species_of_a_checklist(tmp_path):
    import soundfile as sf

    from birdsearch.model.evaluate.datasets import load_soundscapes

    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "dawn.wav", np.zeros(16000 * 10, np.float32), 16000)
    annotations = tmp_path / "annotations.csv"
    annotations.write_text("filename,start_s,end_s,ebird_code\ndawn.wav,1,2,ostric3\ndawn.wav,6,7,mallar3\n")
    soundscapes = load_soundscapes(annotations, audio, LISTS / "ebird_taxonomy_v2024.csv", segment_s=5.0)
    assert [t.scientific for t in soundscapes.taxa] == ["Struthio molybdophanes", "Anas platyrhynchos"]
    assert soundscapes.labels.tolist() == [[True, False], [False, True]]
