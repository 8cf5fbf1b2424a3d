"""Training speed: the same LoRA adapter on the same SST-2 sentences, trained four ways in one run.

    (a) plain PEFT + Trainer, every batch padded to 128 tokens, fp32 (what the seed scripts do)
    (b) the same with dynamic padding (pad each batch to its longest sentence)
    (c) mtlora (dynamic padding, length-grouped batches, bf16 autocast where the hardware has it)
    (d) mtlora forced to fp32, to show how much of (c) comes from length grouping alone

Each setup trains one epoch with identical LoRA and optimiser settings and the same seed, then scores
dev accuracy. Prints a table and writes bench/results/train_speed.json.

    python bench/train_speed.py                       # 5,000 training sentences (about 10 min on 2 cores)
    python bench/train_speed.py --train-size 20000    # a longer run, closer to SST-2's 67k
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from machine import machine
from peft import LoraConfig, TaskType, get_peft_model
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

import mtlora
from mtlora.backbone import resolve_backbone
from mtlora.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "sst2"
LORA = {"r": 16, "alpha": 32, "dropout": 0.1, "target_modules": "all-linear"}
TRAINING = {"epochs": 1, "lr": 1e-3, "batch_size": 32, "max_length": 128, "seed": 42, "weight_decay": 0.01,
            "warmup_ratio": 0.06}


def read_sst2(path: Path) -> list[tuple[str, int]]:
    # GLUE's SST-2 holds bare quote characters: csv must not treat them as quoting.
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(row["sentence"], int(row["label"])) for row in rows]


def plain_peft(train: list[tuple[str, int]], dev: list[tuple[str, int]], pad_to_max: bool,
               workdir: Path) -> dict[str, Any]:
    """A plain PEFT + Trainer script, written the way one usually is, without mtlora."""
    backbone = resolve_backbone("embedded")
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    padding = "max_length" if pad_to_max else False

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        return tokenizer(batch["text"], truncation=True, max_length=TRAINING["max_length"], padding=padding)

    def dataset(rows: list[tuple[str, int]]) -> Dataset:
        texts, labels = zip(*rows, strict=True)
        return Dataset.from_dict({"text": list(texts), "label": list(labels)}).map(
            tokenize, batched=True, remove_columns=["text"])

    torch.manual_seed(TRAINING["seed"])
    model = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=2)
    model = get_peft_model(model, LoraConfig(
        task_type=TaskType.SEQ_CLS, r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
        target_modules=LORA["target_modules"]))
    args = TrainingArguments(
        output_dir=str(workdir), num_train_epochs=TRAINING["epochs"], learning_rate=TRAINING["lr"],
        per_device_train_batch_size=TRAINING["batch_size"], per_device_eval_batch_size=64,
        weight_decay=TRAINING["weight_decay"], warmup_steps=TRAINING["warmup_ratio"], seed=TRAINING["seed"],
        save_strategy="no", report_to="none", disable_tqdm=True, logging_strategy="no",
        dataloader_pin_memory=False)
    trainer = Trainer(model=model, args=args, train_dataset=dataset(train),
                      data_collator=DataCollatorWithPadding(tokenizer))
    result = trainer.train()
    logits = trainer.predict(dataset(dev)).predictions
    accuracy = float((np.argmax(logits, axis=-1) == np.array([label for _, label in dev])).mean())
    return {"samples_per_s": result.metrics["train_samples_per_second"],
            "train_s": result.metrics["train_runtime"], "dev_accuracy": accuracy, "precision": "fp32"}


def with_mtlora(train: list[tuple[str, int]], dev: list[tuple[str, int]], precision: str,
                workdir: Path) -> dict[str, Any]:
    """The same task through mtlora's own config, training and prediction path."""
    data = workdir / "data"
    data.mkdir(parents=True)
    for name, rows in (("train", train), ("dev", dev)):
        with (data / f"{name}.jsonl").open("w", encoding="utf-8") as handle:
            handle.writelines(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows)
    project = parse_config({
        "registry": str(workdir / "adapters"), "data_dir": str(data),
        "tasks": [{"name": "sst2", "kind": "classification", "lora": LORA,
                   "training": {**TRAINING, "precision": precision, "baseline": False},
                   "data": {"train": "train.jsonl", "validation": "dev.jsonl", "labels": ["negative", "positive"]}}],
    })
    project = project.model_copy(update={"registry": workdir / "adapters", "data_dir": data})
    (outcome,) = mtlora.train(project, progress=False, log=lambda _: None)
    predictions = mtlora.load_predictor(project, "sst2").predict_batch([t for t, _ in dev])
    accuracy = float(np.mean([p["label_id"] == y for p, (_, y) in zip(predictions, dev, strict=True)]))
    used = "bf16" if mtlora.backbone.use_bf16(precision, mtlora.backbone.default_device(), project.backbone) else "fp32"
    return {"samples_per_s": outcome.samples_per_s, "train_s": outcome.time_s, "dev_accuracy": accuracy,
            "precision": used}


SETUPS = {
    "a": ("plain PEFT, padded to 128", lambda tr, dv, wd: plain_peft(tr, dv, True, wd)),
    "b": ("plain PEFT, dynamic padding", lambda tr, dv, wd: plain_peft(tr, dv, False, wd)),
    "c": ("mtlora", lambda tr, dv, wd: with_mtlora(tr, dv, "auto", wd)),
    "d": ("mtlora, fp32", lambda tr, dv, wd: with_mtlora(tr, dv, "fp32", wd)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("SST2_DIR", DEFAULT_DATA)),
                        help="folder holding GLUE SST-2 train.tsv and dev.tsv")
    parser.add_argument("--train-size", type=int, default=5000, help="seeded sample of training sentences")
    parser.add_argument("--setups", default="abcd", help="which setups to run, e.g. 'bc'")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "train_speed.json")
    args = parser.parse_args()

    train = read_sst2(args.data / "train.tsv")
    train = random.Random(0).sample(train, min(args.train_size, len(train)))
    dev = read_sst2(args.data / "dev.tsv")
    results: dict[str, dict[str, Any]] = {}
    for key in args.setups:
        name, run = SETUPS[key]
        print(f"({key}) {name}: training on {len(train)} sentences...", flush=True)
        with tempfile.TemporaryDirectory() as workdir:
            started = time.perf_counter()
            results[key] = {"setup": name, **run(train, dev, Path(workdir))}
            results[key]["wall_s"] = time.perf_counter() - started
        print(f"    {results[key]['samples_per_s']:.1f} samples/s, dev accuracy {results[key]['dev_accuracy']:.4f}")

    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "train_speed", "date": time.strftime("%Y-%m-%d %H:%M"), "train_size": len(train),
        "dev_size": len(dev), "lora": LORA, "training": TRAINING,
        "machine": machine(),
        "results": results,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


def print_table(results: dict[str, dict[str, Any]]) -> None:
    print(f"\n{'setup':<32} {'precision':>9} {'samples/s':>10} {'vs (a)':>7} {'vs (b)':>7} {'dev acc':>8}")
    for key, row in results.items():
        ratios = [f"{row['samples_per_s'] / results[ref]['samples_per_s']:.2f}x" if ref in results else "-"
                  for ref in ("a", "b")]
        print(f"({key}) {row['setup']:<28} {row['precision']:>9} {row['samples_per_s']:>10.1f} "
              f"{ratios[0]:>7} {ratios[1]:>7} {row['dev_accuracy']:>8.4f}")


if __name__ == "__main__":
    main()
