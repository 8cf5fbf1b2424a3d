"""Writing evaluation results a person wants to read: a Markdown table, JSON, confusion-matrix plots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from mtlora import atomic
from mtlora.evaluation.evaluate import VARIANTS, TaskReport


def write_reports(reports: Sequence[TaskReport], folder: Path) -> list[Path]:
    """Write `<task>.json`, `<task>_confusion.png` (labelled tasks) and `summary.md` / `summary.json`.

    A report for a task replaces that task's previous one; the summary lists every task with a report.
    """
    written = []
    for report in reports:
        path = folder / f"{report.task}.json"
        atomic.write_json(path, report.to_dict())
        written.append(path)
        if report.confusion is not None and report.labels is not None:
            written.append(plot_confusion(report, folder / f"{report.task}_confusion.png"))
    everything = [TaskReport(**_load(p)) for p in sorted(folder.glob("*.json")) if p.name != "summary.json"]
    atomic.write_json(folder / "summary.json", [r.to_dict() for r in everything])
    atomic.write_text(folder / "summary.md", markdown_summary(everything))
    return [*written, folder / "summary.md", folder / "summary.json"]


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def markdown_summary(reports: Sequence[TaskReport]) -> str:
    lines = [
        "# Evaluation",
        "",
        "Each task's main metric for the untrained base (random head), the head-only baseline "
        "(backbone frozen, head trained the same way) and the LoRA adapter.",
        "",
        "| task | kind | split | n | metric | base | head-only | LoRA | LoRA gain over head-only "
        "| LoRA trainable params | % of full fine-tuning |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in reports:
        metric = r.primary_metric
        values = {v: r.metrics.get(v, {}).get(metric) for v in VARIANTS}
        gain = (values["lora"] - values["head_only"]) if None not in (values["lora"], values["head_only"]) else None
        params = r.parameters["lora"]
        lines.append(
            f"| {r.task} | {r.kind} | {r.split} | {r.examples} | {metric} | {_fmt(values['base'])} "
            f"| {_fmt(values['head_only'])} | **{_fmt(values['lora'])}** | {_fmt(gain, signed=True)} "
            f"| {params['trainable']:,} | {100 * params['trainable'] / params['total']:.2f}% |"
        )
    lines += ["", "## All metrics", ""]
    for r in reports:
        names = sorted({m for metrics in r.metrics.values() for m in metrics})
        lines += [f"### {r.task} ({r.split}, {r.examples} examples)", "",
                  "| variant | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for variant, metrics in r.metrics.items():
            lines.append(f"| {VARIANTS[variant]} | " + " | ".join(_fmt(metrics.get(n)) for n in names) + " |")
        if r.confusion is not None:
            lines += ["", f"Confusion matrix (rows: gold, columns: predicted): `{r.task}_confusion.png`"]
        lines.append("")
    return "\n".join(lines)


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def plot_confusion(report: TaskReport, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    assert report.confusion is not None and report.labels is not None
    counts = np.asarray(report.confusion)
    size = max(4.0, 0.6 * len(report.labels) + 2)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    image = axes.imshow(counts, cmap="Blues")
    axes.set_xticks(range(len(report.labels)), report.labels, rotation=45, ha="right")
    axes.set_yticks(range(len(report.labels)), report.labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("gold")
    accuracy = report.metrics["lora"].get("accuracy", 0.0)
    axes.set_title(f"{report.task}: LoRA adapter, {report.split} (accuracy {accuracy:.3f})")
    threshold = counts.max() / 2 if counts.size else 0
    for (row, col), value in np.ndenumerate(counts):
        axes.text(col, row, str(value), ha="center", va="center",
                  color="white" if value > threshold else "black")
    figure.colorbar(image, ax=axes, fraction=0.046)
    figure.tight_layout()
    atomic.write_bytes_via(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    plt.close(figure)
    return path
