"""The toy-world study end to end on the tiny world (``--smoke``): students, selection, cells, report."""

from __future__ import annotations

import json

import pytest

from birdsearch.toy import study


def test_parse_args_full_and_smoke():
    full = study.parse_args([])
    assert full.coverages == (0.25, 0.5, 0.75, 1.0) and full.seeds == (0, 1, 2) and full.preset == "small"
    assert full.selection_coverage == 0.5
    smoke = study.parse_args(["--smoke", "--out", "x"])
    assert smoke.preset == "tiny" and smoke.seeds == (0,) and smoke.out == "x"
    with pytest.raises(Exception, match="caption coverages"):
        study.StudyConfig(coverages=(0.0,)).validate()
    with pytest.raises(Exception, match="unknown students"):
        study.StudyConfig(students=("perfect",)).validate()


def test_compare_speaks_only_of_intervals():
    assert study.compare([0.8, 0.7, 0.9], [0.5, 0.4, 0.6]) == "higher (intervals do not overlap)"
    assert study.compare([0.5, 0.4, 0.6], [0.8, 0.7, 0.9]) == "lower (intervals do not overlap)"
    assert study.compare([0.6, 0.5, 0.7], [0.65, 0.55, 0.8]) == "intervals overlap"


def test_smoke_study_writes_table_json_and_plot(toy_cache, tmp_path):
    out = tmp_path / "docs"
    assert study.main(["--smoke", "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    data = json.loads((out / "study.json").read_text())
    assert set(data["results"]) == set(study.STUDENTS)
    for by_coverage in data["results"].values():
        methods = by_coverage["0.5"]
        for name in ("linear-head", "linear-cascade-hard", "linear-cascade-soft", "distilled",
                     "distilled+snap", "ablation", "cascade-soft"):  # fmt: skip
            for metric in study.METRICS:
                mean, low, high = methods[name][metric]
                assert low - 1e-9 <= mean <= high + 1e-9, (name, metric)
    assert data["selection"]["snap"] in ("distilled", "distilled+snap-hard", "distilled+snap-soft")
    assert data["selection"]["setting"] == {"objective": "class", "epochs": 1, "temperature": 0.07}
    verdicts = {c["verdict"] for c in data["comparisons"]}
    assert verdicts <= {
        "higher (intervals do not overlap)",
        "lower (intervals do not overlap)",
        "intervals overlap",
    }
    text = (out / "study.md").read_text()
    assert "## Selection on validation only" in text and "![mAP against caption coverage](study.png)" in text
    assert (out / "study.png").stat().st_size > 1000
    # the own-captions student's audio tower learned from captions alone: it exists and says so
    students = list((study_world_models(toy_cache)).glob("student-own-captions-*/toy_captions.json"))
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


def study_world_models(cache):
    from birdsearch.toy.world import open_world

    return open_world("tiny").root / "models"
