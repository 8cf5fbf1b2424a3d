"""Seq2seq adapters on real data, offline: the tasks of examples/seq2seq/local.yaml on an encoder-decoder
warm-started from the embedded MiniLM, each scored beside the prompt-only base, plus generation speed
with several adapters in one engine call against one request at a time.

    python bench/seq2seq.py --quick     # up to 1,200 rows per task: about 30 minutes on 2 CPU cores
    python bench/seq2seq.py             # the sizes below (not yet measured; some hours on 2 CPU cores)

Writes bench/results/seq2seq[_quick].json and prints a table. Summarization (300 CNN/DailyMail rows) and
MCQ generation (RACE-M has no train split offline) are small-data runs, not benchmark numbers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from common import NO_CHECKPOINTS, limited, merged_rows
from machine import machine

import mtlora
from mtlora import atomic
from mtlora.config import ProjectConfig, load_config
from mtlora.engine import Engine

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "seq2seq" / "local.yaml"
# task -> (split scored, training rows kept, scored rows kept); None keeps every row.
# A multitask adapter's data are its parts' (sized by their own entries).
SIZES = {"support": ("validation", None, None), "summarize": ("validation", None, None),
         "race_mcq": ("test", None, 300), "dream_mcq": ("test", 2000, 300), "writer": ("validation", None, None)}
QUICK_SIZES = {"support": ("validation", 1200, None), "summarize": ("validation", None, None),
               "race_mcq": ("test", 800, 60), "dream_mcq": ("test", 800, 60), "writer": ("validation", None, None)}
SPEED_REQUESTS_PER_TASK = 12


def project_for(args: argparse.Namespace) -> ProjectConfig:
    project = load_config(CONFIG)
    sizes = QUICK_SIZES if args.quick else SIZES
    # Every task, also with --tasks: a multitask adapter reads its parts' data, sized by their own entries.
    tasks = [limited(t, train_rows, {split: scored_rows}, checkpoint_every=NO_CHECKPOINTS)
             for t in project.tasks for split, train_rows, scored_rows in [sizes[t.name]]]
    return project.model_copy(update={"tasks": tasks, "registry": args.work / "adapters",
                                      "reports": args.work / "reports"})


def generation_speed(project: ProjectConfig, tasks: list[str]) -> dict[str, Any]:
    """Tokens written per second: every request in one engine call (one batched pass per adapter) vs one
    request at a time (the adapter switched per request, as the seeds serve)."""
    engine = Engine.from_config(project, tasks=tasks)
    texts = [e["text"] for e in _inputs(project, tasks)]
    names = [name for name in tasks for _ in range(SPEED_REQUESTS_PER_TASK)]
    engine.predict_batch(texts[:2], task=names[:2])  # warm-up
    started = time.perf_counter()
    together = engine.predict_batch(texts, task=names)
    together_s = time.perf_counter() - started
    started = time.perf_counter()
    alone = [engine.predict(text, task=name) for text, name in zip(texts, names, strict=True)]
    alone_s = time.perf_counter() - started
    tokens_together = sum(p["generated_tokens"] for p in together)
    tokens_alone = sum(p["generated_tokens"] for p in alone)
    return {"requests": len(texts), "adapters": tasks,
            "one_call_tokens_per_s": tokens_together / together_s, "per_request_tokens_per_s": tokens_alone / alone_s,
            "speedup": (tokens_together / together_s) / (tokens_alone / alone_s)}


def _inputs(project: ProjectConfig, tasks: list[str]) -> list[dict[str, Any]]:
    examples = []
    for name in tasks:
        task = project.task(name)
        examples += mtlora.data.load_task_data(project, task, ("train",)).train[:SPEED_REQUESTS_PER_TASK]
    return examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tasks", nargs="*", help="only these tasks")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "seq2seq")
    args = parser.parse_args()
    project = project_for(args)
    sizes = QUICK_SIZES if args.quick else SIZES
    started = time.perf_counter()
    rows = []
    for task in [t for t in project.tasks if not args.tasks or t.name in args.tasks]:
        split = sizes[task.name][0]
        outcome = mtlora.train(project, task.name, fresh=True, progress=False)[0]
        report = mtlora.evaluate(project, task.name, split=split)[0]
        rows.append({"task": task.name, "kind": task.kind, "split": split, "examples": report.examples,
                     "examples_seen": outcome.steps * task.training.batch_size, "train_s": round(outcome.time_s, 1),
                     "trainable": outcome.trainable, "total": outcome.total,
                     "metrics": report.metrics, "samples": report.samples[:3]})
    generative = [t.name for t in project.tasks if t.kind in ("generation", "mcq_generation")
                  and (not args.tasks or t.name in args.tasks)]
    speed = generation_speed(project, generative) if len(generative) > 1 else None
    result = {"quick": args.quick, "backbone": "embedded all-MiniLM-L6-v2 warm-started as BERT2BERT",
              "machine": machine(),
              "wall_s": round(time.perf_counter() - started, 1), "tasks": rows, "generation_speed": speed}
    out = ROOT / "bench" / "results" / f"seq2seq{'_quick' if args.quick else ''}.json"
    if args.tasks and out.is_file():  # a rerun of some tasks: the other rows, and the speed unless measured, stay
        earlier = json.loads(out.read_text())
        rerun = {"tasks": args.tasks, "date": time.strftime("%Y-%m-%d %H:%M"), "machine": result["machine"],
                 "wall_s": result["wall_s"]}
        result = {**earlier, "tasks": merged_rows(out, rows, key=lambda row: row["task"], field="tasks"),
                  "generation_speed": speed or earlier["generation_speed"],
                  "reruns": [*earlier.get("reruns", []), rerun]}
    atomic.write_json(out, result)
    print(markdown(result))
    print(f"\nwrote {out}")


PRIMARY = {"instruction_classification": ("accuracy", "macro_f1"), "generation": ("rouge1", "rouge2", "rougeL"),
           "mcq_generation": ("valid_mcq_share", "question_rougeL"),
           "multitask": ("summarize/rougeL", "race_mcq/valid_mcq_share", "race_mcq/question_rougeL")}


def markdown(result: dict[str, Any]) -> str:
    lines = ["| task | kind | scored on | metric | prompt-only base | LoRA | trainable | train time |",
             "|---|---|---|---|---|---|---|---|"]
    for row in result["tasks"]:
        for metric in PRIMARY[row["kind"]]:
            base, lora = row["metrics"]["base"][metric], row["metrics"]["lora"][metric]
            lines.append(f"| {row['task']} | {row['kind']} | {row['split']} ({row['examples']}) | {metric} | "
                         f"{base:.3f} | {lora:.3f} | {100 * row['trainable'] / row['total']:.1f}% | "
                         f"{row['train_s']:.0f} s |")
    speed = result["generation_speed"]
    if speed:
        lines += ["", f"Generation, {speed['requests']} requests over {len(speed['adapters'])} adapters: "
                  f"{speed['one_call_tokens_per_s']:.1f} tokens/s in one engine call vs "
                  f"{speed['per_request_tokens_per_s']:.1f} one request at a time ({speed['speedup']:.2f}x)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
