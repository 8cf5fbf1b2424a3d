"""Which LoRA settings to default to: rank, dropout and target modules, measured side by side.

Each variant trains one adapter on the same rows of a real task (same seed), in a fresh process of its
own, then scores its held-out split. Two sizes:

- the probe (default): one epoch on 6,000 SST-2 rows and 3,000 STS-B rows. Cheap, and it shows the
  speed of each setting; but so little training favours the larger ranks, which fit faster.
- `--full`: each task as `examples/glue/local.yaml` trains it in bench/quality.py's full run (SST-2
  30,000 rows x 1 epoch, STS-B and MRPC all rows x 3, SQuAD 38 articles x 1). The defaults are chosen
  on these: they are what a user's adapters get. About 10 min per variant for SST-2, MRPC and STS-B
  together, and 15-20 for SQuAD.

The speed column is what decides dropout on a CPU: PEFT applies LoRA dropout to a copy of each adapted
layer's input, a memory-bound pass per layer that costs more than the rank-r matrix products themselves.

    python bench/lora_settings.py                       # the probe, every variant: about 15 min
    python bench/lora_settings.py --full --tasks stsb mrpc --variants r8 r4 r2 r8-qv

Writes bench/results/lora_settings.json (--full: lora_settings_full.json) and prints a table.
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
from mtlora.data import load_task_data
from mtlora.evaluation import evaluate_task
from mtlora.modeling import count_trainable
from mtlora.training import train_task

sys.path.insert(0, str(Path(__file__).parent))
from common import NO_CHECKPOINTS, limited, merged_rows
from isolated import run_isolated
from machine import machine

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "glue" / "local.yaml"
PROBE_ROWS = {"sst2": 6000, "stsb": 3000}
FULL_TASKS = ["sst2", "mrpc", "stsb", "squad"]
DEFAULT = LoraSettings()
# key: (table label, LoRA settings, learning rate). Saved as trained but for the saved_rank variants
# ("auto" saves these encoder tasks at rank 4).
VARIANTS = {
    "r16-dropout": ("r16 all-linear dropout 0.1", LoraSettings(r=16, alpha=32, dropout=0.1, saved_rank=None), 1e-3),
    "r16": ("r16 all-linear", LoraSettings(r=16, alpha=32, saved_rank=None), 1e-3),
    "r8": ("r8 all-linear", LoraSettings(r=8, alpha=16, saved_rank=None), 1e-3),
    "r8-saved4": ("r8 all-linear, saved at rank 4", LoraSettings(r=8, alpha=16, saved_rank="auto"), 1e-3),
    "r8-saved2": ("r8 all-linear, saved at rank 2", LoraSettings(r=8, alpha=16, saved_rank=2), 1e-3),
    "r4": ("r4 all-linear", LoraSettings(r=4, alpha=8, saved_rank=None), 1e-3),
    "r2": ("r2 all-linear", LoraSettings(r=2, alpha=4, saved_rank=None), 1e-3),
    "r8-qv": ("r8 query,value", LoraSettings(r=8, alpha=16, target_modules=["query", "value"], saved_rank=None),
              1e-3),
    "r8-lr5e-4": ("r8 all-linear, lr 5e-4", LoraSettings(r=8, alpha=16, saved_rank=None), 5e-4),
    "r8-lr2e-3": ("r8 all-linear, lr 2e-3", LoraSettings(r=8, alpha=16, saved_rank=None), 2e-3),
}


def measure(project: ProjectConfig, task: TaskConfig, lora: LoraSettings, lr: float, work: Path) -> dict[str, Any]:
    training = task.training.model_copy(update={"lr": lr})
    varied = task.model_copy(update={"lora": lora, "training": training})
    scoped = project.model_copy(update={"tasks": [varied], "registry": work / "adapters", "reports": work / "reports"})
    outcome = train_task(scoped, varied, "lora", fresh=True, progress=False, log=lambda _: None)
    report = evaluate_task(scoped, varied, "validation", log=lambda _: None)
    return {"metric": report.primary_metric, "score": report.metrics["lora"][report.primary_metric],
            "train_rows": len(load_task_data(scoped, varied, splits=("train",)).train),
            "trainable": outcome.trainable, "share": outcome.trainable / outcome.total,
            # what the engine holds per adapter: below the trained count when saved at a lower rank
            "stored": count_trainable(outcome.model), "stored_share": count_trainable(outcome.model) / outcome.total,
            "samples_per_s": outcome.samples_per_s, "time_s": outcome.time_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="train each task as bench/quality.py's full run does")
    parser.add_argument("--tasks", nargs="*", choices=FULL_TASKS, help="default: sst2 stsb (probe), all (--full)")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    tasks = args.tasks or (FULL_TASKS if args.full else list(PROBE_ROWS))
    if not args.full and set(tasks) - set(PROBE_ROWS):
        parser.error(f"the probe covers only {', '.join(PROBE_ROWS)}; add --full for {', '.join(tasks)}")
    project = load_config(CONFIG)
    rows, started = [], time.perf_counter()
    for name in tasks:
        task = project.task(name)
        task = limited(task, checkpoint_every=NO_CHECKPOINTS) if args.full else \
            limited(task, PROBE_ROWS[name], epochs=1, checkpoint_every=NO_CHECKPOINTS)
        for key in args.variants:
            label, lora, lr = VARIANTS[key]
            with tempfile.TemporaryDirectory() as work:
                measured = run_isolated(measure, project, task, lora, lr, Path(work))  # no shared warm-up
            row = {"task": name, "train_rows": measured.pop("train_rows"), "epochs": task.training.epochs,
                   "variant": label, "key": key, "lr": lr, "default": lora == DEFAULT and lr == task.training.lr,
                   **lora.model_dump(), **measured}
            rows.append(row)
            print(f"{name:5} {label:28} {row['metric']} {row['score']:.3f}  {row['samples_per_s']:.0f} samples/s",
                  flush=True)
    out = ROOT / "bench" / "results" / ("lora_settings_full.json" if args.full else "lora_settings.json")
    rows = merged_rows(out, rows, key=lambda row: (row["task"], row.get("key")))
    result = {"benchmark": "lora_settings", "sizes": "full" if args.full else "probe", "machine": machine(),
              "date": time.strftime("%Y-%m-%d %H:%M"), "wall_s": time.perf_counter() - started, "rows": rows}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))


def table(result: dict[str, Any]) -> str:
    lines = ["| task | settings | lr | score | trainable (% of full) | stored (% of full) | samples/s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['task']} ({r['train_rows']:,} rows x {r.get('epochs', 1):g}) | {r['variant']} | {r['lr']:g} | "
              f"{r['metric']} {r['score']:.3f} | {r['trainable']:,} ({100 * r['share']:.2f}%) | "
              f"{r.get('stored', r['trainable']):,} ({100 * r.get('stored_share', r['share']):.2f}%) | "
              f"{r['samples_per_s']:.0f} |" for r in result["rows"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
