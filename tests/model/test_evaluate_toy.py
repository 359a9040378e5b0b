"""End to end on the toy world's small preset: distil with the CLI, then evaluate every method.

Slow: the toy world is built on first use (minutes on 2 cores; cached after that) and distillation
trains the toy student's audio tower for real.
"""

import json

import pytest

from birdsearch.cli import main
from birdsearch.model.evaluate.run import DEFAULT_METHODS


@pytest.mark.slow
def test_distill_then_evaluate_on_the_small_toy_world(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["distill", "--manifest", "toy:small", "--out", str(run), "--epochs", "4", "--batch-size", "16",
            "--lr", "1e-3", "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == summary["total_steps"] > 0
    card = json.loads((run / "encoder" / "card.json").read_text())
    assert card["base_student"] == "toy:small" and card["teacher"]["id"] == "toy:small"
    assert len(card["metrics"]["val_history"]) == 4

    report = tmp_path / "report"
    args = ["evaluate", "--dataset", "toy:small", "--encoder", f"distilled={run / 'encoder'}", "--out", str(report),
            "--device", "cpu", "--json", "--no-plots"]  # fmt: skip
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    methods = result["queries"]["methods"]
    assert list(methods) == [*DEFAULT_METHODS, "distilled"]
    assert "MISMATCH" not in methods["distilled"]["description"]
    assert (
        result["queries"]["gallery"]["images_of_evaluated_species"] == result["queries"]["gallery"]["images"]
    )
    assert list(result["soundscapes"]["methods"]) == list(methods)
    # The world is learnable: distillation must beat chance at classifying the held-out queries.
    chance = 1 / len(result["queries"]["species"])
    assert methods["distilled"]["classification"]["top1"] > chance
    assert (report / "report.md").is_file()
