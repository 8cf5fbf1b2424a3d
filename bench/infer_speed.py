"""Inference speed: one backbone, four adapters of different kinds, a shuffled stream of mixed requests.

    (a) per-request `set_adapter`, batch size 1 (how the seed scripts serve several adapters)
    (b) PEFT `adapter_names` mixed batches, wired by hand (encoder pass + each task's head)
    (c) mtlora's Engine with its defaults: tokenise, encoder passes, heads, decode to answers. The
        rows of every adapter share each pass (`mixed_batches`, each row its own LoRA); c2: each adapter
        gets passes of its own with its LoRA folded in; c3: per-adapter passes with every adapter's
        folded weights kept between calls (`fold_cache`); c4 (CUDA only): the default with its passes
        launched eagerly (`cuda_graphs: false`)
    (d) the plain backbone with no adapters on the same batches (the limit); d2 (CUDA only): the same
        passes replayed from CUDA graphs, as the engine replays its own

Every setup gets the stream in arrival order, 32 requests at a time (batch 1 for (a)), and runs the
same token rows: the engine's tokenising, inside the timing, with a QA context longer than its window
split into several. (b), (c), (d) split each 32 into batches of similar length the same way. The setups take
turns for three rounds and each reports its median round.

Also measured: parameter memory with 10 adapters loaded against the bare backbone, and the cost of
routing the stream (semantic, learned; each with every `router.features`: the cascade, the encoder, the
token embeddings; 32 requests at a time, in the same turns) against answering it, with the share of
requests whose route read the encoder.
Adapters are trained for a few steps on the shared GLUE/SQuAD files (speed does not depend on how well
they are trained).

    python bench/infer_speed.py              # writes bench/results/infer_speed.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from machine import machine
from transformers import AutoModel

import mtlora
from mtlora import Engine
from mtlora.backbone import linear_weights_in_bf16, load_pretrained, quiet_loading, resolve_backbone
from mtlora.batching import feature_row, length_sorted_batches, pad_rows, pass_cost_tokens
from mtlora.config import ROUTER_ADAPTER
from mtlora.engine.encoder import GRAPH_TOLERANCE, GRAPH_TOLERANCE_BF16, NO_ADAPTER
from mtlora.engine.graphs import PassGraphs, cuda_graph_capture, pad_values

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data"
QUICK = {"max_steps": 4, "batch_size": 8, "baseline": False, "checkpoint_every": 1000}
# STS-B's files: tab-separated, no header, some rows with two extra source fields.
STS_LAYOUT = {"format": "tsv", "quoting": "none", "extra_fields": "ignore",
              "columns": ["genre", "file", "year", "id", "score", "sentence1", "sentence2"]}
TASKS = [
    {"name": "sst2", "kind": "classification",
     "data": {"train": {"path": "sst2/train.tsv", "quoting": "none", "limit": 200},
              "validation": {"path": "sst2/dev.tsv", "quoting": "none"},
              "fields": {"text": "sentence"}, "labels": ["negative", "positive"]}},
    {"name": "mrpc", "kind": "pair_classification",
     "data": {"train": {"path": "mrpc/msr_paraphrase_train.txt", "format": "tsv", "quoting": "none",
                        "encoding": "utf-8-sig", "limit": 200},
              "validation": {"path": "mrpc/msr_paraphrase_test.txt", "format": "tsv", "quoting": "none",
                             "encoding": "utf-8-sig"},
              "fields": {"text": "#1 String", "text_pair": "#2 String", "label": "Quality"},
              "labels": ["different", "same"]}},
    {"name": "stsb", "kind": "regression",
     "data": {"train": {"path": "stsb/sts-train.csv", "limit": 200, **STS_LAYOUT},
              "validation": {"path": "stsb/sts-dev.csv", **STS_LAYOUT},
              "fields": {"text": "sentence1", "text_pair": "sentence2", "label": "score"}}},
    {"name": "squad", "kind": "extractive_qa",
     "data": {"train": {"path": "squad/dev-v1.1.json", "articles": [0, 2]},
              "validation": {"path": "squad/dev-v1.1.json", "articles": [40, 48]}},
     "training": {"max_length": 256, "doc_stride": 64}},
]


def build_project(workdir: Path, data_dir: Path) -> Path:
    config = {"backbone": "embedded", "registry": "adapters", "data_dir": str(data_dir),
              "defaults": {"training": {**QUICK, "max_length": 128}},
              "router": {"training": {**QUICK, "max_steps": 20, "max_length": 64}, "examples_per_task": 200},
              "tasks": TASKS}
    path = workdir / "project.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def request_stream(project: Path, size: int) -> list[tuple[Any, str]]:
    from mtlora.evaluation import routing_mix

    config = mtlora.load_config(project)
    mix = routing_mix(config, "validation", per_task=size)
    # QA inputs go in as {question, context}, the way a client that knows its input sends them.
    stream = [({"question": item[0], "context": item[1]} if task == "squad" else item, task) for item, task in mix]
    return random.Random(0).sample(stream, min(size, len(stream)))


def finished(run: Callable[[], Any]) -> None:
    """`run`, returning once the GPU work it queued is done (setups that stop at tensors leave it queued)."""
    run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed_in_turns(runs: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median seconds of each run over `rounds` rounds in which the runs take turns, so that a slow spell
    of a shared machine falls on every setup alike instead of on whichever was running then."""
    for run in runs.values():
        finished(run)  # warm-up: first calls allocate (and fill a fold cache)
    spent: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(rounds):
        for key, run in runs.items():
            started = time.perf_counter()
            finished(run)
            spent[key].append(time.perf_counter() - started)
    return {key: statistics.median(times) for key, times in spent.items()}


