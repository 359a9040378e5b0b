"""Species lists: both spellings, comments, resolution against an index's species, helpful errors."""

from types import SimpleNamespace

import pytest

from birdsearch.engine.species_list import (
    UnknownSpeciesError,
    parse_species_list,
    read_species_list,
    resolve_species_list,
)
from birdsearch.errors import ConfigError

INDEX_SPECIES = [
    SimpleNamespace(scientific="Junco hyemalis", common="Dark-eyed Junco"),
    SimpleNamespace(scientific="Passer domesticus", common="House Sparrow"),
    SimpleNamespace(scientific="Turdus merula", common="Eurasian Blackbird"),
    SimpleNamespace(scientific="Turdus migratorius", common="American Robin"),
]


def test_plain_names_and_birdnet_labels_mix_with_comments_and_blank_lines():
    text = (
        "\ufeff# site 12, week 20\n"
        "Turdus migratorius_American Robin\n"
        "\n"
        "  passer   domesticus  \n"
        "Junco hyemalis_Dark-eyed Junco\r\n"
        "# Turdus merula\n"
    )
    entries = parse_species_list(text.lstrip("\ufeff"))
    assert [(e.scientific, e.common, e.line) for e in entries] == [
        ("Turdus migratorius", "American Robin", 2),
        ("passer domesticus", "", 4),
        ("Junco hyemalis", "Dark-eyed Junco", 5),
    ]
    assert resolve_species_list(entries, INDEX_SPECIES) == [
        "Turdus migratorius",
        "Passer domesticus",
        "Junco hyemalis",
    ]


def test_a_file_with_a_byte_order_mark_reads_like_birdnet_writes_it(tmp_path):
    path = tmp_path / "species_list.txt"
    path.write_text(
        "Turdus merula_Eurasian Blackbird\nTurdus merula_Eurasian Blackbird\n", encoding="utf-8-sig"
    )
    assert resolve_species_list(read_species_list(path), INDEX_SPECIES) == ["Turdus merula"]


def test_a_renamed_species_is_found_by_its_common_name():
    entries = parse_species_list("Merula vulgaris_Eurasian Blackbird\n")
    assert resolve_species_list(entries, INDEX_SPECIES) == ["Turdus merula"]


def test_unknown_names_are_an_error_that_suggests_the_nearest_ones():
    entries = parse_species_list(
        "Turdus migratorious\nPasser domesticus\nZosterops japonicus_Warbling White-eye\n"
    )
    with pytest.raises(UnknownSpeciesError) as info:
        resolve_species_list(entries, INDEX_SPECIES, index="index v0003")
    message = str(info.value)
    assert "2 species of the list are not in index v0003" in message
    assert "line 1: 'Turdus migratorious' (nearest: Turdus migratorius" in message
    assert "line 3: 'Zosterops japonicus' (nothing close)" in message
    assert "--skip-unknown-species" in message
    assert isinstance(info.value, ConfigError)


def test_unknown_names_can_be_skipped_but_not_all_of_them(caplog):
    entries = parse_species_list("Zosterops japonicus\nJunco hyemalis\n")
    assert resolve_species_list(entries, INDEX_SPECIES, allow_unknown=True) == ["Junco hyemalis"]
    assert "Zosterops japonicus" in caplog.text
    with pytest.raises(UnknownSpeciesError, match="no species of the list"):
        resolve_species_list(parse_species_list("Zosterops japonicus\n"), INDEX_SPECIES, allow_unknown=True)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"# only a comment\n\n", "names no species"),
        (b"\xff\xfe\x00T\x00u", "not UTF-8"),
        (b"Turdus\x00merula\n", "binary"),
        (b"_American Robin\n", "line 1"),
    ],
)
def test_bad_files_are_refused_with_the_reason(tmp_path, content, message):
    path = tmp_path / "list.txt"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        read_species_list(path)


def test_a_missing_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match="cannot read species list .*nope.txt"):
        read_species_list(tmp_path / "nope.txt")
