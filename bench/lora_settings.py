"""Which LoRA settings to default to: rank, dropout and target modules, measured side by side.

Each variant trains one adapter on the same rows of a real task (one epoch, same seed, lr 1e-3), then
scores its held-out split. The speed column is what decides dropout on a CPU: PEFT applies LoRA
dropout to a copy of each adapted layer's input, a memory-bound pass per layer that costs more than the
rank-r matrix products themselves.

    python bench/lora_settings.py                   # SST-2 (6,000 rows) and STS-B (3,000): about 10 min
    python bench/lora_settings.py --tasks sst2

Writes bench/results/lora_settings.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from mtlora.config import LoraSettings, ProjectConfig, TaskConfig, load_config
from mtlora.evaluation import evaluate_task
from mtlora.training import train_task

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "glue" / "local.yaml"
ROWS = {"sst2": 6000, "stsb": 3000}
VARIANTS = {
    "r16 all-linear dropout 0.1": LoraSettings(r=16, alpha=32, dropout=0.1),
    "r16 all-linear": LoraSettings(r=16, alpha=32, dropout=0.0),
    "r8 all-linear (default)": LoraSettings(r=8, alpha=16, dropout=0.0),
    "r4 all-linear": LoraSettings(r=4, alpha=8, dropout=0.0),
    "r8 query,value": LoraSettings(r=8, alpha=16, dropout=0.0, target_modules=["query", "value"]),
}


def measure(project: ProjectConfig, task: TaskConfig, lora: LoraSettings, work: Path) -> dict[str, Any]:
    varied = task.model_copy(update={"lora": lora})
    scoped = project.model_copy(update={"tasks": [varied], "registry": work / "adapters", "reports": work / "reports"})
    outcome = train_task(scoped, varied, "lora", fresh=True, progress=False, log=lambda _: None)
    report = evaluate_task(scoped, varied, "validation", log=lambda _: None)
    return {"metric": report.primary_metric, "score": report.metrics["lora"][report.primary_metric],
            "trainable": outcome.trainable, "share": outcome.trainable / outcome.total,
            "samples_per_s": outcome.samples_per_s, "time_s": outcome.time_s}


def sized(task: TaskConfig, rows: int) -> TaskConfig:
    data = task.data.model_copy(update={"train": task.data.train.model_copy(update={"limit": rows})})
    training = task.training.model_copy(update={"epochs": 1, "lr": 1e-3, "checkpoint_every": 100_000})
    return task.model_copy(update={"data": data, "training": training})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="*", default=list(ROWS), choices=list(ROWS))
    args = parser.parse_args()
    project = load_config(CONFIG)
    rows, started = [], time.perf_counter()
    for name in args.tasks:
        task = sized(project.task(name), ROWS[name])
        for variant, lora in VARIANTS.items():
            with tempfile.TemporaryDirectory() as work:
                row = {"task": name, "train_rows": ROWS[name], "variant": variant, **lora.model_dump(),
                       **measure(project, task, lora, Path(work))}
            rows.append(row)
            print(f"{name:5} {variant:28} {row['metric']} {row['score']:.3f}  {row['samples_per_s']:.0f} samples/s",
                  flush=True)
    result = {"benchmark": "lora_settings", "date": time.strftime("%Y-%m-%d %H:%M"),
              "wall_s": time.perf_counter() - started, "rows": rows}
    out = ROOT / "bench" / "results" / "lora_settings.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))


def table(result: dict[str, Any]) -> str:
    lines = ["| task | settings | score | trainable (% of full) | samples/s |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['task']} ({r['train_rows']:,} rows) | {r['variant']} | {r['metric']} {r['score']:.3f} | "
              f"{r['trainable']:,} ({100 * r['share']:.2f}%) | {r['samples_per_s']:.0f} |" for r in result["rows"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
