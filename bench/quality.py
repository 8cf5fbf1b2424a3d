"""Quality on real data: every task of examples/glue/local.yaml (plus QQP few-shot) trained three ways
on the embedded backbone with the same data and budget -- LoRA adapter, head-only baseline, full
fine-tuning -- and scored on held-out data, with routing accuracy over a mix of all tasks.

    python bench/quality.py --quick     # 2,000 training rows per task, two epochs: about 30 min on 2 cores
    python bench/quality.py             # the configs as written: the full run
    python bench/quality.py --tasks stsb    # rerun some tasks, keeping the other rows of the last run
    python bench/quality.py --routing-only  # retrain the router and rescore routing only

Writes bench/results/quality[_quick].json, score and training-curve plots beside it, and
BENCHMARKS[_quick].md. Each method trains in a fresh process (`bench/isolated.py`), so none inherits
another's warm-up, and its peak memory is that process's resident high-water mark (allocated GPU memory
on CUDA): the model, optimizer, activations, the task's data and the libraries.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import mtlora
from mtlora import atomic
from mtlora.backbone import default_device, load_tokenizer, use_bf16
from mtlora.config import ProjectConfig, TaskConfig, load_config
from mtlora.data import load_task_data
from mtlora.engine import predict_examples
from mtlora.evaluation import evaluate_task
from mtlora.tasks import get_task_kind
from mtlora.training import train_task

sys.path.insert(0, str(Path(__file__).parent))
from common import NO_CHECKPOINTS, limited
from isolated import peak_memory_mb, run_isolated
from machine import machine

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "glue" / "local.yaml"
QQP = {"name": "qqp", "kind": "pair_classification",
       "data": {"train": {"path": "qqp_kshot/16-42/train.tsv", "quoting": "none"},
                "validation": {"path": "qqp_kshot/16-42/dev.tsv", "quoting": "none"},
                "fields": {"text": "question1", "text_pair": "question2", "label": "is_duplicate"},
                "labels": ["different", "duplicate"]},
       "training": {"epochs": 10, "batch_size": 8, "log_every": 5}}  # 40 steps: log often enough to draw
# Where each task is scored: a split the training never saw.
SPLITS = {"mrpc": "test", "stsb": "test", "ag_news": "test"}
# Published dev-set scores (x100, fully fine-tuned on the full official train sets), for orientation only:
# different checkpoints, data and budgets from the runs here. Sources: MiniLM README (microsoft/unilm,
# minilm/), DistilBERT paper (Sanh et al. 2019, Tables 1-2), LoRA paper (Hu et al. 2021, Table 2,
# RoBERTa-base with LoRA on query/value, 0.3M trainable parameters). The MRPC/QQP metric is the one each
# source reports (accuracy in the LoRA paper; the others do not all say).
ANCHORS: dict[str, dict[str, float]] = {
    "MiniLM-L6-H384 (MiniLM README)": {"sst2": 91.5, "mrpc": 88.9, "qqp": 90.6},
    "BERT-base (DistilBERT paper)": {"sst2": 92.7, "mrpc": 88.6, "qqp": 89.6, "stsb": 89.0, "squad": 88.5},
    "DistilBERT (DistilBERT paper)": {"sst2": 91.3, "mrpc": 87.5, "qqp": 88.5, "stsb": 86.9, "squad": 85.8},
    "RoBERTa-base + LoRA (LoRA paper)": {"sst2": 95.1, "mrpc": 89.7, "qqp": 90.8, "stsb": 91.5},
}
# The targets for the full run, in the units of each task's main metric.
TARGETS = {"sst2": 0.90, "mrpc": 0.84, "stsb": 0.87, "squad": 65.0, "ag_news": 0.89, "support": 0.97}
ROUTING_TARGET = 0.97
# The cascade's bars swept on the same mix: where the token embeddings hand an input to the encoder.
CASCADE_CONFIDENCES, CASCADE_MARGINS = (0.5, 0.6, 0.7, 0.8, 0.9), (0.0, 0.005, 0.01, 0.02, 0.04)
METHODS = ("head_only", "lora", "full")
FULL_FINE_TUNING_LR = 5e-5
QUICK_TRAIN_ROWS, QUICK_EVAL_ROWS, QUICK_EPOCHS = 2000, 500, 2


def project_for(args: argparse.Namespace) -> ProjectConfig:
    raw_tasks = [QQP] if not args.tasks or "qqp" in args.tasks else []
    # Losses every 10 steps draw the training curves; the quick run needs no resumable checkpoints.
    training = {"log_every": 10, **({"checkpoint_every": NO_CHECKPOINTS} if args.quick else {})}
    overrides: dict[str, Any] = {"registry": str(args.work / "adapters"), "reports": str(args.work / "reports"),
                                 "defaults": {"training": training}}
    project = load_config(CONFIG, overrides=overrides)
    tasks = list(project.tasks) + [TaskConfig.model_validate(t) for t in raw_tasks]
    if args.tasks:
        tasks = [t for t in tasks if t.name in args.tasks]
    if args.quick:
        tasks = [_quick(t) for t in tasks]
    return project.model_copy(update={"tasks": tasks, "registry": args.work / "adapters",
                                      "reports": args.work / "reports"})


def _quick(task: TaskConfig) -> TaskConfig:
    assert task.data is not None
    rows = min(QUICK_TRAIN_ROWS, task.data.train.limit or QUICK_TRAIN_ROWS)
    epochs = max(QUICK_EPOCHS, task.training.epochs) if task.name == "qqp" else QUICK_EPOCHS  # QQP: 32 rows
    return limited(task, rows, {"validation": QUICK_EVAL_ROWS, "test": QUICK_EVAL_ROWS}, epochs=epochs)


def train_and_score(project: ProjectConfig, task: TaskConfig, split: str) -> dict[str, Any]:
    """The three methods on the same rows with the same budget, each trained in its own fresh process
    and scored on `split`."""
    runs = {method: run_isolated(train_one, project, task, method, split) for method in METHODS}
    report = evaluate_task(project, task, split, log=lambda _: None)
    metrics = {**{m: report.metrics[m] for m in ("lora", "head_only")}, "full": runs["full"]["metrics"]}
    return {"task": task.name, "kind": task.kind, "split": split, "examples": report.examples,
            "train_rows": len(load_task_data(project, task, splits=("train",)).train),
            "epochs": task.training.epochs, "metric": report.primary_metric, "metrics": metrics,
            **{key: {m: runs[m][key] for m in METHODS} for key in ("lr", "trainable", "time_s", "peak_mb", "losses")}}


def train_one(project: ProjectConfig, task: TaskConfig, method: str, split: str) -> dict[str, Any]:
    """Train `task` with `method` (LoRA and head-only go to the registry; full fine-tuning is scored here,
    as it is not stored) and report what it cost."""
    if method == "full":  # the usual full fine-tuning rate; LoRA's 1e-3 would wreck the pretrained weights
        task = task.model_copy(update={"training": task.training.model_copy(update={"lr": FULL_FINE_TUNING_LR})})
    outcome = train_task(project, task, method, fresh=True, progress=False, log=lambda _: None)
    summary = {"lr": task.training.lr_for(method), "trainable": outcome.trainable, "time_s": outcome.time_s,
               "peak_mb": peak_memory_mb(), "losses": outcome.losses}
    if method == "full":
        # Parsed with the training rows, as in training: a regression kind learns its target scale from them.
        # Scored at the inference precision, as evaluation scores the adapters.
        data = load_task_data(project, task, splits=("train", split))
        kind, examples, device = data.kind, data.split(split), default_device()
        predictions = predict_examples(outcome.model.to(device), kind, load_tokenizer(project.backbone), examples,
                                       task.training.max_length, task.training.doc_stride,
                                       task.training.eval_batch_size,
                                       use_bf16(project.inference.precision, device, project.backbone))
        summary["metrics"] = kind.metrics(predictions, examples)
    return summary


def routing(project: ProjectConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every router over a held-out mix of the six tasks' inputs, the semantic and learned ones reading
    each of the `router.features`: the cascade, the encoder, the token embeddings; then the cascade with
    other bars. QQP is left out: it is a second paraphrase source (32 rows) beside MRPC, not a task of
    its own."""
    six = project.model_copy(update={"tasks": [t for t in project.tasks if t.name != "qqp"]})
    # Features cascade trains both learned routers: the adapter and the head over token embeddings.
    mtlora.train_router(six.with_router(features="cascade"), fresh=True, progress=False, log=lambda _: None)
    reports = []
    for features, routers in (("cascade", ["keywords", "semantic", "learned"]), ("encoder", ["semantic", "learned"]),
                              ("embeddings", ["semantic", "learned"])):
        reading = six.with_router(features=features)
        reports += [r.to_dict() for r in mtlora.evaluate_routers(reading, routers, log=lambda _: None)]
    sweep = []
    for router, setting, bars in (("learned", "cascade_confidence", CASCADE_CONFIDENCES),
                                  ("semantic", "cascade_margin", CASCADE_MARGINS)):
        for bar in bars:
            (report,) = mtlora.evaluate_routers(six.with_router(features="cascade", **{setting: bar}), [router],
                                                write=False, log=lambda _: None)
            sweep.append({"router": router, setting: bar, "accuracy": report.accuracy,
                          "encoder_share": report.encoder_share})
    return reports, sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 training rows per task, two epochs")
    parser.add_argument("--tasks", nargs="*", help="only these tasks (their rows replace those of the last run)")
    parser.add_argument("--routing-only", action="store_true",
                        help="only retrain the router and rescore routing, on the adapters of the last run")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "quality")
    parser.add_argument("--note", help="what a rerun differs in (its registry, say), kept with it in the JSON")
    args = parser.parse_args()
    args.work = args.work.resolve()
    suffix = "_quick" if args.quick else ""
    out = ROOT / "bench" / "results" / f"quality{suffix}.json"
    project = project_for(args)
    started = time.perf_counter()
    previous = json.loads(out.read_text()) if (args.tasks or args.routing_only) and out.is_file() else None
    result = {"benchmark": "quality", "quick": args.quick, "date": time.strftime("%Y-%m-%d %H:%M"),
              "machine": machine(), "wall_s": 0.0, "tasks": [], "routing": []}
    if previous:
        rerun = {"tasks": args.tasks or ["routing"], "date": result["date"], "machine": result["machine"]}
        if args.note:
            rerun["note"] = args.note
        # The header describes the run whose rows the rerun keeps: its date and machine stay.
        result.update({key: previous[key] for key in ("date", "machine", "device") if key in previous})
        result.update(tasks=previous["tasks"], routing=previous["routing"], wall_s=previous["wall_s"],
                      routing_wall_s=previous.get("routing_wall_s", 0.0),
                      routing_cascade=previous.get("routing_cascade", []),
                      reruns=[*previous.get("reruns", []), rerun])
    for task in [] if args.routing_only else project.tasks:
        print(f"[{task.name}] head-only, LoRA, full fine-tuning...", flush=True)
        row = train_and_score(project, task, SPLITS.get(task.name, "validation"))
        print(f"[{task.name}] {row['metric']}: " + ", ".join(
            f"{m} {row['metrics'][m].get(row['metric'], float('nan')):.3f}" for m in METHODS), flush=True)
        names = [r["task"] for r in result["tasks"]]
        if row["task"] in names:  # a rerun replaces the task's row in place
            result["tasks"][names.index(row["task"])] = row
        else:
            result["tasks"].append(row)
        if not previous:
            result["wall_s"] = time.perf_counter() - started
        write_results(result, out, suffix)  # after every task: a crash later keeps what is done
    if not args.tasks:
        routing_started = time.perf_counter()
        result["routing"], result["routing_cascade"] = routing(project)
        result["routing_wall_s"] = time.perf_counter() - routing_started
        write_results(result, out, suffix)
    print(markdown(result, suffix))


