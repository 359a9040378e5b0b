"""``birdsearch evaluate`` end to end on tiny models: every method side by side, report files, CLI, index."""

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from birdsearch.cli import main
from birdsearch.errors import ConfigError
from birdsearch.model import registry
from birdsearch.model.distill.manifest import Clip
from birdsearch.model.distill.trainer import DistillConfig, distill
from birdsearch.model.evaluate import datasets
from birdsearch.model.evaluate.run import (
    DEFAULT_METHODS,
    EvaluateConfig,
    cosines,
    evaluate,
    parse_encoders,
    pool_windows,
)
from birdsearch.model.registry import DataBundle

sys.path.insert(0, str(Path(__file__).parent))
import conftest_distill as helpers  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_world")
    with helpers.cache_root_at(root / "cache"):
        yield make_setup(root)


def make_setup(root: Path) -> dict:
    paths = helpers.write_tone_world(root, clips_per_species=6, seconds=3.0)
    paths["gallery"] = helpers.write_gallery(root, per_species=3)
    paths["soundscapes"] = helpers.write_soundscapes(root / "soundscapes")
    paths["ssw60"] = helpers.write_ssw60(root / "ssw60")
    paths["teacher"] = f"local-dir:{helpers.save_tiny_teacher(root / 'teacher')}"
    paths["student"] = f"local-dir:{helpers.save_tiny_student(root / 'student')}"
    common = dict(manifest=str(paths["manifest"]), taxa=str(paths["taxa"]), teacher=paths["teacher"],
                  student=paths["student"], epochs=1, batch_size=8, workers=0, device="cpu", progress=False)  # fmt: skip
    distill(DistillConfig(out=str(root / "distilled"), **common))
    distill(DistillConfig(out=str(root / "ablation"), target="student-text", **common))
    paths["encoders"] = [
        f"distilled={root / 'distilled' / 'encoder'}",
        f"ablation={root / 'ablation' / 'encoder'}",
    ]
    return paths


def config(setup, **overrides) -> EvaluateConfig:
    base = dict(
        dataset=f"manifest:{setup['manifest']}",
        taxa=str(setup["taxa"]),
        gallery=str(setup["gallery"]),
        encoders=setup["encoders"],
        teacher=setup["teacher"],
        student=setup["student"],
        device="cpu",
    )
    return EvaluateConfig(**{**base, **overrides})


def test_every_method_side_by_side_with_report_files(setup, tmp_path):
    out = tmp_path / "report"
    result = evaluate(config(setup, soundscapes=str(setup["soundscapes"]), out=str(out)))
    methods = result["queries"]["methods"]
    assert list(methods) == [
        *DEFAULT_METHODS,
        "distilled",
        "distilled+snap-hard",
        "distilled+snap-soft",
        "distilled+classifier",  # the encoder's species classifier, a mode the service serves
        "distilled+hybrid",
        "ablation",  # its target is the student's text: no classifier is fitted beside it
    ]
    for name, entry in methods.items():
        for key in ("mAP", "R@1", "R@5", "R@10", "nDCG@10", "vote_top1"):
            assert 0.0 <= entry["retrieval"][key] <= 1.0, (name, key)
        assert 0.0 <= entry["classification"]["top1"] <= 1.0
        assert len(entry["per_species"]["retrieval_AP"]) == 4
    assert "Procrustes" in methods["ablation"]["description"]
    assert result["queries"]["queries"] == 4 and result["queries"]["gallery"]["images"] == 12
    sound = result["soundscapes"]["methods"]
    assert list(sound) == list(methods)
    assert all(0.0 <= e["soundscape"]["AUROC"] <= 1.0 for e in sound.values())
    for name in ("report.md", "report.json", "per_species.png", "pr.png", "soundscape_per_species.png"):
        assert (out / name).stat().st_size > 0, name
    markdown = (out / "report.md").read_text()
    assert "| `cascade-soft` |" in markdown and "| `distilled` |" in markdown and '"gallery":' in markdown
    saved = json.loads((out / "report.json").read_text())
    assert saved["config"]["teacher"] == setup["teacher"]  # the full configuration is recorded
    assert saved["models"]["encoders"]["distilled"]["card"]["training"]["objective"] == "batch"


