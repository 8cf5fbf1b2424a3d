"""Serving under load, on loopback: mtlora's server against a naive one-request-one-forward endpoint.

N concurrent clients (1, 8, 64) each send single requests, one after another, for a fixed time (in
three turns per server, the two servers alternating, both running throughout); the requests are a
shuffled mix of four tasks (SST-2, MRPC, STS-B, SQuAD) naming their task. Reported per
server and N: throughput, p50/p95/p99 latency, status codes, and (mtlora) the batch sizes reached and
p50 against one engine call on a full batch of the same mix, timed in this process beforehand.

The naive server is what the seed scripts do behind FastAPI: per request, `set_adapter` to the task's
LoRA and run the model on that one input with PEFT's LoRA layers (under a lock, since the active
adapter is shared state). `--fold-cache` sets mtlora's `inference.fold_cache`; the naive server folds nothing.

    python bench/serve_load.py            # writes bench/results/serve_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import yaml
from machine import machine

import mtlora
from mtlora.server import ServerSettings

sys.path.insert(0, str(Path(__file__).parent))
from infer_speed import DEFAULT_DATA, build_project, request_stream, timed

ROOT = Path(__file__).resolve().parent.parent


def create_naive_app() -> Any:
    """FastAPI endpoint that answers each request alone after switching the active adapter."""
    from fastapi import FastAPI

    from mtlora import Engine

    engine = Engine.from_config(os.environ["MTLORA_CONFIG"])
    # The seeds' forward: PEFT's own LoRA layers with the active adapter, nothing folded or cached.
    # Tokenising, the heads and decoding stay the engine's, so only the serving differs.
    engine._encoders._folded = lambda adapter: contextlib.nullcontext()  # type: ignore[method-assign]
    lock = threading.Lock()
    app = FastAPI()

    @app.post("/v1/predict")
    def predict(body: dict) -> dict:  # a plain def: FastAPI runs it in its thread pool
        item = body["inputs"]
        if isinstance(item, dict) and "text_pair" in item:
            item = (item["text"], item["text_pair"])
        with lock:
            engine._encoders.model.set_adapter(body["task"])
            return {"result": engine.run_adapter(body["task"], [item])[0]}

    return app


def start_server(factory: str, config: Path, port: int, settings: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "MTLORA_CONFIG": str(config), "MTLORA_SERVER_SETTINGS": json.dumps(settings or {}),
           "PYTHONPATH": str(Path(__file__).parent)}
    process = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", factory, "--port", str(port),
                                "--log-level", "warning"], env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.post(f"http://127.0.0.1:{port}/v1/predict",
                          json={"inputs": "warm up", "task": "sst2"}, timeout=30).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"{factory} did not start on port {port}")


def as_json_input(item: Any) -> Any:
    if isinstance(item, tuple):
        return {"text": item[0], "text_pair": item[1]}
    return item


@dataclass
class Load:
    """What the clients saw against one server at one client count, over all its rounds."""

    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self, clients: int) -> dict[str, Any]:
        cuts = statistics.quantiles(self.latencies, n=100) if len(self.latencies) > 1 else self.latencies * 99
        return {"clients": clients, "requests": len(self.latencies),
                "requests_per_s": len(self.latencies) / self.seconds,
                "p50_ms": 1000 * cuts[49], "p95_ms": 1000 * cuts[94], "p99_ms": 1000 * cuts[98],
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())}}


async def load(port: int, stream: list[tuple[Any, str]], clients: int, seconds: float, into: Load) -> None:
    """`clients` clients, each sending one request after another until `seconds` are up.

    aiohttp, not httpx: the clients share the server's cores, and httpx's client spent ~5 ms of CPU per
    request (a third of a core at 64 clients) against aiohttp's ~0.3 ms, which held both servers back."""
    stop = time.perf_counter() + seconds

    async def client(offset: int, http: aiohttp.ClientSession) -> None:
        i = offset
        while time.perf_counter() < stop:
            item, task = stream[i % len(stream)]
            i += clients
            started = time.perf_counter()
            async with http.post("/v1/predict", json={"inputs": as_json_input(item), "task": task}) as response:
                await response.read()
            into.latencies.append(time.perf_counter() - started)
            into.statuses[response.status] = into.statuses.get(response.status, 0) + 1

    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", connector=connector, timeout=timeout) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(k, http) for k in range(clients)))
        into.seconds += time.perf_counter() - started


