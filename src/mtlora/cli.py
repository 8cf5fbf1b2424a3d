"""The `mtlora` command line: one command per function of `mtlora.api`.

    mtlora train examples/demo/mtlora.yaml
    mtlora evaluate examples/demo/mtlora.yaml
    mtlora predict examples/demo/mtlora.yaml --task sentiment "a warm, funny film"
    mtlora adapters list examples/demo/mtlora.yaml
"""

from __future__ import annotations

import functools
import json
import os
import re
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mtlora import api, routing
from mtlora.config import ROUTER_ADAPTER
from mtlora.errors import AdapterNotFoundError, MtloraError, TrainingInterrupted
from mtlora.evaluation import RoutingReport, TaskReport
from mtlora.evaluation.evaluate import VARIANTS
from mtlora.evaluation.report import (
    ROUTING_COLUMNS,
    main_metric_name,
    main_metric_values,
    routing_cells,
    sample_cell,
    sample_rows,
)
from mtlora.registry import Registry, share_of
from mtlora.routing.learned import stored_router
from mtlora.server.settings import ADMIN_TOKEN_ENV, CONFIG_ENV, SETTINGS_ENV, ServerSettings
from mtlora.tasks import TaskKind, get_task_kind, task_kind_names

app = typer.Typer(
    help="Multi-task LoRA adapters on one shared backbone: train, evaluate, predict, manage adapters.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
adapters_app = typer.Typer(help="List, inspect and remove the adapters in a project's registry.",
                           no_args_is_help=True)
app.add_typer(adapters_app, name="adapters")

PIPED_WIDTH = 200  # columns of output into a file or a pipe


def _console(stderr: bool = False) -> Console:
    # Markup off: tables and messages carry users' texts, labels and task names, where "[/quote]" or
    # "[race_mcq]" is text, not a style tag. Into a file or a pipe rich would lay tables out for 80 columns,
    # cutting cells ("pair_class…"): there they get the width of a wide log line (COLUMNS still sets one).
    stream = sys.stderr if stderr else sys.stdout
    piped = stream is None or not stream.isatty()
    columns_given = os.environ.get("COLUMNS", "").strip().isdigit()
    return Console(stderr=stderr, markup=False, width=PIPED_WIDTH if piped and not columns_given else None)


console = _console()
errors = _console(stderr=True)

ConfigArg = Annotated[Path, typer.Argument(metavar="PROJECT.yaml",
                                           help="The project file (YAML) describing backbone, registry and tasks.")]
TaskOption = Annotated[str | None, typer.Option("--task", "-t", help="Only this task (default: every task).")]
TextArg = Annotated[str, typer.Argument(metavar="TEXT", help="The input text (the question, with --context).")]
PairArg = Annotated[str | None, typer.Argument(metavar="TEXT_PAIR", help="The second text of a pair task.")]
ContextOption = Annotated[str | None, typer.Option("--context", "-c", help="A context to find the answer to "
                                                                          "TEXT in (extractive QA).")]
F = TypeVar("F", bound=Callable[..., Any])

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def reports_errors(command: F) -> F:
    """Turn mtlora's own errors into one clear message and exit code 2, and Ctrl-C into exit code 130,
    instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except TrainingInterrupted as stopped:
            errors.print(Text(str(stopped), style="yellow"), highlight=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except KeyboardInterrupt:  # Ctrl-C outside training's own handler: evaluating, loading, a second Ctrl-C
            errors.print(Text("Interrupted.", style="yellow"), highlight=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except MtloraError as error:
            errors.print(Text.assemble(("error:", "bold red"), f" {error}"), highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except OSError as error:  # a path given that cannot be written or read: a file where a folder goes...
            if error.strerror is None or error.filename is None:
                raise  # not about a path: a bug to see whole
            errors.print(Text.assemble(("error:", "bold red"), f" {error.filename}: {error.strerror.lower()} "
                                       "(check the path and its permissions)"), highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_USER_ERROR) from None

    return wrapper  # type: ignore[return-value]


def say(message: str) -> None:
    console.print(message, highlight=False)


@app.command()
@reports_errors
def train(
    config: ConfigArg,
    task: TaskOption = None,
    fresh: Annotated[bool, typer.Option(
        help="Train every task again: ignore checkpoints of an interrupted run, and adapters already "
             "trained with the present settings and data.")] = False,
    baseline: Annotated[
        bool | None,
        typer.Option("--baseline/--no-baseline", help="Also train the head-only baseline (default: per task)."),
    ] = None,
) -> None:
    """Train one LoRA adapter per task and store it in the registry (resumes an interrupted run; keeps
    an adapter trained with the present settings and data)."""
    try:
        project = api.as_config(config)
        outcomes = api.train(project, task, fresh=fresh, baseline=baseline, progress=sys.stderr.isatty(), log=say)
    finally:
        leave_process_group()
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun / accelerate launch the first process reports for all
    table = Table(title="Trained")
    for column in ("task", "method", "steps", "time", "samples/s", "loss", "trainable params"):
        table.add_column(column, justify="left" if column in ("task", "method") else "right")
    for o in outcomes:
        time = "kept, up to date" if o.kept else f"{o.time_s:.1f}s"
        table.add_row(o.task, o.method, str(o.steps), time, f"{o.samples_per_s:.1f}", f"{o.train_loss:.4f}",
                      f"{o.trainable:,} ({share_of(o.trainable, o.total)})")
    console.print(table)
    say(f"Adapters saved in {project.registry}")


def leave_process_group() -> None:
    """Under torchrun / accelerate launch the Trainer opens a process group that lives as long as this
    command's process: close it before exit, which NCCL otherwise warns about on every rank. Training has
    let go of its DistributedDataParallel wrapper by then, which must not outlive the group
    (`training.trainer._drop_distributed_wrapper`)."""
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@app.command()
@reports_errors
def evaluate(
    config: ConfigArg,
    task: TaskOption = None,
    split: Annotated[str, typer.Option(help="train, validation or test.")] = "validation",
    router: Annotated[
        list[str] | None,
        typer.Option("--router", "-r", metavar="NAME",
                     help="Evaluate routing with this router instead (repeat; 'all': those that choose a "
                          f"task themselves, {', '.join(routing.choosing_routers())})."),
    ] = None,
) -> None:
    """Score each adapter against its head-only baseline and the untrained base; write reports.

    With --router: routing accuracy on a mix of every task's inputs of the split instead."""
    if router and task is not None:
        raise typer.BadParameter("routing is evaluated on a mix of every task's inputs; leave out --task "
                                 "with --router", param_hint="--task")
    project = api.as_config(config)
    if router:
        # 'all' adds the routers that choose a task themselves to any named beside it (explicit, say).
        names = list(dict.fromkeys(name for given in router
                                   for name in (routing.choosing_routers() if given == "all" else [given])))
        _print_routing(api.evaluate_routers(project, names, split=split, log=say))
        say(f"Reports written to {project.reports}/routing.md")
        return
    reports = api.evaluate(project, task, split=split, log=say)
    table = Table(title=f"Evaluation ({split})")
    for column in ("task", "metric", *VARIANTS.values(), "LoRA params", "saved params"):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    for r in reports:
        values = main_metric_values(r).values()
        lora = r.parameters["lora"]
        table.add_row(r.task, main_metric_name(r), *("–" if v is None else f"{v:.3f}" for v in values),
                      f"{lora['trainable']:,} ({share_of(lora['trainable'], lora['total'])})", f"{lora['stored']:,}")
    console.print(table)
    for r in reports:
        _print_samples(r)
    say(f"Reports written to {project.reports}/summary.md")


def _print_samples(report: TaskReport) -> None:
    if not report.samples:
        return
    header, rows = sample_rows(report)
    table = Table(title=f"{report.task}: sample outputs", show_lines=True)
    for column in header:
        table.add_column(column, overflow="fold")
    for row in rows[:3]:
        table.add_row(*(sample_cell(value, 160) for value in row))
    console.print(table)


def _print_routing(reports: list[RoutingReport]) -> None:
    table = Table(title="Routing")
    for column in ROUTING_COLUMNS:
        table.add_column(column, justify="left" if column in ("router", "reads") else "right")
    for report in reports:
        table.add_row(*routing_cells(report))
    console.print(table)


@app.command("train-router")
@reports_errors
def train_router(
    config: ConfigArg,
    fresh: Annotated[bool, typer.Option(
        help="Train the router again: ignore checkpoints of an interrupted run, and a router adapter already "
             "trained on the same inputs with the same settings.")] = False,
) -> None:
    """Train the learned router: one more adapter that classifies inputs by task, and a linear head over
    the backbone's token embeddings (router.features encoder or embeddings: only the one it reads)."""
    try:
        outcome = api.train_router(config, fresh=fresh, progress=sys.stderr.isatty(), log=say)
    finally:
        leave_process_group()
    if outcome.kept:
        say(f"Router adapter up to date, kept: {outcome.saved_to}")
        return
    steps = f" ({outcome.steps} steps)" if outcome.steps else ""
    say(f"Router trained in {outcome.time_s:.1f}s{steps}; saved to {outcome.saved_to}")


@app.command()
@reports_errors
def route(
    config: ConfigArg,
    text: TextArg,
    text_pair: PairArg = None,
    context: ContextOption = None,
    router: Annotated[str | None, typer.Option(
        "--router", "-r", help=f"{', '.join(routing.ROUTERS)} (default: the project's).")] = None,
) -> None:
    """Show where an input would go, and the scores the router gave its candidate tasks."""
    (decision,) = api.route(config, [_input(text, text_pair, context)], router)
    read = f", read: {decision.reading}" if decision.reading else ""
    say(f"-> {decision.task or 'unroutable'} (router: {decision.router}{read}, confidence {decision.confidence:.3f})")
    if decision.reason:
        say(f"   {decision.reason}")
    table = Table()
    table.add_column("task")
    # Scored by the router, or, where the input's shape fit one task only, by that ("shape").
    meaning = routing.ROUTERS[decision.router].score_meaning if decision.router in routing.ROUTERS else "score"
    table.add_column(meaning, justify="right")
    for name, score in sorted(decision.scores.items(), key=lambda item: -item[1]):
        table.add_row(name, f"{score:.0f}" if float(score).is_integer() else f"{score:.4f}")  # a count reads 2
    if decision.scores:
        console.print(table)


@app.command()
@reports_errors
def merge(
    config: ConfigArg,
    task: Annotated[str, typer.Argument(metavar="TASK", help="The adapter to export.")],
    output: Annotated[Path, typer.Argument(metavar="OUTPUT_DIR",
                                           help="Folder for the merged model (written atomically).")],
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier export in OUTPUT_DIR.")] = False,
) -> None:
    """Export one task as a plain transformers model with its LoRA merged in."""
    folder = api.merge(config, task, output, overwrite=overwrite)
    say(f"Merged model written to {folder}; load it with AutoModel*.from_pretrained('{folder}')")


@app.command()
@reports_errors
def predict(
    config: ConfigArg,
    text: TextArg,
    text_pair: PairArg = None,
    context: ContextOption = None,
    task: Annotated[str | None, typer.Option("--task", "-t", help="The adapter to answer with "
                                                                   "(default: route the input).")] = None,
    router: Annotated[str | None, typer.Option("--router", "-r", help="Router when no --task is given.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the prediction as JSON.")] = False,
) -> None:
    """Answer one input: with the adapter of --task, or the one a router picks."""
    prediction = api.predict(config, _input(text, text_pair, context), task=task, router=router)
    if as_json:
        print(json.dumps(prediction, ensure_ascii=False))
        return
    for key, value in prediction.items():
        say(f"{key:>16}: {_shown(value)}")


def _input(text: str, text_pair: str | None, context: str | None) -> api.Input:
    """One input as the engine takes it: a text, a pair, or a question with its context."""
    if context is None:
        return text if text_pair is None else (text, text_pair)
    if text_pair is not None:
        raise typer.BadParameter("give TEXT_PAIR (a pair task's second text) or --context (QA), not both",
                                 param_hint="--context")
    return {"question": text, "context": context}


_SERVER = ServerSettings.model_fields  # `serve`'s limits: their defaults and help are the server's own


def _server_option(name: str, **limits: Any) -> Any:
    description = _SERVER[name].description or ""
    return typer.Option(help=f"{description[:1].upper()}{description[1:]}.", **limits)


def _as_options(message: str, settings: type[BaseModel]) -> str:
    """A settings model's message with its field names written as the command's options (max_queue: --max-queue)."""
    return re.sub(r"\b(" + "|".join(settings.model_fields) + r")\b",
                  lambda name: "--" + name[0].replace("_", "-"), message)


@app.command()
@reports_errors
def serve(
    config: ConfigArg,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(help="Processes, each with its own engine.", min=1)] = 1,
    max_batch: Annotated[int, _server_option("max_batch", min=1)] = _SERVER["max_batch"].default,
    max_wait_ms: Annotated[float, _server_option("max_wait_ms", min=0)] = _SERVER["max_wait_ms"].default,
    max_queue: Annotated[int, _server_option("max_queue", min=1)] = _SERVER["max_queue"].default,
    max_inputs: Annotated[int, _server_option("max_inputs", min=1)] = _SERVER["max_inputs"].default,
    max_text_chars: Annotated[int, _server_option("max_text_chars", min=1)] = _SERVER["max_text_chars"].default,
    max_body_bytes: Annotated[int, _server_option("max_body_bytes", min=1)] = _SERVER["max_body_bytes"].default,
) -> None:
    """Serve every adapter over HTTP (docs at /docs, a try-it page at /); admin needs $MTLORA_ADMIN_TOKEN."""
    import uvicorn

    # What would fail in the server fails here, before it starts: a broken project file, no adapters,
    # a damaged adapter or one of another base, a default router that cannot run, settings that
    # contradict each other, a taken port.
    project = api.require_adapters(config)
    api.verify_adapters(project)
    api.require_router(project)
    try:
        settings = ServerSettings(max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                                  max_inputs=max_inputs, max_text_chars=max_text_chars, max_body_bytes=max_body_bytes)
    except ValidationError as exc:  # the options' own limits passed: a rule between them, or a value (inf) they let by
        error = exc.errors()[0]
        # A field's own error names its option; the rule between max_queue and max_inputs names --max-queue.
        option = _as_options(str(error["loc"][0]), ServerSettings) if error["loc"] else "--max-queue"
        raise typer.BadParameter(_as_options(error["msg"].removeprefix("Value error, "), ServerSettings),
                                 param_hint=option) from None
    if workers > 1 and os.environ.get(ADMIN_TOKEN_ENV):
        raise typer.BadParameter(f"each worker holds an engine of its own, so loading or unloading an adapter over "
                                 f"HTTP would change one of {workers}; serve one worker to manage adapters at run "
                                 f"time, or unset {ADMIN_TOKEN_ENV}", param_hint="--workers")
    _check_port_free(host, port)
    os.environ[CONFIG_ENV] = str(config)
    os.environ[SETTINGS_ENV] = settings.model_dump_json()
    # A worker answers the supervisor's health pings from a Python thread, which loading the engine can
    # starve of the GIL for more than uvicorn's 5 s: it then killed workers that were only starting.
    uvicorn.run("mtlora.server.app:create_app_from_env", factory=True, host=host, port=port, workers=workers,
                timeout_graceful_shutdown=30, timeout_worker_healthcheck=60)