def write_results(result: dict[str, Any], out: Path, suffix: str) -> None:
    atomic.write_json(out, result)
    plot_scores(result, out.with_name(f"quality{suffix}_scores.png"))
    plot_curves(result, out.with_name(f"quality{suffix}_curves.png"))
    atomic.write_text(ROOT / f"BENCHMARKS{suffix}.md", markdown(result, suffix))


def markdown(result: dict[str, Any], suffix: str) -> str:
    mode = "quick run: at most 2,000 training rows per task, two epochs" if result["quick"] else "full run"
    lines = [f"# Quality on real data ({mode})", "",
             f"Embedded all-MiniLM-L6-v2 on {result.get('device', 'CPU')}, run of {result['date']}: "
             f"{result['wall_s'] / 60:.1f} min for the tasks. Produced by `python bench/quality.py"
             f"{' --quick' if result['quick'] else ''}`; the numbers are in `bench/results/quality{suffix}.json`. "
             f"Every method trains on the same rows for the same epochs; {_rates(result['tasks'])}.", "",
             "| task | train rows x epochs | scored on | metric | head-only | LoRA | full FT | LoRA - full | target |",
             "|---|---|---|---|---:|---:|---:|---:|---|"]
    for row in result["tasks"]:
        values = {m: row["metrics"][m].get(row["metric"]) for m in METHODS}
        gap, verdict = values["lora"] - values["full"], _verdict(row["task"], values["lora"])
        lines.append(f"| {row['task']} | {row['train_rows']:,} x {row['epochs']:g} | "
                     f"{row['split']} ({row['examples']:,}) | {row['metric']} | {_f(values['head_only'])} | "
                     f"**{_f(values['lora'])}** | {_f(values['full'])} | {gap:+.3f} | {verdict} |")
    lines += ["", "Other metrics of the same runs:", "", "| task | method | metrics |", "|---|---|---|"]
    for row in result["tasks"]:
        for method in METHODS:
            others = {k: v for k, v in row["metrics"][method].items() if k != row["metric"]}
            lines.append(f"| {row['task']} | {method} | " + ", ".join(f"{k} {v:.3f}" for k, v in others.items()) + " |")
    lines += ["", "Cost of each method (wall time of training, peak memory while training):", "",
              "| task | LoRA params (% of full FT) | head-only params | head-only | LoRA | full FT |",
              "|---|---:|---:|---|---|---|"]
    for row in result["tasks"]:
        share = 100 * row["trainable"]["lora"] / row["trainable"]["full"]
        cost = {m: f"{row['time_s'][m]:.0f} s, {_mb(row.get('peak_mb', {}).get(m))}" for m in METHODS}
        lines.append(f"| {row['task']} | {row['trainable']['lora']:,} ({share:.2f}%) | "
                     f"{row['trainable']['head_only']:,} | {cost['head_only']} | {cost['lora']} | {cost['full']} |")
    lines += ["", "Published anchors (dev sets, x100; see the note in `bench/quality.py` on what differs):", "",
              "| source | " + " | ".join(t for t in ANCHOR_TASKS) + " |", "|---|" + "---:|" * len(ANCHOR_TASKS)]
    lines += [f"| {source} | " + " | ".join(f"{scores[t]:.1f}" if t in scores else "–" for t in ANCHOR_TASKS) + " |"
              for source, scores in ANCHORS.items()]
    for rerun in result.get("reruns", []):
        lines += ["", f"Rerun on {rerun['date']}: {', '.join(rerun['tasks'])} (the other rows are from the run "
                      f"above; see the git log of bench/results/ for why). {rerun.get('note', '')}".rstrip()]
    lines += ["", f"Routing over a held-out mix of the six tasks' inputs (target for the learned router: "
                  f"{ROUTING_TARGET}; pairs and QA sent as plain text pairs; "
                  f"{result.get('routing_wall_s', 0) / 60:.1f} min, training the router included):", "",
              "| router | reads | accuracy | unroutable | encoder pass | ms / input | per task |",
              "|---|---|---:|---:|---:|---:|---|"]
    lines += [f"| {r['router']} | {r.get('features') or ''} | {r['accuracy']:.3f} | {r['unroutable']:.3f} | "
              f"{_f(r.get('encoder_share'))} | {r['ms_per_input']:.2f} | "
              + ", ".join(f"{t} {a:.2f}" for t, a in r["per_task"].items()) + " |" for r in result["routing"]]
    if result.get("routing_cascade"):
        lines += ["", "The cascade with other bars (the learned router's `cascade_confidence`, the semantic "
                      "router's `cascade_margin`) on the same mix:", "",
                  "| router | bar | accuracy | encoder pass |", "|---|---:|---:|---:|"]
        lines += [f"| {r['router']} | {r.get('cascade_confidence', r.get('cascade_margin'))} | {r['accuracy']:.3f} | "
                  f"{r['encoder_share']:.3f} |" for r in result["routing_cascade"]]
    lines += ["", f"![scores](bench/results/quality{suffix}_scores.png)",
              f"![training curves](bench/results/quality{suffix}_curves.png)"]
    return "\n".join(lines) + "\n"


