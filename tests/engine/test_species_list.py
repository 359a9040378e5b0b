"""Species lists: both spellings, comments, folders, resolution against an index's species, nearest names."""

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


def test_unknown_names_are_skipped_with_one_warning_that_lists_the_nearest_names(caplog):
    # BirdNET-Analyzer's default: a regional list names many species a gallery lacks
    entries = parse_species_list(
        "Turdus migratorious\nPasser domesticus\nZosterops japonicus_Warbling White-eye\n"
    )
    with caplog.at_level("WARNING"):
        assert resolve_species_list(entries, INDEX_SPECIES, index="index v0003") == ["Passer domesticus"]
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "2 of 3 species are not in index v0003 and are skipped" in warning
    assert "line 1: 'Turdus migratorious' (nearest: Turdus migratorius" in warning  # a typo shows
    assert "line 3: 'Zosterops japonicus' (nothing close)" in warning


def test_strict_refuses_a_list_with_unknown_names_and_says_what_to_do():
    entries = parse_species_list("Turdus migratorious\nPasser domesticus\n")
    with pytest.raises(UnknownSpeciesError) as info:
        resolve_species_list(
            entries, INDEX_SPECIES, strict=True, index="index v0003", hint="leave out --strict"
        )
    message = str(info.value)
    assert "1 of 2 species of the list are not in index v0003" in message
    assert "line 1: 'Turdus migratorious' (nearest: Turdus migratorius" in message
    assert message.endswith("leave out --strict")
    assert isinstance(info.value, ConfigError)


def test_a_list_that_leaves_no_species_is_refused_even_when_skipping():
    # an empty filter would let every species through: the opposite of what a list asks for
    with pytest.raises(UnknownSpeciesError, match="no species of the list.*holds 4 species.*Zosterops"):
        resolve_species_list(parse_species_list("Zosterops japonicus\n"), INDEX_SPECIES)


def test_a_folder_stands_for_its_species_list_txt_as_in_birdnet(tmp_path):
    (tmp_path / "site07").mkdir()
    (tmp_path / "site07" / "species_list.txt").write_text("Junco hyemalis_Dark-eyed Junco\n")
    assert [e.scientific for e in read_species_list(tmp_path / "site07")] == ["Junco hyemalis"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty holds no species_list.txt"):
        read_species_list(tmp_path / "empty")


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