def _check_port_free(host: str, port: int) -> None:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closing port is free
        try:
            probe.bind(address)
        except OSError as error:
            raise typer.BadParameter(f"cannot listen on {host}:{port} ({error.strerror}); pick another port",
                                     param_hint="--port") from None


@adapters_app.command("list")
@reports_errors
def adapters_list(config: ConfigArg) -> None:
    """The adapters stored in the project's registry, with their main metric."""
    project = api.as_config(config)
    (manifests, damaged), head = api.adapter_listing(project), api.router_head(project)
    if not manifests and not damaged and head is None:
        say(f"No adapters in {project.registry} yet; run `mtlora train {config}`.")
        return
    table = Table(title=f"Adapters in {project.registry}")
    for column in ("name", "kind", "labels", "trainable params", "saved params", "validation"):
        table.add_column(column)
    for m in manifests:
        # `evaluate` scores tasks; the router's score is its routing, which `evaluate --router` reports.
        metric = "see evaluate --router" if m.name == ROUTER_ADAPTER else \
            _main_metric(m.metrics.get("validation", {}), get_task_kind(m.kind))
        table.add_row(m.name, m.kind, ", ".join(m.labels or []) or "-",
                      f"{m.parameters.trainable:,} ({m.parameters.share})", f"{m.parameters.stored:,}", metric)
    for name in damaged:
        table.add_row(name, Text("damaged", style="red"), "-", "-", "-", "-")
    if head is not None:  # not an adapter, but stored in the registry and trained like the router adapter
        # Its own training's held-out share, not the routing of `evaluate --router`, which the column's name suggests.
        accuracy = "-" if head.validation_accuracy is None else \
            f"accuracy {head.validation_accuracy:.3f} on held-out router inputs"
        table.add_row("router (token embeddings)", "router head", ", ".join(head.labels), f"{head.parameters:,}",
                      f"{head.parameters:,}", accuracy)
    console.print(table)
    for reason in damaged.values():
        errors.print(Text.assemble(("damaged:", "bold red"), f" {reason}"), highlight=False, soft_wrap=True)


