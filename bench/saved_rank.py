"""What saving at a lower rank costs a trained adapter: each rank scored on the same examples.

Loads an adapter from a registry, cuts every layer's update to each rank with mtlora's own
`truncate_rank` (what `lora.saved_rank` does at the end of training), and scores it on a split of the
project's data. Use it on adapters saved as trained (`saved_rank: null`, or trained before saved ranks),
such as those `bench/quality.py` and `bench/seq2seq.py` leave in their work folders:

    python bench/saved_rank.py examples/glue/local.yaml squad --registry runs/quality_full/adapters --ranks 4 2
    python bench/saved_rank.py examples/seq2seq/local.yaml dream_mcq --registry runs/seq2seq/adapters \\
        --split test --limit 200 --ranks 4

Rows are merged into bench/results/saved_rank.json by (task, rank); a table is printed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from common import merged_rows
from machine import machine

from mtlora.backbone import default_device, use_bf16
from mtlora.config import load_config
from mtlora.data import load_task_data
from mtlora.engine import predict_examples
from mtlora.modeling import adapter_tokenizer, load_adapter_model
from mtlora.registry import Registry
from mtlora.training.saved_rank import truncate_rank

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "saved_rank.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="the project file the adapter was trained with")
    parser.add_argument("task")
    parser.add_argument("--registry", type=Path, required=True, help="the registry holding the trained adapter")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--limit", type=int, help="score only the first N examples of the split")
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 2])
    args = parser.parse_args()
    project = load_config(args.config)
    task, registry = project.task(args.task), Registry(args.registry)
    examples = load_task_data(project, task, splits=(args.split,)).split(args.split)[: args.limit]
    tokenizer = adapter_tokenizer(registry, args.task, project.backbone)
    bf16 = use_bf16(project.inference.precision, default_device(), project.backbone)  # as `mtlora evaluate` scores
    rows: list[dict[str, Any]] = []
    for rank in [None, *args.ranks]:
        model, kind, manifest = load_adapter_model(registry, args.task, project.backbone)
        truncation = truncate_rank(model, rank)
        if rank is not None and truncation is None:
            print(f"rank {rank}: the adapter is saved at rank {manifest.lora['r']} or lower already; skipped")
            continue
        predictions = predict_examples(model.to(default_device()), kind, tokenizer, examples, manifest.max_length,
                                       manifest.doc_stride, task.training.eval_batch_size, bf16)
        rows.append({"task": args.task, "kind": kind.name, "split": args.split, "examples": len(examples),
                     "trained_rank": manifest.lora["r"], "rank": rank, "metric": kind.primary_metric,
                     "metrics": kind.metrics(predictions, examples),
                     "energy_kept": truncation.energy_kept if truncation else 1.0,
                     "lowest_layer_energy_kept": truncation.lowest_layer_energy_kept if truncation else 1.0})
        print(table(rows[-1:]), flush=True)
    merged = merged_rows(OUT, rows, key=lambda row: (row["task"], row["rank"]))
    OUT.write_text(json.dumps({"benchmark": "saved_rank", "date": time.strftime("%Y-%m-%d %H:%M"),
                               "machine": machine(), "rows": merged}, indent=2) + "\n")
    print(f"\n{table(merged)}\n\nwrote {OUT}")


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| task | split (examples) | trained rank | saved rank | score | energy kept (lowest layer) |",
             "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['task']} | {r['split']} ({r['examples']}) | {r['trained_rank']} | {r['rank'] or 'as trained'} | "
              f"{r['metric']} {r['metrics'][r['metric']]:.3f} | "
              f"{100 * r['energy_kept']:.1f}% ({100 * r['lowest_layer_energy_kept']:.1f}%) |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
