"""Quality on real data: every task of examples/glue/local.yaml (plus QQP few-shot) trained three ways
on the embedded backbone with the same data and budget -- LoRA adapter, head-only baseline, full
fine-tuning -- and scored on held-out data, with routing accuracy over a mix of all tasks.

    python bench/quality.py --quick     # 2,000 training rows per task, two epochs: a run of minutes
    python bench/quality.py             # the configs as written (long on 2 CPU cores)

Writes bench/results/quality[_quick].json and BENCHMARKS[_quick].md. Published anchors are those of
MiniLM-L6-H384 (a different checkpoint from all-MiniLM-L6-v2, fine-tuned fully, on full data).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any

import mtlora
from mtlora.backbone import default_device, load_tokenizer, use_bf16
from mtlora.config import ProjectConfig, TaskConfig, load_config
from mtlora.data import load_task_data
from mtlora.engine import predict_examples
from mtlora.evaluation import evaluate_task
from mtlora.tasks import get_task_kind
from mtlora.training import train_task

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "glue" / "local.yaml"
QQP = {"name": "qqp", "kind": "pair_classification",
       "data": {"train": {"path": "qqp_kshot/16-42/train.tsv", "quoting": "none"},
                "validation": {"path": "qqp_kshot/16-42/dev.tsv", "quoting": "none"},
                "fields": {"text": "question1", "text_pair": "question2", "label": "is_duplicate"},
                "labels": ["different", "duplicate"]},
       "training": {"epochs": 10, "batch_size": 8}}
# Where each task is scored: a split the training never saw.
SPLITS = {"mrpc": "test", "stsb": "test", "ag_news": "test"}
# Dev-set results of MiniLM-L6-H384 fine-tuned fully (MiniLM README), for orientation only.
ANCHORS = {"sst2": ("accuracy", 0.915, "MiniLM-L6-H384, MiniLM README"),
           "qqp": ("accuracy", 0.906, "MiniLM-L6-H384 on full QQP, MiniLM README"),
           "mrpc": ("accuracy", 0.889, "MiniLM-L6-H384, MiniLM README")}
FULL_FINE_TUNING_LR = 5e-5
QUICK_TRAIN_ROWS, QUICK_EVAL_ROWS, QUICK_EPOCHS = 2000, 500, 2


def project_for(args: argparse.Namespace) -> ProjectConfig:
    raw_tasks = [QQP] if not args.tasks or "qqp" in args.tasks else []
    overrides: dict[str, Any] = {"registry": str(args.work / "adapters"), "reports": str(args.work / "reports")}
    if args.quick:
        overrides["defaults"] = {"training": {"checkpoint_every": 10_000}}
    project = load_config(CONFIG, overrides=overrides)
    tasks = list(project.tasks) + [TaskConfig.model_validate(t) for t in raw_tasks]
    if args.tasks:
        tasks = [t for t in tasks if t.name in args.tasks]
    if args.quick:
        tasks = [_quick(t) for t in tasks]
    return project.model_copy(update={"tasks": tasks, "registry": args.work / "adapters",
                                      "reports": args.work / "reports"})


def _quick(task: TaskConfig) -> TaskConfig:
    rows = min(QUICK_TRAIN_ROWS, task.data.train.limit or QUICK_TRAIN_ROWS)
    data = task.data.model_copy(update={
        "train": task.data.train.model_copy(update={"limit": rows}),
        **{split: getattr(task.data, split).model_copy(update={"limit": QUICK_EVAL_ROWS})
           for split in ("validation", "test") if getattr(task.data, split) is not None},
    })
    epochs = max(QUICK_EPOCHS, task.training.epochs) if task.name == "qqp" else QUICK_EPOCHS  # QQP: 32 rows
    return task.model_copy(update={"data": data, "training": task.training.model_copy(update={"epochs": epochs})})


def full_fine_tuning(project: ProjectConfig, task: TaskConfig, split: str) -> dict[str, Any]:
    """Every weight trained (lr 5e-5, the usual full fine-tuning rate), scored on the same split."""
    tuned = task.model_copy(update={"training": task.training.model_copy(update={"lr": FULL_FINE_TUNING_LR})})
    outcome = train_task(project, tuned, "full", progress=False, log=lambda _: None)
    kind = get_task_kind(task.kind).from_config(task)
    examples = load_task_data(project, task, splits=(split,)).split(split)
    predictions = predict_examples(outcome.model.to(default_device()), kind, load_tokenizer(project.backbone),
                                   examples, task.training.max_length, task.training.doc_stride,
                                   task.training.eval_batch_size, use_bf16(task.training.precision,
                                                                           default_device()))
    return {"metrics": kind.metrics(predictions, examples), "trainable": outcome.trainable, "time_s": outcome.time_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 training rows per task, two epochs")
    parser.add_argument("--tasks", nargs="*", help="only these tasks")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "quality")
    args = parser.parse_args()
    suffix = "_quick" if args.quick else ""
    project = project_for(args)
    rows, started = [], time.perf_counter()
    for task in project.tasks:
        split = SPLITS.get(task.name, "validation")
        print(f"[{task.name}] LoRA and head-only...", flush=True)
        trained = {o.method: o for o in mtlora.train(project, task.name, progress=False, log=lambda _: None)}
        report = evaluate_task(project, task, split, log=lambda _: None)
        print(f"[{task.name}] full fine-tuning...", flush=True)
        full = full_fine_tuning(project, task, split)
        rows.append({
            "task": task.name, "kind": task.kind, "split": split, "examples": report.examples,
            "metric": report.primary_metric, "metrics": {**report.metrics, "full": full["metrics"]},
            "trainable": {"lora": trained["lora"].trainable, "head_only": trained["head_only"].trainable,
                          "full": full["trainable"]},
            "time_s": {"lora": trained["lora"].time_s, "head_only": trained["head_only"].time_s,
                       "full": full["time_s"]},
        })
        print(f"[{task.name}] {report.primary_metric}: " + ", ".join(
            f"{v} {m.get(report.primary_metric, float('nan')):.3f}" for v, m in rows[-1]["metrics"].items()),
            flush=True)
    out = ROOT / "bench" / "results" / f"quality{suffix}.json"
    result = {"benchmark": "quality", "quick": args.quick, "date": time.strftime("%Y-%m-%d %H:%M"),
              "wall_s": time.perf_counter() - started,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "tasks": rows}
    if args.tasks and out.is_file():
        # A rerun of some tasks replaces their rows; routing needs every task, so it keeps the last full run's.
        previous = json.loads(out.read_text())
        rerun = {row["task"]: row for row in rows}
        result["tasks"] = [rerun.pop(row["task"], row) for row in previous["tasks"]] + list(rerun.values())
        result["routing"] = previous.get("routing", [])
        result["reruns"] = [*previous.get("reruns", []), {"tasks": args.tasks, "date": result["date"]}]
        result["wall_s"] = previous["wall_s"]
    else:
        mtlora.train_router(project, progress=False, log=lambda _: None)
        result["routing"] = [r.to_dict() for r in mtlora.evaluate_routers(
            project, ["keywords", "semantic", "learned"], log=lambda _: None)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    (ROOT / f"BENCHMARKS{suffix}.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict[str, Any]) -> str:
    mode = "quick run: at most 2,000 training rows per task, two epochs" if result["quick"] else "full run"
    lines = [f"# Quality on real data ({mode})", "",
             f"Embedded all-MiniLM-L6-v2, 2 CPU cores, {result['date']}, {result['wall_s'] / 60:.1f} min, "
             f"peak memory {result['peak_rss_mb']:.0f} MB. Produced by `python bench/quality.py"
             f"{' --quick' if result['quick'] else ''}`; the numbers are in `bench/results/`.", "",
             "| task | split | n | metric | head-only | LoRA | full FT | LoRA params (% of full) | LoRA time | "
             "full FT time | anchor |", "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for row in result["tasks"]:
        metric, values = row["metric"], {v: m.get(row["metric"]) for v, m in row["metrics"].items()}
        anchor = ANCHORS.get(row["task"])
        anchor_text = f"{anchor[1]:.3f} ({anchor[2]})" if anchor and anchor[0] == metric else "–"
        share = 100 * row["trainable"]["lora"] / row["trainable"]["full"]
        lines.append(f"| {row['task']} | {row['split']} | {row['examples']} | {metric} | {_f(values.get('head_only'))} "
                     f"| **{_f(values.get('lora'))}** | {_f(values.get('full'))} | {row['trainable']['lora']:,} "
                     f"({share:.2f}%) | {row['time_s']['lora']:.0f}s | {row['time_s']['full']:.0f}s | {anchor_text} |")
    for rerun in result.get("reruns", []):
        lines += ["", f"Rerun on {rerun['date']}: {', '.join(rerun['tasks'])} (the other rows are from the run "
                      "above; see the git log of bench/results/ for why)."]
    lines += ["", "Routing over a held-out mix of every task's inputs (pairs and QA sent as plain text pairs):", "",
              "| router | accuracy | unroutable |", "|---|---:|---:|"]
    lines += [f"| {r['router']} | {r['accuracy']:.3f} | {r['unroutable']:.3f} |" for r in result["routing"]]
    return "\n".join(lines) + "\n"


def _f(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
