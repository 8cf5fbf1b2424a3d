"""Writing evaluation results a person wants to read: a Markdown table, JSON, confusion-matrix plots."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mtlora import atomic
from mtlora.data.splits import SPLITS
from mtlora.evaluation.evaluate import VARIANTS, TaskReport
from mtlora.evaluation.routing import RoutingReport, saves_read
from mtlora.registry import share_of
from mtlora.tasks import get_task_kind
from mtlora.tasks.base import shown_input

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TASKS = "tasks"  # the reports' subfolder of per-task files


def write_reports(reports: Sequence[TaskReport], folder: Path,
                  adapters: Mapping[str, str | None] | None = None) -> list[Path]:
    """Write `tasks/<split>/<task>.json`, `tasks/<split>/<task>_confusion.png` (labelled tasks) and
    `summary.md` / `summary.json`.

    A report replaces the previous one of its task and split; the summary lists every report there is, of
    the tasks in `adapters` when given (the registry's, each with its `Manifest.version`: a removed adapter's
    files stay, out of the summary), but for those of an adapter trained again since it was scored, which
    summary.md names instead: their scores are another model's.
    Task files have a folder of their own: beside summary.* and routing.*, a task named `summary` or
    `routing` would overwrite them, or be overwritten; and one per split, since a task name may hold a dot.
    """
    _move_earlier_reports(folder)
    written = []
    for report in reports:
        path = folder / f"{_stem(report)}.json"
        atomic.write_json(path, report.to_dict())
        written.append(path)
        if report.confusion is not None and report.labels is not None:
            accuracy = report.metrics["lora"].get("accuracy", 0.0)
            title = f"{report.task}: LoRA adapter, {report.examples} {report.split} inputs (accuracy {accuracy:.3f})"
            path = folder / f"{_stem(report)}_confusion.png"
            written.append(plot_confusion(report.labels, report.confusion, title, path))
    everything = sorted((TaskReport(**_load(path)) for path in (folder / TASKS).glob("*/*.json")),
                        key=lambda r: (r.task, SPLITS.index(r.split) if r.split in SPLITS else len(SPLITS)))
    everything = [r for r in everything if adapters is None or r.task in adapters]
    retrained = [r for r in everything if adapters is not None and _retrained_since(r, adapters[r.task])]
    current = [r for r in everything if r not in retrained]
    atomic.write_json(folder / "summary.json", [r.to_dict() for r in current])
    atomic.write_text(folder / "summary.md", markdown_summary(current, retrained))
    return [*written, folder / "summary.md", folder / "summary.json"]


def _retrained_since(report: TaskReport, version: str | None) -> bool:
    """Whether `version`, the registry's adapter now, is another save than the one `report` scored (a report
    of an earlier mtlora, which does not say, and an adapter unreadable now count as current)."""
    return None not in (report.adapter_version, version) and version != report.adapter_version


def _stem(report: TaskReport) -> str:
    """Where a report's files go in the reports folder, less their endings."""
    return f"{TASKS}/{report.split}/{report.task}"


