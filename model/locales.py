"""Common names in the user's language, from the IOC World Bird List's multilingual version.

The IOC list (``Multiling IOC 14.1_b.xlsx`` and later, its ``List`` sheet saved as CSV; read by
``birdsearch.model.world_lists``) names each species in English and some 40 other languages. A
locale is BirdNET-Analyzer's code for one of them (``de``, ``en_uk``, ``pt_BR``, ``zh``, ...; the
codes of its translated label files) or the language as the list spells it (``German``).

A species gets its name in that language when the list has one, found by scientific name, else by
its English common name (taxonomies move species between genera; common names move less).
Otherwise, and for every species under ``en`` (BirdNET's default: no translation), it keeps the
common name it already has.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from birdsearch.errors import ConfigError
from birdsearch.model.names import normalise_name
from birdsearch.model.world_lists import WorldList, read_world_list

log = logging.getLogger(__name__)

ENGLISH = "English"
UNTRANSLATED = frozenset({"en", "en_us"})  # the species' own common names: nothing to look up
# BirdNET-Analyzer 2.4's label languages (labels/V2.4/*_Labels_<code>.txt), plus the IOC list's other
# languages under their ISO 639-1 codes, to the list's column names.
LOCALES: dict[str, str] = {
    "af": "Afrikaans", "ar": "Arabic", "be": "Belarusian", "bg": "Bulgarian", "ca": "Catalan",
    "cs": "Czech", "da": "Danish", "de": "German", "el": "Greek", "en_uk": ENGLISH, "en_gb": ENGLISH,
    "es": "Spanish", "et": "Estonian", "fa": "Persian", "fi": "Finnish", "fr": "French", "he": "Hebrew",
    "hr": "Croatian", "hu": "Hungarian", "id": "Indonesian", "in": "Indonesian", "is": "Icelandic",
    "it": "Italian", "ja": "Japanese", "ko": "Korean", "lt": "Lithuanian", "lv": "Latvian",
    "mk": "Macedonian", "ml": "Malayalam", "nl": "Dutch", "no": "Norwegian", "pl": "Polish",
    "pt_br": "Portuguese (Lusophone)", "pt_pt": "Portuguese (Portuguese)", "ro": "Romanian",
    "ru": "Russian", "se": "Northern Sami", "sk": "Slovak", "sl": "Slovenian", "sr": "Serbian",
    "sv": "Swedish", "th": "Thai", "tr": "Turkish", "uk": "Ukrainian", "zh": "Chinese",
    "zh_cn": "Chinese", "zh_tw": "Chinese (Traditional)",
}  # fmt: skip


def locale_key(locale: str) -> str:
    """'pt-BR', 'pt_BR' and 'PT_br' are one locale."""
    return locale.strip().replace("-", "_").casefold()


def translates(locale: str) -> bool:
    """False for the locales that keep the species' own (English) common names."""
    return locale_key(locale) not in UNTRANSLATED


def language_of(locale: str, languages: Iterable[str]) -> str:
    """The list's column for ``locale`` (a code or a column name); ConfigError naming the choices."""
    available = {normalise_name(language): language for language in languages}
    wanted = LOCALES.get(locale_key(locale), locale)
    if normalise_name(wanted) in available:
        return available[normalise_name(wanted)]
    codes = sorted(code for code, language in LOCALES.items() if normalise_name(language) in available)
    raise ConfigError(
        f"locale {locale!r} is not a language of the IOC multilingual list given; use one of "
        f"{', '.join(['en', *codes])} (or a column name such as {next(iter(available.values()), 'German')!r})"
    )


@dataclass(frozen=True)
class LocalNames:
    """Common names in one language, looked up by scientific name, then by English name."""

    language: str  # the list's column, "German"
    by_scientific: dict[str, str]  # normalise_name(scientific) -> name
    by_english: dict[str, str]  # normalise_name(English name) -> name

    def find(self, scientific: str, common: str = "") -> str:
        """The species' name in this language, or '' where the list has none."""
        return (
            self.by_scientific.get(normalise_name(scientific))
            or (self.by_english.get(normalise_name(common)) if common else "")
            or ""
        )

    def name(self, scientific: str, common: str = "") -> str:
        """The species' name in this language; its own common name (else its scientific name) without one."""
        return self.find(scientific, common) or common or scientific

    def missing(self, species: Sequence[Any]) -> list[str]:
        """Scientific names of the species (records with ``scientific`` and ``common``) this language lacks."""
        return [s.scientific for s in species if not self.find(s.scientific, s.common)]


def local_names(world: WorldList, locale: str) -> LocalNames:
    """The names of ``world`` (an IOC multilingual list) in ``locale``'s language."""
    if world.layout != "ioc_multilingual":
        raise ConfigError(
            f"a {world.layout} checklist names species in English only; --locale needs the IOC World Bird "
            "List's multilingual version (Multiling IOC <version>.xlsx, its List sheet saved as CSV)"
        )
    language = language_of(locale, [ENGLISH, *world.languages])
    names = [t.common for t in world.taxa] if language == ENGLISH else world.languages[language]
    by_scientific, by_english = {}, {}
    for taxon, name in zip(world.taxa, names, strict=True):
        if name:
            by_scientific.setdefault(normalise_name(taxon.scientific), name)
            if taxon.common:
                by_english.setdefault(normalise_name(taxon.common), name)
    return LocalNames(language, by_scientific, by_english)


def read_local_names(path: str | Path, locale: str) -> LocalNames:
    """Read an IOC multilingual list (CSV) and take ``locale``'s names from it."""
    if not Path(path).is_file():
        raise ConfigError(f"cannot read the IOC multilingual list {path}: no such file")
    world = read_world_list(path)
    if world is None:
        raise ConfigError(
            f"{path} is not the IOC World Bird List's multilingual version saved as CSV (a header with "
            "Order, Family, IOC_<version>, English and the languages)"
        )
    names = local_names(world, locale)
    log.info("%s: %d species named in %s", path, len(names.by_scientific), names.language)
    return names
