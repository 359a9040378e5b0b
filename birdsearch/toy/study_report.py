"""The toy-world study's report: the design, both budgets, the tables, the paired differences, a plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The tables' columns: (group, metric).
TABLE_COLUMNS = (
    ("all", "mAP"), ("with audio", "mAP"), ("without audio", "mAP"), ("without audio, named", "mAP"),
    ("without audio, not named", "mAP"), ("all", "genus mAP"), ("without audio", "genus mAP"), ("all", "nDCG@10"),
)  # fmt: skip
DIFFERENCE_COLUMNS = (
    ("all", "mAP"), ("with audio", "mAP"), ("without audio", "mAP"), ("without audio, named", "mAP"),
    ("without audio, not named", "mAP"), ("without audio", "genus mAP"),
)  # fmt: skip
PLOTTED_GROUPS = ("all", "with audio", "without audio")
STUDENT_TITLES = {
    "realistic": "student realistic on its text side only (its audio tower learned every species' label)",
    "own-captions": "student realistic on both sides (its audio tower learned only from its captions)",
}
METHODS = {
    "random": "unit vectors independent of the audio: chance",
    "cascade-hard": "zero-shot: the student names the species (top-1), the teacher's text of it queries",
    "cascade-soft": "zero-shot: the student's posterior weights the teacher's species text",
    "map-ridge": "the student's audio through a ridge map between the text spaces, fitted on names",
    "map-procrustes": "the same with an orthogonal (Procrustes) map",
    "map-mlp": "the same with a small MLP",
    "linear-head": "control: a linear head from the frozen student audio into the teacher's text space, "
    "trained with distillation's objective on the labelled clips",
    "linear-cascade-hard": "control: a linear species classifier on the frozen student audio for the species "
    "with labelled clips, the student's zero-shot caption score for the others (offset chosen on "
    "validation); the top species' teacher text queries",
    "linear-cascade-soft": "the same, the posterior weighting the teacher's species text",
    "distilled": "the paper's method: the student's audio tower distilled into the teacher's text space",
    "distilled+snap": "the distilled encoder as a classifier over the teacher's species text (variant "
    "chosen on validation)",
    "hybrid": "the linear classifier for the species with labelled clips, the distilled encoder against "
    "the teacher's text for the others (offset, hard or soft chosen on validation)",
    "ablation": "the audio tower distilled into the student's own text space (no visual grounding), then "
    "a Procrustes map",
}


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def cell(values: list[float] | None) -> str:
    """[mean, low, high] as 'mean [low, high]' in %."""
    if not values or any(v is None for v in values):
        return "–"
    mean, low, high = values
    return f"{pct(mean)} [{pct(low)}, {pct(high)}]"


def signed(values: list[float]) -> str:
    """A paired difference [mean, low, high] in points, bold where the interval excludes 0."""
    if any(v is None for v in values):
        return "–"
    mean, low, high = (100 * v for v in values)
    text = f"{mean:+.1f} [{low:+.1f}, {high:+.1f}]"
    return f"**{text}**" if low > 0 or high < 0 else text


def design_lines(data: dict[str, Any]) -> list[str]:
    species, cfg = data["species"], data["config"]
    named = set(species["named"])

    def listed(names: list[str]) -> str:
        return ", ".join(f"*{n}*{' (named)' if n in named else ''}" for n in names)

    return [
        f"Toy world `{cfg['preset']}`: {data['world']['species']} species in {data['world']['genera']} genera. "
        f"**{len(species['without audio'])} species have no labelled audio** (one from each of as many genera; "
        "no training or validation recording of theirs is used, they stay in the gallery and among the test "
        f'queries): {listed(species["without audio"])}. "Named": the students\' captions give its name '
        f"(caption coverage {', '.join(f'{c:g}' for c in cfg['coverages'])}).",
        "",
        f"Training seeds {', '.join(map(str, cfg['seeds']))} per cell; distillation objective `{cfg['objective']}`, "
        f"batch {cfg['batch_size']}, initial temperature {cfg['temperature']:g}. Every figure is the mean over "
        f"seeds in %, with a 95 % bootstrap interval ({cfg['resamples']} resamples of the seeds and of the "
        "queries within their species). Each comparison is a **paired** interval of the difference: both "
        "methods are scored on the same resampled seeds and queries.",
    ]


def budget_lines(data: dict[str, Any]) -> list[str]:
    budgets, selection = data["budgets"], data["selection"]
    dist, ctrl = budgets["distillation"], budgets["controls"]

    def grid(b: dict[str, Any]) -> str:
        epochs = b["epochs"]
        return (f"learning rates {', '.join(f'{lr:g}' for lr in b['lrs'])} × epochs {epochs[0]} to {epochs[-1]} "
                f"every {epochs[1] - epochs[0] if len(epochs) > 1 else epochs[0]} ({len(b['lrs']) * len(epochs)} candidates)")  # fmt: skip

    chosen = selection["setting"]
    best_by_lr = {}
    for g in selection["grid"]:
        if g["lr"] not in best_by_lr or g["val_cmAP"] > best_by_lr[g["lr"]]["val_cmAP"]:
            best_by_lr[g["lr"]] = g
    lines = [
        f"- **Distillation**: {grid(dist)}, each learning rate one run on a schedule of {dist['epochs'][-1]} "
        f"epochs, validated after every epoch; chosen once, on the {selection['val_clips']} validation clips "
        f"of the species with labelled audio ({selection['on']}), by class-wise mAP against their text: "
        f"**lr {chosen['lr']:g}, {chosen['epochs']} epochs** (val cmAP {pct(selection['val_cmAP'])}); every "
        f"run trains that many epochs of the same schedule. Best per learning rate: "
        + "; ".join(f"{lr:g}: {g['epochs']} epochs, {pct(g['val_cmAP'])}" for lr, g in best_by_lr.items())
        + ".",
        f"- **Controls** (`linear-head`, the classifier of `linear-cascade-*`): {grid(ctrl)}, chosen in every "
        "run on the same validation clips by the same criterion. What each run chose is in study.json "
        "(`controls` under each cell's evaluation).",
    ]
    return lines


def answer_lines(data: dict[str, Any]) -> list[str]:
    held = data["species"]["held out for the hybrids"]
    lines = [
        f"How the hybrids answer for a species without labelled audio cannot be chosen on that species. "
        f"It is chosen on a second split of the labelled species: {len(held)} more "
        f"({', '.join(f'*{n}*' for n in held)}) are left out of training, distillation (seed 0) and the "
        "controls train on the rest, and the validation clips of every labelled species query the gallery "
        "(audio-to-image mAP). Chosen there, per student:",
        "",
        "| student | `distilled+snap` | `linear-cascade-hard` | `linear-cascade-soft` | `hybrid` | validation queries |",
        "|---|---|---|---|---|---|",
    ]
    for label, answers in data["answers"].items():
        names = ("distilled+snap", "linear-cascade-hard", "linear-cascade-soft", "hybrid")
        texts = [answer_text(answers["chosen"][n]) for n in names]
        lines.append(f"| {label} | " + " | ".join(texts) + f" | {answers['queries']} |")
    lines += [
        "",
        "Offset `-inf`: the closed-set classifier, which never answers a species without labelled audio.",
    ]
    return lines


def answer_text(choice: dict[str, Any]) -> str:
    """A choice made on validation: the variant, its offset and its validation mAP."""
    what = choice["method"].replace("distilled+", "")
    offset = "" if choice["offset"] is None else f", offset {choice['offset']}"
    return f"{what}{offset} ({pct(choice['val_mAP'])})"


def result_table(summary: dict[str, Any]) -> list[str]:
    queries = summary["queries"]
    sound = summary["soundscape cmAP"]
    head = [f"{metric}, {group} ({queries[group]} q.)" for group, metric in TABLE_COLUMNS]
    with_interval = sound["recordings"] >= 10
    head.append("soundscape cmAP" + ("" if with_interval else " (mean only)"))
    lines = ["| method | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for method, groups in summary["methods"].items():
        cells = [cell(groups.get(group, {}).get(metric)) for group, metric in TABLE_COLUMNS]
        s = sound["methods"].get(method)
        cells.append(cell(s) if with_interval else pct(s[0] if s else None))
        lines.append(f"| `{method}` | " + " | ".join(cells) + " |")
    return lines


def difference_table(summary: dict[str, Any]) -> list[str]:
    by_pair: dict[tuple[str, str], dict[str, Any]] = {}
    for c in summary["comparisons"]:
        by_pair.setdefault((c["method"], c["opponent"]), {})[c["group"]] = c["difference"]
    head = [f"Δ {metric}, {group}" for group, metric in DIFFERENCE_COLUMNS]
    lines = ["| comparison | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for (a, b), groups in by_pair.items():
        cells = [signed(groups[g][m]) if g in groups else "–" for g, m in DIFFERENCE_COLUMNS]
        lines.append(f"| `{a}` − `{b}` | " + " | ".join(cells) + " |")
    return lines


def provenance(data: dict[str, Any]) -> str:
    if data["config"].get("finished_only"):
        return ("Assembled by `python -m birdsearch.toy.study --finished-only` from the runs that "
                "`python -m birdsearch.toy.study` had finished.")  # fmt: skip
    return f"Generated by `python -m birdsearch.toy.study` in {data['minutes']} minutes."


def partial_note(data: dict[str, Any]) -> list[str]:
    cells = data.get("cells", {})
    if cells.get("done") == cells.get("total"):
        return []
    return [f"**Partial**: {cells['done']} of {cells['total']} student × coverage cells had finished when "
            "this was written; rerun the same command to continue (finished runs are reused).", ""]  # fmt: skip


def markdown(data: dict[str, Any], plot_name: str) -> str:
    lines = ["# The toy-world study", "", provenance(data), "", *partial_note(data), *design_lines(data), "",
             f"![paired differences in mAP]({plot_name})", "", "## Methods", ""]  # fmt: skip
    lines += [f"- `{name}`: {text}" for name, text in METHODS.items()]
    lines += ["", "## Budgets: chosen on validation only", "", *budget_lines(data), "", *answer_lines(data)]
    for label, summary in data["results"].items():
        kind = label.split(",")[0]
        lines += ["", f"## {label}: {STUDENT_TITLES.get(kind, kind)}", "", "### Every method", "",
                  *result_table(summary), "", "### Paired differences (points; bold: the interval excludes 0)",
                  "", *difference_table(summary)]  # fmt: skip
    lines += ["", "## Configuration", "", "```json", json.dumps(data["config"], indent=1), "```", ""]
    return "\n".join(lines)


def plot(data: dict[str, Any], path: Path) -> Path:
    """Paired differences in mAP with their intervals: one panel per student, one row per comparison."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(data["results"])
    fig, axes = plt.subplots(
        1, max(1, len(labels)), figsize=(7 * max(1, len(labels)), 6), sharey=True, squeeze=False
    )
    colours = {"all": "black", "with audio": "tab:blue", "without audio": "tab:red"}
    for ax, label in zip(axes[0], labels, strict=False):
        rows = []
        for c in data["results"][label]["comparisons"]:
            if (c["method"], c["opponent"]) not in rows:
                rows.append((c["method"], c["opponent"]))
        for c in data["results"][label]["comparisons"]:
            if c["group"] not in PLOTTED_GROUPS:
                continue
            y = rows.index((c["method"], c["opponent"])) + 0.25 * (PLOTTED_GROUPS.index(c["group"]) - 1)
            mean, low, high = (100 * v for v in c["difference"]["mAP"])
            ax.errorbar(mean, y, xerr=[[mean - low], [high - mean]], fmt="o", color=colours[c["group"]],
                        markersize=4, capsize=2, label=c["group"])  # fmt: skip
        ax.axvline(0, color="grey", linewidth=0.8)
        ax.set_yticks(range(len(rows)), [f"{a} − {b}" for a, b in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("difference in audio-to-image mAP, points (paired 95 % interval)")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3, axis="x")
        handles, names = ax.get_legend_handles_labels()
        unique = dict(zip(names, handles, strict=True))
        ax.legend(
            unique.values(), [f"species {n}" if n != "all" else "all species" for n in unique], fontsize=7
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