def test_a_perfect_gallery_embedding_scores_perfectly(setup, monkeypatch):
    """Sanity of the wiring: if a method returned each species' own image centroid, retrieval is perfect."""
    from birdsearch.model.evaluate import run

    captured = {}
    original = run.embed_clips

    def oracle(clips, methods, front_end, chunk=32):
        out = original(clips, methods, front_end, chunk)
        gallery = captured["gallery"]
        labels = gallery.labels(helpers.TAXA)
        centroids = np.stack([gallery.vectors[labels == s].mean(0) for s in range(4)])
        out["random"] = torch.tensor(centroids[[c.species for c in clips]])
        return out

    from birdsearch.model.evaluate import gallery as gallery_module

    real = gallery_module.from_manifest
    monkeypatch.setattr(
        gallery_module, "from_manifest", lambda *a, **k: captured.setdefault("gallery", real(*a, **k))
    )
    monkeypatch.setattr(run, "embed_clips", oracle)
    result = evaluate(config(setup, methods=("random",), encoders=[]))
    assert result["queries"]["methods"]["random"]["retrieval"]["R@1"] == 1.0


def test_cli_prints_the_table_and_json(setup, tmp_path, capsys):
    args = ["evaluate", "--dataset", f"manifest:{setup['manifest']}", "--taxa", str(setup["taxa"]),
            "--gallery", str(setup["gallery"]), "--teacher", setup["teacher"], "--student", setup["student"],
            "--device", "cpu", "--methods", "random,cascade-soft", "--encoder", setup["encoders"][0]]  # fmt: skip
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "| `random` |" in table and "| `distilled` |" in table and "mAP" in table
    assert main([*args, "--json", "--no-plots"]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert set(parsed["queries"]["methods"]) == {
        "random",
        "cascade-soft",
        "distilled",
        "distilled+snap-hard",
        "distilled+snap-soft",
        "distilled+classifier",
        "distilled+hybrid",
    }
    assert main([*args, "--json", "--no-plots", "--no-snap"]) == 0
    assert set(json.loads(capsys.readouterr().out)["queries"]["methods"]) == {
        "random",
        "cascade-soft",
        "distilled",
        "distilled+classifier",  # not a snap: the encoder's own classifier
        "distilled+hybrid",
    }


def test_ssw60_against_an_index_equals_the_same_gallery_embedded_here(setup, tmp_path):
    """Export SSW60's manifests, index the test photos with 'birdsearch index', evaluate against it."""
    exported = tmp_path / "manifests"
    assert main(["evaluate", "--dataset", f"ssw60:{setup['ssw60']}", "--export-ssw60", str(exported)]) == 0
    index = tmp_path / "index"
    assert main(["index", "--gallery", str(exported / "gallery_test.csv"), "--out", str(index),
                 "--teacher", setup["teacher"], "--device", "cpu", "--no-progress"]) == 0  # fmt: skip
    common = dict(dataset=f"ssw60:{setup['ssw60']}", gallery=None, methods=("cascade-soft", "map-ridge"))
    via_index = evaluate(config(setup, index=str(index), **common))
    direct = evaluate(config(setup, **{**common, "gallery": str(exported / "gallery_test.csv")}))
    assert via_index["queries"]["gallery"]["source"] == "index"
    for name in ("cascade-soft", "map-ridge", "distilled"):
        a, b = (
            via_index["queries"]["methods"][name]["retrieval"],
            direct["queries"]["methods"][name]["retrieval"],
        )
        assert a["mAP"] == pytest.approx(b["mAP"], abs=1e-3), name


def test_errors_name_the_fix(setup):
    with pytest.raises(ConfigError, match="needs a gallery"):
        evaluate(config(setup, dataset=f"ssw60:{setup['ssw60']}", gallery=None))
    with pytest.raises(ConfigError, match="unknown data set"):
        evaluate(config(setup, dataset="imagenet"))
    with pytest.raises(ConfigError, match="two encoders named"):
        parse_encoders(["a/encoder", "x/a/encoder"])


def test_an_encoder_distilled_against_other_teacher_weights_is_flagged(setup, tmp_path):
    other = f"local-dir:{helpers.save_tiny_teacher(tmp_path / 'other_teacher', seed=1)}"
    result = evaluate(config(setup, teacher=other, methods=("random",), encoders=setup["encoders"][:1]))
    assert "MISMATCH" in result["queries"]["methods"]["distilled"]["description"]
    assert (
        "MISMATCH"
        not in evaluate(config(setup, methods=(), encoders=setup["encoders"][:1]))["queries"]["methods"][
            "distilled"
        ]["description"]
    )


# ---- which recordings are queries: the split, the refusal, the sample --------------------------


def write_rows(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def manifest_rows(setup) -> list[dict]:
    with Path(setup["manifest"]).open() as f:
        return list(csv.DictReader(f))


def test_a_manifest_without_test_rows_is_refused_never_read_whole(setup):
    rows = [r for r in manifest_rows(setup) if r["split"] != "test"]
    train_only = write_rows(Path(setup["manifest"]).with_name("no_test.csv"), rows)
    with pytest.raises(ConfigError, match=r"no 'test' rows.*train 16, val 4.*'split' column set to 'test'"):
        evaluate(config(setup, dataset=f"manifest:{train_only}"))
    no_split = write_rows(
        train_only.with_name("no_split.csv"), [{"path": r["path"], "species": r["species"]} for r in rows]
    )
    with pytest.raises(ConfigError, match=r"no 'test' rows.*rows without a split count as train"):
        datasets.load_query_manifest(no_split, setup["taxa"])
    assert main(["evaluate", "--dataset", f"manifest:{no_split}", "--taxa", str(setup["taxa"]), "--gallery",
                 str(setup["gallery"]), "--teacher", setup["teacher"], "--student", setup["student"]]) == 2  # fmt: skip


def test_the_split_chooses_the_queries(setup, monkeypatch):
    from birdsearch.model.evaluate import run

    for split, per_species in (("test", 1), ("val", 1), ("train", 4)):
        queries = datasets.load_query_manifest(setup["manifest"], setup["taxa"], split=split)
        assert {c.split for c in queries.clips} == {split} and len(queries.clips) == 4 * per_species
    seen = capture_queries(monkeypatch, run)
    result = evaluate(config(setup, split="val", methods=("random",), encoders=[]))
    assert {c.split for c in seen} == {"val"} and result["queries"]["queries"] == 4
    assert result["config"]["split"] == "val" and result["queries"]["facts"]["split"] == "val"


def capture_queries(monkeypatch, run) -> list:
    """Record the query clips ``evaluate`` embeds (the soundscape segments are not passed through)."""
    seen: list = []
    original = run.embed_clips

    def recording(clips, methods, front_end, chunk=32):
        seen.extend(c for c in clips if c.species >= 0)
        return original(clips, methods, front_end, chunk)

    monkeypatch.setattr(run, "embed_clips", recording)
    return seen


def clips_per_species(counts: list[int]) -> list[Clip]:
    return [Clip(Path(f"s{s}_{i}.wav"), s) for s, n in enumerate(counts) for i in range(n)]


def test_max_queries_samples_evenly_across_species():
    clips = clips_per_species([10, 1, 3, 7, 2])  # 23 clips, five species, very uneven
    for limit in (5, 6, 9):
        chosen = datasets.sample_queries(clips, limit, seed=0)
        counts = np.bincount([c.species for c in chosen], minlength=5)
        assert len(chosen) == limit and counts.min() >= 1, (limit, counts)  # every species is there
        # Species take turns: a count differs from the largest by more than one only when it ran out.
        assert all(c >= counts.max() - 1 or c == n for c, n in zip(counts, [10, 1, 3, 7, 2], strict=True))
        assert chosen == sorted(chosen, key=clips.index)  # original order kept
    assert datasets.sample_queries(clips, 9, seed=0) == datasets.sample_queries(clips, 9, seed=0)
    assert datasets.sample_queries(clips, 9, seed=0) != datasets.sample_queries(clips, 9, seed=1)
    assert datasets.sample_queries(clips, None) == clips and datasets.sample_queries(clips, 50) == clips
    with pytest.raises(ConfigError, match="--max-queries 0"):
        datasets.sample_queries(clips, 0)


def test_max_queries_in_an_evaluation_covers_every_species(setup, monkeypatch):
    from birdsearch.model.evaluate import run

    seen = capture_queries(monkeypatch, run)
    # 16 training clips, four per species, in species order: the first four would be one species.
    result = evaluate(config(setup, split="train", max_queries=4, methods=("random",), encoders=[]))
    assert result["queries"]["queries"] == 4 and sorted(c.species for c in seen) == [0, 1, 2, 3]


# ---- data sets registered from above (the toy world's is one) ----------------------------------


def test_a_registered_data_set_brings_queries_gallery_and_models(setup, tmp_path):
    rows = manifest_rows(setup)
    folder = Path(setup["manifest"]).parent
    held_out = write_rows(folder / "held_out.csv", [{"path": r["path"], "species": r["species"]} for r in rows
                                                    if r["split"] == "test"])  # fmt: skip
    bundle = DataBundle(name="tones", taxa=Path(setup["taxa"]), train_manifest=Path(setup["manifest"]),
                        query_manifest=held_out, gallery_manifest=Path(setup["gallery"]),
                        models={"teacher": setup["teacher"], "student": setup["student"]}, facts={"world": "tones"})  # fmt: skip
    asked = []
    registry.register_data_set("tones", lambda variant, progress=True: asked.append(variant) or bundle)
    try:
        result = evaluate(EvaluateConfig(dataset="tones:v2", methods=("random",), device="cpu", plots=False))
        assert asked == ["v2"] and result["queries"]["queries"] == 4 and result["queries"]["name"] == "tones"
        assert (
            result["config"]["teacher"] == setup["teacher"] and result["queries"]["gallery"]["images"] == 12
        )
        val = evaluate(EvaluateConfig(dataset="tones", split="val", methods=("random",), device="cpu"))
        assert val["queries"]["name"] == "tones-val" and val["queries"]["queries"] == 4
        assert val["queries"]["facts"] == {"world": "tones", "split": "val"}
        with pytest.raises(ConfigError, match="unknown data set 'imagenet'.*known data sets are tones, toy"):
            evaluate(config(setup, dataset="imagenet"))
    finally:
        registry.DATA_SETS.unregister("tones")


def test_clips_of_the_same_windows_score_the_same_bits_whatever_their_length():
    """A hard cascade sends every window to one species' text: its clips must tie exactly, so that the
    tie-aware metrics see a tie on every CPU (float32 sums of 3 or 5 copies came out unequal)."""
    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(1, 128), dim=-1)
    targets = torch.nn.functional.normalize(torch.randn(24, 128), dim=-1).numpy()
    lengths = torch.tensor([1, 2, 3, 5, 7])
    owner = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    pooled = pool_windows(text.repeat(int(lengths.sum()), 1), owner, len(lengths))
    assert pooled.dtype == torch.float32 and (pooled == pooled[0]).all()
    scores = cosines(pooled.numpy(), targets)
    assert (scores == scores[0]).all()
    np.testing.assert_allclose(scores[0], targets @ text[0].numpy(), atol=1e-6)
