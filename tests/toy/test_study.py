"""The toy-world study end to end on the tiny world (``--smoke``): species split, selection, cells, report."""

from __future__ import annotations

import csv
import json

import pytest

from birdsearch.model.names import Taxon
from birdsearch.toy import study


def test_parse_args_full_and_smoke():
    full = study.parse_args([])
    assert full.preset == "default" and full.coverages == (0.5,) and len(full.seeds) >= 5
    assert full.unseen_genera == 6 and full.candidate_epochs() == list(range(5, 61, 5))
    assert full.offsets[0] == study.CLOSED
    smoke = study.parse_args(["--smoke", "--out", "x"])
    assert smoke.preset == "tiny" and smoke.seeds == (0, 1) and smoke.out == "x"
    with pytest.raises(Exception, match="caption coverages"):
        study.StudyConfig(coverages=(0.0,)).validate()
    with pytest.raises(Exception, match="unknown students"):
        study.StudyConfig(students=("perfect",)).validate()
    with pytest.raises(Exception, match="at least one seed"):
        study.StudyConfig(seeds=()).validate()


def test_species_without_audio_come_one_per_genus_named_and_not_named_in_turn():
    taxa = [Taxon(f"Genus{g} species{s}", common=f"{g}{s}") for g in range(8) for s in range(2)]
    named = {t.scientific for t in taxa if t.scientific.endswith("0")}  # one named species per genus
    split = study.split_species(taxa, named, genera=3)
    assert len(split.unseen) == len(split.held_out) == 3
    genera = [name.split()[0] for name in split.unseen + split.held_out]
    assert len(set(genera)) == 6  # one species per genus, never two of one genus
    assert sum(n in named for n in split.unseen) == 2  # named, not named, named
    assert split == study.split_species(taxa, named, genera=3)  # the same every time
    assert study.split_species(taxa, named, genera=10).unseen.__len__() == 4  # at most half the genera each


def test_a_paired_difference_speaks_only_when_its_interval_excludes_zero():
    assert study.verdict([0.05, 0.01, 0.09]) == "higher"
    assert study.verdict([-0.05, -0.09, -0.01]) == "lower"
    assert study.verdict([0.05, -0.01, 0.09]) == "not separated"


@pytest.mark.slow  # the study script end to end (~55 s of CPU on a 2-core EPYC): a research run
def test_smoke_study_writes_tables_paired_differences_and_plot(toy_cache, tmp_path):
    out, work = tmp_path / "docs", tmp_path / "work"
    assert study.main(["--smoke", "--work", str(work), "--out", str(out)]) == 0
    data = json.loads((out / "study.json").read_text())
    unseen = data["species"]["without audio"]
    assert len(unseen) == 1 and data["species"]["held out for the hybrids"] != unseen
    assert set(data["results"]) == {f"{s}, coverage 0.5" for s in study.STUDENTS}
    for summary in data["results"].values():
        assert summary["queries"]["without audio"] > 0 and summary["queries"]["with audio"] > 0
        for name in ("linear-head", "linear-cascade-hard", "linear-cascade-soft", "distilled",
                     "distilled+snap", "hybrid", "cascade-soft"):  # fmt: skip
            for group in ("all", "with audio", "without audio"):
                for metric in study.METRICS:
                    mean, low, high = summary["methods"][name][group][metric]
                    assert low - 1e-9 <= mean <= high + 1e-9, (name, group, metric)
        pairs = {(c["method"], c["opponent"]) for c in summary["comparisons"]}
        assert ("hybrid", "linear-cascade-soft") in pairs and ("distilled", "cascade-soft") in pairs
        assert (
            len(summary["soundscape cmAP"]["methods"]["distilled"]) == 1
        )  # 1 recording: a mean, no interval
    # what the labelled audio is: no recording of the species without audio, in training or validation
    manifests = next((work / "splits").glob("*/manifests"))
    with (manifests / "labelled.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert (
        rows
        and not any(r["species"] in unseen for r in rows)
        and {r["split"] for r in rows} == {"train", "val"}
    )
    selection = data["selection"]
    assert selection["setting"]["epochs"] in (1, 2) and selection["setting"]["schedule_epochs"] == 2
    assert len(selection["grid"]) == 2 * 2  # two learning rates × two epoch counts
    for answers in data["answers"].values():
        assert answers["chosen"]["hybrid"]["offset"] in ("-inf", "0")
    text = (out / "study.md").read_text()
    assert "## Budgets: chosen on validation only" in text and "### Paired differences" in text
    assert "![paired differences in mAP](study.png)" in text
    assert (out / "study.png").stat().st_size > 1000
    # the own-captions student's audio tower learned from captions alone: it exists and says so
    students = list(study_world_models().glob("student-own-captions-*/toy_captions.json"))
    assert students and json.loads(students[0].read_text())["variant"] == "own-captions"
    # both realistic students are told the same captions: they differ only in what learns from them
    from birdsearch.toy.student_model import OWN_CAPTIONS, prepared_captions
    from birdsearch.toy.world import open_world

    world = open_world("tiny")
    species = world.species * 3
    own, realistic = (
        prepared_captions(world, OWN_CAPTIONS, species),
        prepared_captions(world, "realistic", species),
    )
    assert own[0] == realistic[0] and own[2] == realistic[2] and (own[1] == realistic[1]).all()
    assert len(own[2]) < len(world.species)  # coverage 0.5: some species are never named


def study_world_models():
    from birdsearch.toy.world import open_world

    return open_world("tiny").root / "models"
