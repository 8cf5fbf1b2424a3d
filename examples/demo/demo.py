"""The main job: train the demo adapters, evaluate them against their baselines, route and predict.

Run with `make demo` (sets up .venv first) or `python examples/demo/demo.py`. Re-running resumes an
interrupted training and keeps the adapters an earlier run finished (training is seeded, so training them
again would give them again); delete examples/demo/adapters to train everything on this machine again.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import mtlora
from mtlora.evaluation.report import ROUTING_COLUMNS, main_metric_values, routing_cells
from mtlora.registry import share_of

CONFIG = Path(__file__).with_name("mtlora.yaml")
EXAMPLES = {
    "sentiment": ["The soundtrack alone made this film worth seeing twice.",
                  "The food was cold and the staff were rude."],
    "paraphrase": [("How do I reset my password?", "What are the steps to change a forgotten password?"),
                   ("How much is a train ticket to Rome?", "How much is a train ticket to Paris?")],
    "support": ["I paid for express delivery but the box still hasn't shipped",
                "the app logs me out every time I switch to the camera",
                "you billed my card twice for the same order"],
}

# Piped (make demo > log, CI), rich would lay the tables out in 80 columns and cut the routing table's cells.
console = Console(width=None if sys.stdout.isatty() else 120)


def main() -> None:
    started = time.perf_counter()
    console.rule("1. Train one LoRA adapter per task (and its head-only baseline)")
    mtlora.train(CONFIG, progress=sys.stderr.isatty(),
                 log=lambda message: console.print(message, markup=False, highlight=False))

    console.rule("2. Evaluate: untrained base vs head-only baseline vs LoRA")
    reports = mtlora.evaluate(CONFIG, log=lambda _: None)
    table = Table()
    for column in ("task", "metric", "untrained base", "head-only", "LoRA", "LoRA trainable params"):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    for report in reports:
        value = main_metric_values(report)
        params = report.parameters["lora"]
        table.add_row(report.task, report.primary_metric, _fmt(value["base"]), _fmt(value["head_only"]),
                      f"[bold]{_fmt(value['lora'])}[/bold]",
                      f"{params['trainable']:,} ({share_of(params['trainable'], params['total'])} of the model)")
    console.print(table)
    console.print(f"Full report: {mtlora.load_config(CONFIG).reports / 'summary.md'}")

    console.rule("3. Route: which adapter should answer? (learned router = one more adapter)")
    project = mtlora.load_config(CONFIG)
    # With router.features: cascade (the default) this trains both learned routers: the adapter, which
    # reads the encoder, and the head over the token embeddings, which costs no encoder pass.
    mtlora.train_router(project, progress=sys.stderr.isatty(),
                        log=lambda message: console.print(message, markup=False, highlight=False))
    routing = Table(title="Routing on the dev mix")
    for column in ROUTING_COLUMNS:
        routing.add_column(column, justify="left" if column in ("router", "reads") else "right")
    for features in ("cascade", "encoder", "embeddings"):
        routers = ["keywords", "semantic", "learned"] if features == "cascade" else ["semantic", "learned"]
        settings = project.with_router(features=features)
        for report in mtlora.evaluate_routers(settings, routers, write=features == "cascade", log=lambda _: None):
            routing.add_row(*routing_cells(report))
    console.print(routing)

    console.rule("4. Predict: one engine, every adapter, inputs of mixed tasks in one batch (learned router)")
    engine = mtlora.load_engine(CONFIG)
    inputs = [item for items in EXAMPLES.values() for item in items]
    for item, prediction in zip(inputs, engine.predict(inputs, router="learned"), strict=True):
        shown = " || ".join(item) if isinstance(item, tuple) else item
        if prediction["task"] is None:
            console.print(f"{shown}\n   -> [yellow]unroutable[/yellow]: {prediction['reason']}")
            continue
        console.print(f"{shown}\n   -> [cyan]{prediction['task']}[/cyan] (routed by {prediction['routed_by']}, "
                      f"{prediction['route_confidence']:.2f}): [bold]{prediction['label']}[/bold] "
                      f"({prediction['confidence']:.2f})")
    # The command beside this interpreter: `make demo` installs mtlora into .venv, which is not on PATH.
    beside = Path(sys.executable).with_name("mtlora")
    command = shlex.join([str(beside) if beside.exists() else "mtlora", "predict", str(CONFIG), "--router", "learned",
                          "my parcel is late"])
    console.print(f"\nDone in {time.perf_counter() - started:.0f}s. Adapters are in "
                  f"{mtlora.load_config(CONFIG).registry}; try `{command}`.")


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
