"""Species names in BioCLIP's formats, and template sets."""

import pytest

from birdsearch.errors import ConfigError
from birdsearch.model.names import NAME_FORMATS, OPENAI_TEMPLATES, Taxon, templates_for

ROBIN = Taxon("Turdus migratorius", "American Robin", order="Passeriformes", family="Turdidae")


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("sci", "Turdus migratorius"),
        ("com", "American Robin"),
        ("sci_com", "Turdus migratorius with common name American Robin"),
        ("taxon", "Animalia Chordata Aves Passeriformes Turdidae Turdus migratorius"),
        (
            "taxon_com",
            "Animalia Chordata Aves Passeriformes Turdidae Turdus migratorius with common name American Robin",
        ),
    ],
)
def test_bioclip_name_formats(fmt, expected):
    assert ROBIN.name(fmt) == expected


def test_formats_without_a_common_name_fall_back():
    taxon = Taxon("Turdus migratorius", order="Passeriformes")
    assert taxon.name("com") == "Turdus migratorius"
    assert taxon.name("taxon_com") == "Animalia Chordata Aves Passeriformes Turdus migratorius"
    assert set(NAME_FORMATS) == {"sci", "com", "sci_com", "taxon", "taxon_com"}


def test_bad_names_and_formats_are_refused():
    with pytest.raises(ConfigError, match="binomial"):
        Taxon("Turdus")
    with pytest.raises(ConfigError, match="unknown name format"):
        ROBIN.name("latin")


def test_template_sets():
    assert len(OPENAI_TEMPLATES) == 80 and all(t.count("{}") == 1 for t in OPENAI_TEMPLATES)
    assert templates_for("openai") == OPENAI_TEMPLATES
    assert templates_for(["a photo of {}."]) == ("a photo of {}.",)
    with pytest.raises(ConfigError):
        templates_for(["no placeholder"])
    with pytest.raises(ConfigError):
        templates_for("imagenet-1000")
