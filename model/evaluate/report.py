"""The evaluation report: a Markdown table, the JSON behind it, and plots (matplotlib, Agg backend).

``<out>/report.md``         every method side by side, per data set, with the configuration
``<out>/report.json``       all numbers, per-species values, PR curves, the full configuration
``<out>/per_species.png``   retrieval AP per species and method (classification AP without a gallery)
``<out>/pr.png``            mean interpolated precision-recall of each method
``<out>/soundscape_per_species.png``  soundscape AP per species and method
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

RETRIEVAL_COLUMNS = ("mAP", "genus mAP", "R@1", "R@5", "R@10", "nDCG@10", "vote_top1")
SOUNDSCAPE_COLUMNS = ("cmAP", "AUROC", "top1")


def pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.1f}"


def interval(bounds: Any) -> str:
    """A (low, high) bootstrap interval in %, or a dash."""
    if not bounds or any(b is None or (isinstance(b, float) and math.isnan(b)) for b in bounds):
        return "–"
    return f"[{pct(bounds[0])}, {pct(bounds[1])}]"


def query_table(section: dict[str, Any]) -> list[str]:
    has_gallery = section.get("gallery") is not None
    head = ["method", *(RETRIEVAL_COLUMNS if has_gallery else ()), "cls top-1", "cls cmAP"]
    head += ["mAP 95 % interval"] if has_gallery else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, entry in section["methods"].items():
        cells = [f"`{name}`"]
        if has_gallery:
            cells += [pct(entry["retrieval"].get(c)) for c in RETRIEVAL_COLUMNS]
        cells += [pct(entry["classification"]["top1"]), pct(entry["classification"]["cmAP"])]
        if has_gallery:
            cells.append(interval(entry.get("interval_95", {}).get("mAP")))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def soundscape_table(section: dict[str, Any]) -> list[str]:
    head = ["method", *SOUNDSCAPE_COLUMNS, "cmAP 95 % interval"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, entry in section["methods"].items():
        lines.append(
            "| "
            + " | ".join(
                [
                    f"`{name}`",
                    *(pct(entry["soundscape"][c]) for c in SOUNDSCAPE_COLUMNS),
                    interval(entry["soundscape"].get("cmAP_interval_95")),
                ]
            )  # fmt: skip
            + " |"
        )
    return lines


def markdown(result: dict[str, Any], configuration: bool = True) -> str:
    """The report as Markdown; ``configuration`` appends the full configuration as JSON."""
    cfg = result["config"]
    lines = ["# birdsearch evaluation", ""]
    lines.append(f"Teacher `{cfg['teacher']}`, student `{cfg['student']}`; teacher species text: "
                 f"`{cfg['name_format']}` × `{cfg['templates']}` templates. All figures in %.")  # fmt: skip
    if "queries" in result:
        q = result["queries"]
        g = q.get("gallery")
        lines += ["", f"## Audio to image: {q['name']}", ""]
        where = f"{g['images']} photos, {g['images_of_evaluated_species']} of them of the {len(q['species'])} evaluated species (from {g['source']} {g.get('path', '')})" if g else "no gallery"  # fmt: skip
        lines.append(f"{q['queries']} query recordings, {where}. Any photo of the query's species is relevant "
                     "(genus mAP: any photo of its genus); "
                     "R@K: a relevant photo in the top K; vote top-1: the species most of the top "
                     f"{cfg['vote_k']} photos show; cls: classification against the teacher's species text.")  # fmt: skip
        lines += [""] + query_table(q)
    if "soundscapes" in result:
        s = result["soundscapes"]
        lines += ["", f"## Soundscapes: {s['name']}", ""]
        lines.append(f"{s['segments']} segments of {s['facts'].get('segment_s', 5)} s, each labelled with every "
                     "species calling in it; classified against the teacher's species text (multi-label).")  # fmt: skip
        lines += [""] + soundscape_table(s)
    section = result.get("queries") or result["soundscapes"]
    lines += ["", "## Methods", ""]
    lines += [f"- `{name}`: {entry['description']}" for name, entry in section["methods"].items()]
    if configuration:
        lines += ["", "## Configuration", "", "```json", json.dumps(cfg, indent=2, default=str), "```", ""]
    return "\n".join(lines)


def clean(value: Any) -> Any:
    """JSON-safe: NaN becomes null, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write(result: dict[str, Any], out: Path, plots: bool = True) -> dict[str, Path]:
    """Write the report files; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "json": out / "report.json"}
    paths["markdown"].write_text(markdown(result))
    paths["json"].write_text(json.dumps(clean(result), indent=1, default=str))
    if plots:
        paths.update(write_plots(result, out))
    return paths


def colour(i: int) -> tuple:
    """Twenty distinguishable colours (matplotlib's default cycle repeats after ten methods)."""
    import matplotlib.pyplot as plt

    return plt.get_cmap("tab20")(i % 20)


def bar_plot(section: dict[str, Any], key: str, title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = list(section["methods"])
    names = [c or s for s, c in zip(section["species"], section["common_names"], strict=True)]
    values = np.array(
        [[np.nan if v is None else v for v in section["methods"][m]["per_species"][key]] for m in methods]
    )
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(names) * max(1, len(methods)) ** 0.5), 5))
    x = np.arange(len(names))
    for i, method in enumerate(methods):
        ax.bar(x + i * width - 0.4 + width / 2, values[i], width, label=method, color=colour(i))
    ax.set_xticks(x, names, rotation=75, ha="right", fontsize=7)
    ax.set_ylabel("AP")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pr_plot(section: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for i, (name, entry) in enumerate(section["methods"].items()):
        curve = entry.get("pr_curve")
        if curve:
            ax.plot(
                curve["recall"],
                curve["precision"],
                label=name,
                color=colour(i),
                linestyle=("-", "--")[i // 10 % 2],
            )
    ax.set_xlabel("recall")
    ax.set_ylabel("interpolated precision (mean over queries)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Audio to image, {section['name']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(result: dict[str, Any], out: Path) -> dict[str, Path]:
    paths = {}
    if "queries" in result:
        q = result["queries"]
        key = "retrieval_AP" if q.get("gallery") else "classification_AP"
        paths["per_species"] = bar_plot(
            q, key, f"{key.replace('_', ' ')} per species, {q['name']}", out / "per_species.png"
        )
        if q.get("gallery"):
            paths["pr"] = pr_plot(q, out / "pr.png")
    if "soundscapes" in result:
        s = result["soundscapes"]
        paths["soundscape_per_species"] = bar_plot(
            s, "soundscape_AP", f"soundscape AP per species, {s['name']}", out / "soundscape_per_species.png"
        )
    return paths