def batch_sizes(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith(("mtlora_batch_size_sum", "mtlora_batch_size_count"))}
    count = values.get("mtlora_batch_size_count", 0.0)
    return {"engine_calls": count, "mean_batch": values.get("mtlora_batch_size_sum", 0.0) / count if count else 0.0}


def batch_forward_ms(project: Path, stream: list[tuple[Any, str]], size: int) -> float:
    """One engine call on `size` requests of the stream, as the server's engine runs it (same defaults)."""
    engine = mtlora.Engine.from_config(project)
    items, tasks = [item for item, _ in stream[:size]], [task for _, task in stream[:size]]
    return 1000 * timed(lambda: engine.predict_batch(items, task=tasks), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MTLORA_DATA_DIR", DEFAULT_DATA)))
    parser.add_argument("--clients", default="1,8,64")
    parser.add_argument("--seconds", type=float, default=15.0, help="per server and client count")
    parser.add_argument("--rounds", type=int, default=3, help="turns per server and client count")
    parser.add_argument("--max-batch", type=int, default=None, help="mtlora's max_batch (default: the server's)")
    parser.add_argument("--fold-cache", type=int, default=0, help="mtlora's inference.fold_cache")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve_load.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        project = build_project(Path(folder), args.data)
        if args.fold_cache:
            config = yaml.safe_load(project.read_text())
            config["inference"] = {"fold_cache": args.fold_cache}
            project.write_text(yaml.safe_dump(config, sort_keys=False))
        print("training 4 quick adapters...", flush=True)
        mtlora.train(project, progress=False, log=lambda _: None)
        stream = request_stream(project, 256)
        max_batch = args.max_batch or ServerSettings().max_batch
        forward_ms = batch_forward_ms(project, stream, max_batch)
        print(f"one engine call on {max_batch} requests: {forward_ms:.0f} ms", flush=True)
        results: dict[str, list[dict[str, Any]]] = {"mtlora": [], "naive": []}
        ports = {"mtlora": 8731, "naive": 8732}
        factories = {"mtlora": "mtlora.server.app:create_app_from_env", "naive": "serve_load:create_naive_app"}
        settings = {"mtlora": {"max_batch": args.max_batch} if args.max_batch else None, "naive": None}
        processes = [start_server(factories[name], project, ports[name], settings[name]) for name in ports]
        try:
            for clients in (int(c) for c in args.clients.split(",")):
                # The servers take turns, a short window each, so a slow spell of the shared machine
                # falls on both alike.
                loads = {name: Load() for name in ports}
                before = batch_sizes(ports["mtlora"])
                for _ in range(args.rounds):
                    for name, port in ports.items():
                        asyncio.run(load(port, stream, clients, args.seconds / args.rounds, loads[name]))
                calls = batch_sizes(ports["mtlora"])["engine_calls"] - before["engine_calls"]
                for name in ports:
                    row = loads[name].summary(clients)
                    if name == "mtlora":
                        row["mean_batch"] = row["requests"] / calls if calls else 0.0
                        row["p50_vs_batch_forward"] = row["p50_ms"] / forward_ms
                    results[name].append(row)
                    print(f"{name:>7} {clients:>3} clients: {row['requests_per_s']:7.1f} req/s, p50 "
                          f"{row['p50_ms']:7.1f} ms, p99 {row['p99_ms']:7.1f} ms, {row['statuses']}"
                          + (f", mean batch {row['mean_batch']:.1f}, p50 {row['p50_vs_batch_forward']:.1f}x "
                             "one batch call" if "mean_batch" in row else ""), flush=True)
                print(f"  mtlora / naive at {clients} clients: "
                      f"{results['mtlora'][-1]['requests_per_s'] / results['naive'][-1]['requests_per_s']:.2f}x",
                      flush=True)
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=60)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "serve_load", "date": time.strftime("%Y-%m-%d %H:%M"), "seconds_per_run": args.seconds,
        "rounds": args.rounds, "fold_cache": args.fold_cache,
        "batch_forward_ms": {"batch": max_batch, "ms": forward_ms},
        "tasks": ["sst2", "mrpc", "stsb", "squad"], "results": results,
        "machine": {**machine(), "note": "clients and server share the same cores"},
    }, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
