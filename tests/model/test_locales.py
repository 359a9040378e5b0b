"""--locale: common names in the user's language from the IOC multilingual list, English where it has none."""

from pathlib import Path

import pytest

from birdsearch.errors import ConfigError
from birdsearch.indexer.store import SpeciesRecord
from birdsearch.model.locales import read_local_names, translates

MULTILINGUAL = Path(__file__).parents[1] / "data" / "world_lists" / "ioc_multilingual_v14.1.csv"
# As an eBird-built index spells them; the ostrich under an older genus, to be found by its English name.
SPECIES = [
    SpeciesRecord("Anas platyrhynchos", "Mallard"),
    SpeciesRecord("Turdus migratorius", "American Robin"),
    SpeciesRecord("Struthio molybdophanes", "Somali Ostrich"),
    SpeciesRecord("Struthiosaurus camelus", "Common Ostrich"),
    SpeciesRecord("Xenoglaux loweryi", "Long-whiskered Owlet"),
]


def names(locale):
    local = read_local_names(MULTILINGUAL, locale)
    return [local.name(s.scientific, s.common) for s in SPECIES], local


def test_birdnet_locale_codes_give_the_lists_names_and_english_where_it_has_none():
    german, local = names("de")
    assert german == ["Stockente", "Wanderdrossel", "Somalistrauß", "Strauß", "Long-whiskered Owlet"]
    assert local.missing(SPECIES) == ["Xenoglaux loweryi"]  # not in the list: keeps its English name
    swedish, local = names("sv")
    assert swedish[:3] == ["Gräsand", "Vandringstrast", "Somali Ostrich"]  # no Swedish name in the excerpt
    assert local.missing(SPECIES) == ["Struthio molybdophanes", "Xenoglaux loweryi"]


def test_locale_spellings_and_column_names_are_one_locale():
    assert names("pt-BR")[1].language == names("PT_br")[1].language == "Portuguese (Lusophone)"
    assert names("German")[0] == names("DE")[0]
    assert names("en_uk")[0][0] == "Mallard"  # the list's English column
    assert not translates("en") and not translates("en_US") and translates("en_uk")


def test_an_unknown_locale_or_a_list_in_another_layout_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match=r"locale 'xx'.*\bde\b.*\bsv\b"):
        read_local_names(MULTILINGUAL, "xx")
    with pytest.raises(ConfigError, match="names species in English only"):
        read_local_names(MULTILINGUAL.parent / "ebird_taxonomy_v2024.csv", "de")
    with pytest.raises(ConfigError, match="no such file"):
        read_local_names(MULTILINGUAL.parent / "missing.csv", "de")