def autocasting(engine: Engine, run: Callable[[], Any]) -> None:
    """`run` under the engine's precision, for the setups that call the model directly."""
    with torch.autocast(engine.device.type, dtype=torch.bfloat16, enabled=engine.bf16):
        run()


def timed(run: Callable[[], Any], repeats: int = 1) -> float:
    run()  # warm-up: first calls allocate
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - started) / repeats


def batches(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def feature_rows(engine: Engine, chunk: list[tuple[Any, str]]) -> list[tuple[dict[str, list], str]]:
    """The token rows the engine encodes for `chunk`, tokenised its way (a long QA context becomes several
    windows), each with its task: every setup then runs the same rows, whatever its serving."""
    by_task: dict[str, list] = defaultdict(list)
    for item, task in chunk:
        by_task[task].append(engine.request(item, task))
    rows = []
    for task, requests in by_task.items():
        encoded = engine._job(task, requests).encoded
        rows += [(feature_row(encoded.features, f), task) for f in range(len(encoded))]
    return rows


def length_batches(engine: Engine, chunk: list[tuple[Any, str]], size: int,
                   pass_cost: int | None = None) -> list[list[tuple[dict, str]]]:
    """A chunk's rows in batches of similar length, cut where the engine cuts (on its device, unless
    `pass_cost` is given), so (b) and (d) pad no more than (c) does."""
    rows = feature_rows(engine, chunk)
    lengths = [len(row["input_ids"]) for row, _ in rows]
    cost = pass_cost_tokens(engine.device) if pass_cost is None else pass_cost
    return [[rows[i] for i in batch] for batch in length_sorted_batches(lengths, size, cost)]


def run_heads(engine: Engine, inputs: dict[str, torch.Tensor], output: Any, tasks: list[str]) -> None:
    """Each task's head on its rows of an encoder output."""
    for task in set(tasks):
        rows = torch.tensor([i for i, t in enumerate(tasks) if t == task], device=engine.device)
        head = engine._encoders._adapters[task]
        head.stand_in.output = type(output)(**{k: v[rows] for k, v in output.items()})
        head.head(**{k: v[rows] for k, v in inputs.items()})


def per_request_set_adapter(engine: Engine, stream: list[tuple[Any, str]]) -> None:
    """(a): switch the encoder's active adapter per request and run it alone, then its head."""
    encoder = engine._encoders.model
    with torch.inference_mode():
        for request in stream:
            rows = feature_rows(engine, [request])
            inputs = pad_rows(engine.tokenizer, [row for row, _ in rows], engine.device)
            encoder.set_adapter(request[1])
            run_heads(engine, inputs, encoder(**inputs), [task for _, task in rows])


def hand_wired_mixed(engine: Engine, stream: list[tuple[Any, str]], batch_size: int) -> None:
    """(b): PEFT `adapter_names` on each batch of the stream, then each task's head on its rows."""
    with torch.inference_mode():
        for whole in batches(stream, batch_size):
            for batch in length_batches(engine, whole, batch_size):
                inputs = pad_rows(engine.tokenizer, [row for row, _ in batch], engine.device)
                tasks = [task for _, task in batch]
                run_heads(engine, inputs, engine._encoders.model(**inputs, adapter_names=tasks), tasks)


def plain_backbone(model: torch.nn.Module, engine: Engine, stream: list[tuple[Any, str]], batch_size: int,
                   pass_cost: int | None = None, graphs: PassGraphs | None = None) -> None:
    """(d): the same rows in the same batches through the bare backbone, no adapters, no heads; (d2): each
    pass replayed from the CUDA graphs the engine would make for the bare backbone (`graphs`)."""
    with torch.inference_mode():
        for whole in batches(stream, batch_size):
            for batch in length_batches(engine, whole, batch_size, pass_cost):
                inputs = pad_rows(engine.tokenizer, [row for row, _ in batch], engine.device)
                if graphs is None:
                    model(**inputs)
                else:
                    graphs.run(inputs, [NO_ADAPTER] * len(batch), eager=lambda inputs=inputs: model(**inputs))


def passes(engine: Engine) -> str:
    return "shared passes" if engine.mixed_batches else "per-adapter passes"


def parameter_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def memory_with_adapters(project: Path, count: int) -> dict[str, Any]:
    """Copies of the trained adapters under `count` names, all loaded in one engine, against the bare
    backbone held the same way: in fp32, and in bf16 (linear weights and adapters in bf16, embeddings
    and norms in fp32, as the engine holds them under bf16 autocast)."""
    config = mtlora.load_config(project)
    registry = mtlora.Registry(config.registry)
    sources = [t["name"] for t in TASKS]
    names = []
    for i in range(count):
        source, name = sources[i % len(sources)], f"copy{i}"
        shutil.copytree(registry.path(source), registry.path(name))
        registry.update(name, name=name)
        names.append(name)
    with quiet_loading():
        bare = load_pretrained(AutoModel, resolve_backbone(config.backbone))
    saved = json.loads((registry.path(names[0]) / "adapter_config.json").read_text())
    memory: dict[str, Any] = {"adapters": count, "lora": registry.manifest(names[0]).lora, "saved_rank": saved["r"]}
    for precision in ("fp32", "bf16"):
        engine = Engine(config.backbone, registry, names, precision=precision)
        if precision == "bf16":
            linear_weights_in_bf16(bare)
        backbone = parameter_bytes(bare)
        loaded = parameter_bytes(engine._encoders.model) + sum(parameter_bytes(a.head)
                                                               for a in engine._encoders._adapters.values())
        memory[precision] = {"backbone_mb": backbone / 2**20, "engine_mb": loaded / 2**20,
                             "overhead": loaded / backbone - 1}
    return memory


def cuda_graph_memory(serve: Callable[[bool], Engine]) -> dict[str, float]:
    """GPU memory (MB) an engine holds once it has served the stream (`serve(cuda_graphs)` builds one and
    serves it), with its passes as CUDA graphs and without: the graphs' static inputs, outputs and pool."""
    held = {}
    for graphs in (False, True):
        gc.collect()
        torch.cuda.empty_cache()
        allocated, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
        engine = serve(graphs)
        torch.cuda.synchronize()
        gc.collect()
        torch.cuda.empty_cache()  # what the engine does not hold goes back, but a graph's pool stays reserved
        key = "graphs" if graphs else "eager"
        held[key] = (torch.cuda.memory_allocated() - allocated) / 2**20
        held[f"{key}_reserved"] = (torch.cuda.memory_reserved() - reserved) / 2**20
        del engine
    return held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MTLORA_DATA_DIR", DEFAULT_DATA)))
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="fp32", help="fp32, bf16 or auto (all setups use the same)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per setup (the median counts)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "infer_speed.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        project = build_project(workdir, args.data)
        print("training 4 quick adapters and the learned router...", flush=True)
        mtlora.train(project, progress=False, log=lambda _: None)
        # The default features, cascade, train both learned routers: the adapter and the head over token embeddings.
        mtlora.train_router(project, progress=False, log=lambda _: None)
        stream = request_stream(project, args.requests)
        engine = Engine.from_config(project, precision=args.precision, batch_size=args.batch_size)
        engine.add(ROUTER_ADAPTER)
        with quiet_loading():
            backbone = load_pretrained(AutoModel, resolve_backbone("embedded")).to(engine.device).eval()
        if engine.bf16:  # the limit holds its linear weights as the engine does
            linear_weights_in_bf16(backbone)
        items = [item for item, _ in stream]
        tasks = [task for _, task in stream]
        # Requests arrive over time: the engine, like (b) and (d), gets them 32 at a time, in arrival order.
        size = args.batch_size
        other = Engine.from_config(project, precision=args.precision, batch_size=args.batch_size,
                                   mixed_batches=not engine.mixed_batches)
        kept = Engine.from_config(project, precision=args.precision, batch_size=args.batch_size,
                                  fold_cache=len(TASKS))
        setups: dict[str, Callable[[], Any]] = {
            "a": lambda: autocasting(engine, lambda: per_request_set_adapter(engine, stream)),
            "b": lambda: autocasting(engine, lambda: hand_wired_mixed(engine, stream, size)),
            **{key: lambda e=serving: [e.predict_batch(items[i:i + size], task=tasks[i:i + size])
                                       for i in range(0, len(items), size)]
               for key, serving in (("c", engine), ("c2", other), ("c3", kept))},
            "d": lambda: autocasting(engine, lambda: plain_backbone(backbone, engine, stream, size)),
        }
        if engine.device.type == "cuda":  # the engine replays its passes as CUDA graphs: each side of that, eager too
            eager = Engine.from_config(project, precision=args.precision, batch_size=args.batch_size, cuda_graphs=False)
            bare_graphs = PassGraphs(backbone, backbone.config, [], {}, size, pad_values(engine.tokenizer),
                                     cuda_graph_capture(),
                                     tolerance=GRAPH_TOLERANCE_BF16 if engine.bf16 else GRAPH_TOLERANCE)
            setups["c4"] = lambda: [eager.predict_batch(items[i:i + size], task=tasks[i:i + size])
                                    for i in range(0, len(items), size)]
            setups["d2"] = lambda: autocasting(engine, lambda: plain_backbone(backbone, engine, stream, size,
                                                                              graphs=bare_graphs))
        # Routed as the engine routes in a server: the same 32 requests a call answers, in the same turns.
        unrouted = [engine.request(item) for item in items]
        reading = {features: Engine.from_config(project, precision=args.precision, batch_size=args.batch_size,
                                                router_settings=mtlora.load_config(project).with_router(
                                                    features=features).router)
                   for features in ("cascade", "encoder", "embeddings")}
        routers = {f"{name} ({features})": (name, routing_engine) for name in ("semantic", "learned")
                   for features, routing_engine in reading.items()}
        routes = {f"route {key}": lambda name=name, e=routing_engine: [e.route(unrouted[i:i + size], name)
                                                                        for i in range(0, len(unrouted), size)]
                  for key, (name, routing_engine) in routers.items()}
        seconds = timed_in_turns({**setups, **routes}, args.rounds)
        routing = {name: seconds.pop(f"route {name}") for name in routers}
        encoder_share = {key: statistics.mean(route.reading == "encoder" for call in routes[f"route {key}"]()
                                              for route in call) for key in routers}
        graphs = engine._encoders._graphs
        captured = {"engine_graphs": len(graphs._graphs) if graphs is not None else 0,
                    "engine_graphs_on": engine._encoders.cuda_graphs}
        if engine.device.type == "cuda":
            def serve(graphs: bool) -> Engine:
                fresh = Engine.from_config(project, precision=args.precision, batch_size=size, cuda_graphs=graphs)
                for i in range(0, len(items), size):
                    fresh.predict_batch(items[i:i + size], task=tasks[i:i + size])
                return fresh
            captured["engine_mb"] = cuda_graph_memory(serve)
        memory = memory_with_adapters(project, 10)
        assert kept._encoders.fold_cache is not None
        memory["fold_cache_mb"] = sum(t.numel() * t.element_size() for adapter in kept.tasks
                                      for t in kept._encoders.fold_cache.folded(adapter).values()) / 2**20

    names = {"a": "per-request set_adapter, batch 1", "b": "PEFT adapter_names, by hand",
             "c": f"mtlora Engine, default ({passes(engine)})", "c2": f"mtlora Engine, {passes(other)}",
             "c3": f"mtlora Engine, fold_cache={len(TASKS)}",
             "c4": "mtlora Engine, default, cuda_graphs off",
             "d": "plain backbone (limit)", "d2": "plain backbone as CUDA graphs"}
    results = {k: {"setup": names[k], "requests_per_s": len(stream) / seconds[k]} for k in names if k in seconds}
    print(f"\n{len(stream)} mixed requests ({', '.join(sorted(set(tasks)))}), batch {args.batch_size}, "
          f"precision {'bf16' if engine.bf16 else 'fp32'}")
    print(f"{'setup':<50} {'requests/s':>11} {'vs (d)':>7} {'vs (a)':>7}")
    for key, row in results.items():
        rate = row["requests_per_s"]
        print(f"({key:<2}) {row['setup']:<44} {rate:>11.1f} {rate / results['d']['requests_per_s']:>6.2f}x "
              f"{rate / results['a']['requests_per_s']:>6.2f}x")
    for name, spent in routing.items():
        print(f"routing, {name}: {1000 * spent / len(stream):.2f} ms/request, "
              f"{100 * spent / seconds['c']:.0f}% of answering the same requests; "
              f"{100 * encoder_share[name]:.0f}% of requests routed on the encoder")
    for precision in ("fp32", "bf16"):
        held = memory[precision]
        print(f"memory, 10 adapters (r={memory['lora']['r']} saved at rank {memory['saved_rank']}, "
              f"{memory['lora']['target_modules']}), {precision}: "
              f"{held['engine_mb']:.1f} MB vs backbone {held['backbone_mb']:.1f} MB (+{100 * held['overhead']:.1f}%)")
    print(f"fold cache of (c3), {len(TASKS)} adapters: {memory['fold_cache_mb']:.1f} MB")
    if engine.device.type == "cuda":
        print(f"CUDA graphs of (c): {captured['engine_graphs']} captured, on: {captured['engine_graphs_on']}; "
              f"an engine that served the stream holds {captured['engine_mb']['graphs']:.1f} MB of GPU memory "
              f"({captured['engine_mb']['graphs_reserved']:.1f} MB reserved) with graphs, "
              f"{captured['engine_mb']['eager']:.1f} MB ({captured['engine_mb']['eager_reserved']:.1f} MB) without")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "infer_speed", "date": time.strftime("%Y-%m-%d %H:%M"), "requests": len(stream),
        "batch_size": args.batch_size, "rounds": args.rounds, "precision": "bf16" if engine.bf16 else "fp32",
        "tasks": sorted(set(tasks)), "results": results,
        "routing_s_per_request": {k: v / len(stream) for k, v in routing.items()},
        "routing_share_of_answering": {k: v / seconds["c"] for k, v in routing.items()},
        "routing_encoder_share": encoder_share,
        "memory": memory,
        "cuda_graphs": captured if engine.device.type == "cuda" else None,
        "machine": machine(),
    }, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
