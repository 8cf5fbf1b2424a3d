"""Which LoRA settings to default to: rank, dropout and target modules, measured side by side.

Each variant trains one adapter on the same rows of a real task (one epoch, same seed), in a
fresh process of its own, then scores its held-out split. The speed column is what decides dropout on a
CPU: PEFT applies LoRA dropout to a copy of each adapted layer's input, a memory-bound pass per layer
that costs more than the rank-r matrix products themselves.

    python bench/lora_settings.py                   # SST-2 (6,000 rows) and STS-B (3,000): about 15 min
    python bench/lora_settings.py --tasks sst2

Writes bench/results/lora_settings.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mtlora.config import LoraSettings, ProjectConfig, TaskConfig, load_config
from mtlora.evaluation import evaluate_task
from mtlora.training import train_task

sys.path.insert(0, str(Path(__file__).parent))
from isolated import run_isolated

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "glue" / "local.yaml"
ROWS = {"sst2": 6000, "stsb": 3000}
DEFAULT = LoraSettings()
VARIANTS = {  # name: (LoRA settings, learning rate)
    "r16 all-linear dropout 0.1": (LoraSettings(r=16, alpha=32, dropout=0.1), 1e-3),
    "r16 all-linear": (LoraSettings(r=16, alpha=32), 1e-3),
    "r8 all-linear (default)": (DEFAULT, 1e-3),
    "r4 all-linear": (LoraSettings(r=4, alpha=8), 1e-3),
    "r8 query,value": (LoraSettings(target_modules=["query", "value"]), 1e-3),
    "r8 all-linear, lr 5e-4": (DEFAULT, 5e-4),
    "r8 all-linear, lr 2e-3": (DEFAULT, 2e-3),
}


def measure(project: ProjectConfig, task: TaskConfig, lora: LoraSettings, lr: float, work: Path) -> dict[str, Any]:
    training = task.training.model_copy(update={"lr": lr})
    varied = task.model_copy(update={"lora": lora, "training": training})
    scoped = project.model_copy(update={"tasks": [varied], "registry": work / "adapters", "reports": work / "reports"})
    outcome = train_task(scoped, varied, "lora", fresh=True, progress=False, log=lambda _: None)
    report = evaluate_task(scoped, varied, "validation", log=lambda _: None)
    return {"metric": report.primary_metric, "score": report.metrics["lora"][report.primary_metric],
            "trainable": outcome.trainable, "share": outcome.trainable / outcome.total,
            "samples_per_s": outcome.samples_per_s, "time_s": outcome.time_s}


def sized(task: TaskConfig, rows: int) -> TaskConfig:
    data = task.data.model_copy(update={"train": task.data.train.model_copy(update={"limit": rows})})
    training = task.training.model_copy(update={"epochs": 1, "checkpoint_every": 100_000})
    return task.model_copy(update={"data": data, "training": training})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="*", default=list(ROWS), choices=list(ROWS))
    args = parser.parse_args()
    project = load_config(CONFIG)
    rows, started = [], time.perf_counter()
    for name in args.tasks:
        task = sized(project.task(name), ROWS[name])
        for variant, (lora, lr) in VARIANTS.items():
            with tempfile.TemporaryDirectory() as work:
                measured = run_isolated(measure, project, task, lora, lr, Path(work))  # no shared warm-up
                row = {"task": name, "train_rows": ROWS[name], "variant": variant, "lr": lr, **lora.model_dump(),
                       **measured}
            rows.append(row)
            print(f"{name:5} {variant:28} {row['metric']} {row['score']:.3f}  {row['samples_per_s']:.0f} samples/s",
                  flush=True)
    out = ROOT / "bench" / "results" / "lora_settings.json"
    if out.is_file():  # keep the last run's rows of the tasks not rerun
        rows = [r for r in json.loads(out.read_text())["rows"] if r["task"] not in args.tasks] + rows
    result = {"benchmark": "lora_settings", "date": time.strftime("%Y-%m-%d %H:%M"),
              "wall_s": time.perf_counter() - started, "rows": rows}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))


def table(result: dict[str, Any]) -> str:
    lines = ["| task | settings | lr | score | trainable (% of full) | samples/s |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['task']} ({r['train_rows']:,} rows) | {r['variant']} | {r['lr']:g} | {r['metric']} "
              f"{r['score']:.3f} | {r['trainable']:,} ({100 * r['share']:.2f}%) | {r['samples_per_s']:.0f} |"
              for r in result["rows"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