@adapters_app.command("show")
@reports_errors
def adapters_show(
    config: ConfigArg,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The adapter (task) name.")],
) -> None:
    """Everything the manifest of one adapter records (checksums verified first)."""
    manifest = api.show_adapter(config, name)
    print(json.dumps(manifest.model_dump(mode="json", exclude={"example_inputs"}), indent=2))


@adapters_app.command("remove")
@reports_errors
def adapters_remove(
    config: ConfigArg,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The adapter (task) name.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before deleting.")] = False,
) -> None:
    """Delete one adapter, and its head-only baseline, from the registry; `router` deletes every part of
    the learned router."""
    project = api.as_config(config)
    registry = Registry(project.registry)
    # What goes, told before any question; a damaged adapter, though, can be removed.
    if name == ROUTER_ADAPTER and (parts := stored_router(registry)):
        what = f"the learned router ({', '.join(str(part.relative_to(registry.root)) for part in parts)})"
    elif name in registry:
        what = f"adapter '{name}'"
    else:
        raise AdapterNotFoundError(str(registry.root), name, registry.names())
    if not yes:
        typer.confirm(f"Delete {what} from {registry.root}?", abort=True)
    api.remove_adapter(project, name)
    say(f"Removed {what} from {registry.root}")


@app.command()
def kinds() -> None:
    """The task kinds this installation knows, with the data fields each expects."""
    table = Table(title="Task kinds")
    for column in ("kind", "fields", "main metric", "description"):
        table.add_column(column, no_wrap=column == "kind")
    for name in task_kind_names():
        kind = get_task_kind(name)
        table.add_row(name, ", ".join(kind.roles), kind.metric_label(kind.primary_metric), kind.description)
    console.print(table)


def _shown(value: Any) -> str:
    if value is None:  # an unroutable input's task, say: "None" reads like a task's name
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict):  # empty: an unroutable input's scores, where no task could take it
        return ", ".join(f"{k} {_shown(v)}" for k, v in value.items()) or "-"
    return str(value)


def _main_metric(variants: dict[str, dict[str, float]], kind: type[TaskKind]) -> str:
    lora = variants.get("lora", {})
    if not lora:  # training keeps no score: `evaluate` makes it
        return "not evaluated yet"
    name = kind.primary_metric if kind.primary_metric in lora else next(iter(lora))
    return f"{kind.metric_label(name)} {lora[name]:.3f}"