ANCHOR_TASKS = ("sst2", "mrpc", "qqp", "stsb", "squad")
# Rows of runs before each method's rate was recorded: all of them trained the head-only baseline at LoRA's.
RATES_BEFORE_RECORDED = {"lora": 1e-3, "head_only": 1e-3, "full": FULL_FINE_TUNING_LR}


def _rates(rows: list[dict[str, Any]]) -> str:
    """Each method's learning rate, as "LoRA 0.001, head-only 0.1 (sst2: 0.3), ..."."""
    said = []
    for method, name in (("lora", "LoRA"), ("head_only", "head-only"), ("full", "full fine-tuning")):
        rates = {row["task"]: row.get("lr", RATES_BEFORE_RECORDED)[method] for row in rows}
        usual = max(set(rates.values()), key=list(rates.values()).count)
        others = ", ".join(f"{task}: {rate:g}" for task, rate in rates.items() if rate != usual)
        said.append(f"{name} {usual:g}" + (f" ({others})" if others else ""))
    return "learning rates: " + ", ".join(said)


def plot_scores(result: dict[str, Any], path: Path) -> None:
    """Bars of head-only / LoRA / full FT per task (on a 0-1 scale), with the published anchors marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["tasks"]
    figure, axes = plt.subplots(figsize=(1.6 * len(rows) + 2, 4.5))
    width = 0.27
    for offset, method in enumerate(METHODS):
        scores = [_unit(row, row["metrics"][method][row["metric"]]) for row in rows]
        axes.bar([i + (offset - 1) * width for i in range(len(rows))], scores, width, label=method)
    for marker, (source, anchors) in zip("v^os", ANCHORS.items(), strict=False):
        points = [(i, anchors[row["task"]] / 100) for i, row in enumerate(rows) if row["task"] in anchors]
        if points:
            axes.scatter(*zip(*points, strict=True), marker=marker, color="black", zorder=3, label=source, s=22)
    axes.set_xticks(range(len(rows)), [f"{row['task']}\n{row['metric']}" for row in rows], fontsize=8)
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("score (percentages / 100)")
    axes.legend(fontsize=7, loc="lower left", ncols=2)
    axes.set_title("head-only vs LoRA vs full fine-tuning, with published anchors")
    figure.tight_layout()
    atomic.write_bytes_via(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    plt.close(figure)


def plot_curves(result: dict[str, Any], path: Path) -> None:
    """Training loss against step, one panel per task, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in result["tasks"] if "losses" in row]
    if not rows:
        return
    columns = min(4, len(rows))
    figure, axes = plt.subplots((len(rows) + columns - 1) // columns, columns, squeeze=False,
                                figsize=(3.4 * columns, 2.8 * ((len(rows) + columns - 1) // columns)))
    for panel, row in zip(axes.flat, rows, strict=False):
        for method in METHODS:
            if row["losses"][method]:
                steps, losses = zip(*row["losses"][method], strict=True)
                panel.plot(steps, losses, label=method, linewidth=1.2)
        panel.set_title(row["task"], fontsize=9)
        panel.set_xlabel("step", fontsize=8)
        panel.tick_params(labelsize=7)
    for panel in list(axes.flat)[len(rows):]:
        panel.axis("off")
    axes.flat[0].legend(fontsize=7)
    axes.flat[0].set_ylabel("training loss", fontsize=8)
    figure.tight_layout()
    atomic.write_bytes_via(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    plt.close(figure)


def _verdict(task: str, score: float) -> str:
    target = TARGETS.get(task)
    if target is None:
        return "–"
    return f"{_f(target)} met" if score >= target else f"{_f(target)} missed by {_f(target - score)}"


def _unit(row: dict[str, Any], value: float) -> float:
    kind = get_task_kind(row["kind"])
    return value / kind.metric_scale(kind.primary_metric)


def _mb(value: float | None) -> str:
    return "–" if value is None else f"{value / 1024:.1f} GB"


def _f(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