def _move_earlier_reports(folder: Path) -> None:
    """Move task reports that earlier versions wrote (`<task>[.<split>].json` in the folder, or in `tasks/`)
    to their place, so that the summary keeps them; one that a newer report of its task and split has
    replaced is removed."""
    for path in [*folder.glob("*.json"), *(folder / TASKS).glob("*.json")]:
        try:
            report = TaskReport(**_load(path))
        except (ValueError, TypeError):  # summary.json, routing.json, or not a report at all
            continue
        moves = {path: folder / f"{_stem(report)}.json",
                 path.with_name(f"{path.stem}_confusion.png"): folder / f"{_stem(report)}_confusion.png"}
        replaced = moves[path].exists()
        for old, new in moves.items():
            if old.exists() and replaced:
                old.unlink()
            elif old.exists():
                new.parent.mkdir(parents=True, exist_ok=True)
                old.replace(new)


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def markdown_summary(reports: Sequence[TaskReport], retrained: Sequence[TaskReport] = ()) -> str:
    """The summary of `reports`; `retrained`: reports left out since their adapter was trained again."""
    lines = [
        "# Evaluation",
        "",
        "Each task's main metric for the base without adapter (encoder kinds: an untrained head; seq2seq kinds: "
        "the same prompt, no adapter), the head-only baseline "
        "(backbone frozen, head trained on the same rows at `training.baseline_lr`; seq2seq kinds have no head of "
        "their own, hence –) "
        "and the LoRA adapter; the best of the three in bold. "
        "Metrics marked (0-100) are percentages, the others run from 0 to 1 (Pearson from -1).",
        "",
        "| task | kind | split | n | metric | base | head-only | LoRA | LoRA gain over head-only "
        "| LoRA trainable params | % of full fine-tuning | LoRA params saved |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in reports:
        values = main_metric_values(r)
        lora, head_only = values["lora"], values["head_only"]
        gain = (lora - head_only) if lora is not None and head_only is not None else None
        best = max((v for v in values.values() if v is not None), default=None)  # every main metric: higher is better
        scale = get_task_kind(r.kind).metric_scale(r.primary_metric)
        shown = {v: f"**{cell}**" if value is not None and value == best else cell
                 for v, value in values.items() for cell in [_fmt(value, scale=scale)]}
        params = r.parameters["lora"]
        lines.append(
            f"| {r.task} | {r.kind} | {r.split} | {r.examples} | {main_metric_name(r)} | {shown['base']} "
            f"| {shown['head_only']} | {shown['lora']} | {_fmt(gain, signed=True, scale=scale)} "
            f"| {params['trainable']:,} | {share_of(params['trainable'], params['total'])} "
            f"| {params.get('stored', params['trainable']):,} |"
        )
    if retrained:
        left_out = ", ".join(f"{r.task} ({r.split})" for r in retrained)
        lines += ["", f"Left out: {left_out}, scored before the adapter was trained again; "
                  "`mtlora evaluate PROJECT.yaml --task NAME` scores the one the registry holds now."]
    lines += ["", "## All metrics", ""]
    for r in reports:
        names = sorted({m for metrics in r.metrics.values() for m in metrics})
        lines += [f"### {r.task} ({r.split}, {r.examples} examples)", ""]
        # An older report of the train split still counts its every input as seen: nothing to tell.
        if r.seen_in_training and r.split != "train":
            lines += [f"**{r.seen_in_training} of these {r.examples} inputs are also training inputs**: the scores "
                      "tell what the adapter remembers as much as what it learned.", ""]
        for variant, notes in r.caveats.items():
            lines += [f"**{VARIANTS[variant]}**: {'; '.join(notes)}.", ""]
        labels = [sample_cell(get_task_kind(r.kind).metric_label(n)) for n in names]
        lines += ["| variant | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(names)]
        scales = [get_task_kind(r.kind).metric_scale(n) for n in names]
        for variant, metrics in r.metrics.items():
            cells = (_fmt(metrics.get(n), scale=scale) for n, scale in zip(names, scales, strict=True))
            lines.append(f"| {VARIANTS[variant]} | " + " | ".join(cells) + " |")
        if r.confusion is not None:
            lines += ["", f"Confusion matrix (rows: gold, columns: predicted): `{_stem(r)}_confusion.png`"]
        lines += ["", *_samples_table(r), ""]
    return "\n".join(lines)


def main_metric_name(report: TaskReport) -> str:
    """The main metric's name, marked where it runs to 100."""
    return get_task_kind(report.kind).metric_label(report.primary_metric)


def main_metric_values(report: TaskReport) -> dict[str, float | None]:
    """Each variant's score on the task's main metric; None for a variant not evaluated."""
    return {v: report.metrics.get(v, {}).get(report.primary_metric) for v in VARIANTS}


def sample_rows(report: TaskReport) -> tuple[list[str], list[list[object]]]:
    """The header and rows of the samples table: each input, what it expected, what each variant answered."""
    variants = [v for v in VARIANTS if report.samples and v in report.samples[0]]
    header = ["input", "expected", *(VARIANTS[v] for v in variants)]
    return header, [[shown_input(s), s["expected"], *(s[v] for v in variants)] for s in report.samples]


def _samples_table(report: TaskReport) -> list[str]:
    """The first few inputs with what each variant answered: the change in behaviour, to read."""
    if not report.samples:
        return []
    header, rows = sample_rows(report)
    lines = ["Sample outputs:", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(sample_cell(value) for value in row) + " |" for row in rows]
    return lines


def sample_cell(value: object, width: int = 120) -> str:
    """One line of at most `width` characters, safe inside a Markdown table."""
    text = " ".join(str(value).split()).replace("|", "\\|")
    return text if len(text) <= width else text[:width - 1] + "…"


def _fmt(value: float | None, signed: bool = False, scale: float = 1.0) -> str:
    """A metric as a table shows it: three decimals on a 0-1 scale; one on a 0-100 one, where 1.000 of an
    exact match (1%) would read as the whole."""
    if value is None:
        return "–"
    decimals = 1 if scale == 100 else 3
    return f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"


def plot_confusion(labels: Sequence[str], counts: Sequence[Sequence[int]], title: str, path: Path,
                   columns: Sequence[str] | None = None) -> Path:
    """A gold x predicted count matrix as a PNG (`columns` when predictions have extra classes)."""
    figure = confusion_figure(labels, counts, title, columns)
    import matplotlib.pyplot as plt

    atomic.write_bytes_via(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    plt.close(figure)
    return path


def confusion_figure(labels: Sequence[str], counts: Sequence[Sequence[int]], title: str,
                     columns: Sequence[str] | None = None) -> Figure:
    """The figure `plot_confusion` saves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    columns = list(columns or labels)
    matrix = np.asarray(counts)
    size = max(4.0, 0.6 * len(columns) + 2)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    image = axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("gold")
    # Centred over the matrix, a title of nine characters an inch of figure stays inside the image; a longer
    # line ran off it, cut in the saved PNG.
    axes.set_title(textwrap.fill(title, width=int(9 * size)))
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, col), value in np.ndenumerate(matrix):
        axes.text(col, row, str(value), ha="center", va="center", color="white" if value > threshold else "black")
    figure.colorbar(image, ax=axes, fraction=0.046, label="inputs")
    figure.tight_layout()
    return figure


# A routing report's row, as summary tables show it (Markdown, the CLI, the demo); per-task columns follow.
ROUTING_COLUMNS = ("router", "reads", "inputs", "accuracy", "unroutable", "by shape", "encoder pass", "ms / input")


def routing_cells(report: RoutingReport) -> list[str]:
    return [report.router, report.features or "", str(report.examples), f"{report.accuracy:.3f}",
            f"{report.unroutable:.3f}", f"{report.shape_share:.3f}", report.encoder_pass_cell(),
            f"{report.ms_per_input:.2f}"]


def _mix_name(split: str) -> str:
    """Training inputs are not held out: the adapters and the learned router were fit on them."""
    return "A mix" if split == "train" else "A held-out mix"


def write_routing_reports(reports: Sequence[RoutingReport], folder: Path, gone: Collection[str] = ()) -> list[Path]:
    """`routing.json`, `routing.md` and one `routing_<router>_confusion.png` per router.

    The routers of an earlier run on the same mix (split, tasks and inputs) and adapters (the same saves)
    that this run did not evaluate again stay in the table, as task reports stay in the summary, but for
    those `gone` (a learned router since removed); the plots of routers the table no longer holds go."""
    reports = [r for r in _with_earlier_routers(reports, folder / "routing.json") if r.router not in gone]
    written = [folder / "routing.json", folder / "routing.md"]
    atomic.write_json(written[0], [r.to_dict() for r in reports])
    tasks = list(reports[0].per_task) if reports else []  # the mix's tasks: the confusion's rows
    split = reports[0].split if reports else ""
    lines = ["# Routing", "", f"{_mix_name(split)} of every task's inputs ({split}), "
             "pairs and QA given as plain text pairs; each router picks the task. A multitask task has no inputs "
             "of its own in the mix: a router sends its parts' inputs to the parts.", "",
             "| " + " | ".join([*ROUTING_COLUMNS, *tasks]) + " |",
             "|---|---|" + "---:|" * (len(ROUTING_COLUMNS) - 2 + len(tasks))]
    best = max((r.accuracy for r in reports), default=None)  # bold, as in summary.md: the best of the column
    accuracy = ROUTING_COLUMNS.index("accuracy")
    for r in reports:
        cells = routing_cells(r)
        if r.accuracy == best:
            cells[accuracy] = f"**{cells[accuracy]}**"
        lines.append("| " + " | ".join([*cells, *(f"{r.per_task[t]:.3f}" for t in tasks)]) + " |")
        path = folder / f"routing_{r.router}_confusion.png"
        title = f"router '{r.router}', {r.examples} {r.split} inputs (accuracy {r.accuracy:.3f})"
        written.append(plot_confusion(tasks, r.confusion, title, path, columns=r.labels))
    lines += [line for r in reports if r.note for line in ("", f"**{r.router}**: {r.note}.")]
    lines += ["", "By shape: the share of inputs routed by their shape before the router ran (a pair or a "
              "question with its context that only one task takes); accuracy and the per-task columns include "
              "them, alike for every router. Encoder pass: the share of inputs whose route read the encoder (a "
              "pass of its own); with `router.features: cascade`, those the token embeddings left unsure. Columns "
              "after the first eight are the accuracy on each task's inputs; confusion matrices: "
              "`routing_<router>_confusion.png`. ms / input leaves out the router's one-time setup: it routes the "
              "whole mix once, untimed, first.", ""]
    atomic.write_text(written[1], "\n".join(lines))
    for plot in folder.glob("routing_*_confusion.png"):
        if plot not in written:
            plot.unlink()
    return written


def _with_earlier_routers(reports: Sequence[RoutingReport], path: Path) -> list[RoutingReport]:
    """`reports` with the rows of `path` (an earlier routing.json) for other routers on the same mix: earlier
    routers in their places, a router evaluated again in its old place, new ones last."""
    if not reports or not path.is_file():
        return list(reports)
    mix, saves = (reports[0].split, reports[0].labels, reports[0].examples), reports[0].adapters
    try:
        earlier = [RoutingReport(**row) for row in _load(path)]
    except (ValueError, TypeError):  # not a routing report of this version: replaced, as before
        return list(reports)
    fresh = {r.router: r for r in reports}
    kept = [fresh.pop(r.router, r) for r in earlier  # in their places
            if (r.split, r.labels, r.examples) == mix
            and saves_read(r.router, r.adapters) == saves_read(r.router, saves)]
    return [*kept, *fresh.values()]
