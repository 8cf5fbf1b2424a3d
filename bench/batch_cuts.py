"""Where a call's rows are cut into passes: the device's pass cost against the CPU's, on the same stream.

`length_sorted_batches` cuts a call's rows where padding plus a pass's fixed cost is least, the fixed
cost given in padded tokens by `batching.pass_cost_tokens`: 128 on a CPU, 10,000 on CUDA, where a pass
costs the host milliseconds of Python and kernel launches and a padded token costs the device about a
microsecond. This bench runs the stream of `infer_speed.py` (512 mixed requests, 32 a call) through

    the engine with shared passes (the default) and with per-adapter passes, each cut at the device's
    pass cost and at the CPU's; the engine with a fold cache; the bare encoder at each pass cost

taking turns for five rounds (medians), and prints requests/s. On a CPU both costs are the same, so it
is meant for a GPU.

    python bench/batch_cuts.py --precision bf16       # writes bench/results/batch_cuts.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import infer_speed as bench
from machine import machine
from transformers import AutoModel

import mtlora
from mtlora import Engine
from mtlora.backbone import linear_weights_in_bf16, load_pretrained, quiet_loading, resolve_backbone
from mtlora.batching import PASS_COST_TOKENS, pass_cost_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MTLORA_DATA_DIR", bench.DEFAULT_DATA)))
    parser.add_argument("--precision", default="bf16", help="fp32, bf16 or auto")
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=bench.ROOT / "bench" / "results" / "batch_cuts.json")
    args = parser.parse_args()
    size = 32

    with tempfile.TemporaryDirectory() as folder:
        project = bench.build_project(Path(folder), args.data)
        mtlora.train(project, progress=False, log=lambda _: None)
        stream = bench.request_stream(project, args.requests)
        items, tasks = [item for item, _ in stream], [task for _, task in stream]

        def engine(pass_cost: int | None = None, **settings: Any) -> Engine:
            built = Engine.from_config(project, precision=args.precision, batch_size=size, **settings)
            if pass_cost is not None:
                built._encoders.pass_cost = pass_cost
            return built

        cpu_cut = f"cut at {PASS_COST_TOKENS}"
        engines = {"shared": engine(mixed_batches=True),
                   f"shared, {cpu_cut}": engine(PASS_COST_TOKENS, mixed_batches=True),
                   "per-adapter": engine(mixed_batches=False),
                   f"per-adapter, {cpu_cut}": engine(PASS_COST_TOKENS, mixed_batches=False),
                   "fold_cache=4": engine(fold_cache=4)}
        first = engines["shared"]
        device_cost = pass_cost_tokens(first.device)
        with quiet_loading():
            backbone = load_pretrained(AutoModel, resolve_backbone("embedded")).to(first.device).eval()
        if first.bf16:
            linear_weights_in_bf16(backbone)
        runs: dict[str, Callable[[], Any]] = {
            f"engine, {name}": lambda e=served: [e.predict_batch(items[i:i + size], task=tasks[i:i + size])
                                                 for i in range(0, len(items), size)]
            for name, served in engines.items()}
        for cost in dict.fromkeys((device_cost, PASS_COST_TOKENS)):
            runs[f"bare encoder, cut at {cost}"] = lambda cost=cost: bench.autocasting(
                first, lambda: bench.plain_backbone(backbone, first, stream, size, cost))
        seconds = bench.timed_in_turns(runs, args.rounds)

    limit = len(stream) / seconds[f"bare encoder, cut at {device_cost}"]
    results = {name: len(stream) / spent for name, spent in seconds.items()}
    print(f"\n{len(stream)} mixed requests, {size} a call, {'bf16' if first.bf16 else 'fp32'} on "
          f"{first.device.type}; pass cost {device_cost} tokens on this device")
    print(f"{'setup':<42} {'requests/s':>11} {'vs bare':>8}")
    for name, rate in results.items():
        print(f"{name:<42} {rate:>11.1f} {rate / limit:>7.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "batch_cuts", "date": time.strftime("%Y-%m-%d %H:%M"), "requests": len(stream),
        "batch_size": size, "rounds": args.rounds, "precision": "bf16" if first.bf16 else "fp32",
        "device_pass_cost": device_cost, "requests_per_s": results, "machine": machine(),
    }, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
