"""End to end on the toy world: distil with the CLI (``--manifest toy:PRESET``), then evaluate every method.

The tiny preset (4 species, data built in seconds, models only smoke-trained) runs by default and
checks the wiring; the small preset (8 species, models that learn) is slow and checks that
distillation learns something the held-out queries can see.
"""

import json
import sys
from pathlib import Path

import pytest

from birdsearch.cli import main
from birdsearch.model.evaluate.run import DEFAULT_METHODS

sys.path.insert(0, str(Path(__file__).parent))
import conftest_distill as helpers  # noqa: E402


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory):
    """The toy world and text caches of this module, away from the user's and other tests'."""
    with helpers.cache_root_at(tmp_path_factory.mktemp("toy-cache")) as path:
        yield path


def distill_and_evaluate(preset: str, tmp_path: Path, capsys, epochs: int, batch: int) -> tuple[dict, dict]:
    run = tmp_path / "run"
    args = ["distill", "--manifest", f"toy:{preset}", "--out", str(run), "--epochs", str(epochs), "--batch-size",
            str(batch), "--lr", "1e-3", "--device", "cpu", "--workers", "1", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == summary["total_steps"] > 0
    card = json.loads((run / "encoder" / "card.json").read_text())
    assert card["base_student"] == f"toy:{preset}" and card["teacher"]["id"] == f"toy:{preset}"
    assert len(card["metrics"]["val_history"]) == epochs
    args = ["evaluate", "--dataset", f"toy:{preset}", "--encoder", f"distilled={run / 'encoder'}",
            "--out", str(tmp_path / "report"), "--device", "cpu", "--json", "--no-plots"]  # fmt: skip
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    methods = result["queries"]["methods"]
    assert list(methods) == [*DEFAULT_METHODS, "distilled", "distilled+snap-hard", "distilled+snap-soft",
                             "distilled+classifier", "distilled+hybrid"]  # fmt: skip
    assert "MISMATCH" not in methods["distilled"]["description"]
    assert (
        result["queries"]["gallery"]["images_of_evaluated_species"] == result["queries"]["gallery"]["images"]
    )
    assert list(result["soundscapes"]["methods"]) == list(methods)
    assert (tmp_path / "report" / "report.md").is_file()
    return card, result


def test_distill_then_evaluate_on_the_tiny_toy_world(private_cache, tmp_path, capsys):
    _, result = distill_and_evaluate("tiny", tmp_path, capsys, epochs=2, batch=4)
    for entry in result["queries"]["methods"].values():
        assert 0.0 <= entry["retrieval"]["mAP"] <= 1.0


@pytest.mark.slow
def test_distill_then_evaluate_on_the_small_toy_world(private_cache, tmp_path, capsys):
    _, result = distill_and_evaluate("small", tmp_path, capsys, epochs=8, batch=16)
    methods = result["queries"]["methods"]
    chance = 1 / len(result["queries"]["species"])
    # The world is learnable: distillation must beat chance at classifying the held-out queries,
    # and land the queries nearer their species' photos than random vectors do.
    assert methods["distilled"]["classification"]["top1"] > chance
    assert methods["distilled"]["retrieval"]["mAP"] > methods["random"]["retrieval"]["mAP"]
