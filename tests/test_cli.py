"""The `mtlora` command: train, evaluate, predict and adapters on a tiny project, and its error messages."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

import mtlora
from mtlora import cli, load_config
from mtlora.cli import app
from mtlora.evaluation import RoutingReport
from mtlora.routing.token_head import TokenRouterHead
from mtlora.tasks import get_task_kind

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_an_interrupted_train_exits_130_and_the_next_one_resumes(tiny_project: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from test_training import stop_at_step

    from mtlora.training import callbacks

    with monkeypatch.context() as patch:
        patch.setattr(callbacks.StopOnSignal, "on_step_end", stop_at_step(2, None))  # as Ctrl-C does
        stopped = run("train", tiny_project, "--task", "sentiment", "--no-baseline")
    assert stopped.exit_code == 130, stopped.output
    resumed = run("train", tiny_project, "--task", "sentiment", "--no-baseline")
    assert resumed.exit_code == 0 and "Resuming from" in resumed.output, resumed.output


def test_train_again_keeps_what_is_up_to_date_and_fresh_trains_it_again(tiny_project: Path) -> None:
    """--fresh is the way out of a kept result (a changed library, say) and --no-baseline of a baseline's
    training time: each flag has to reach the training."""
    raw = yaml.safe_load(tiny_project.read_text())
    raw["defaults"]["training"]["max_steps"] = 2
    tiny_project.write_text(yaml.safe_dump(raw, sort_keys=False))
    first = run("train", tiny_project, "--task", "sentiment", "--no-baseline")
    assert first.exit_code == 0 and "kept, up to date" not in first.output, first.output
    assert "head_only" not in first.output
    again = run("train", tiny_project, "--task", "sentiment", "--no-baseline")
    assert again.exit_code == 0 and "kept, up to date" in again.output, again.output
    fresh = run("train", tiny_project, "--task", "sentiment", "--no-baseline", "--fresh")
    assert fresh.exit_code == 0 and "kept, up to date" not in fresh.output, fresh.output
    assert "is up to date" not in fresh.output

def test_the_routing_table_shows_the_share_routed_by_shape(tiny_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inputs that only one task takes go to it before any router runs, and count in its accuracy."""
    report = RoutingReport(router="keywords", features=None, split="validation", examples=8, accuracy=0.75,
                           unroutable=0.125, shape_share=0.25, per_task={"qa": 1.0}, labels=["qa", "(unroutable)"],
                           confusion=[[8, 0]], ms_per_input=0.5)
    monkeypatch.setattr(mtlora.api, "evaluate_routers", lambda *args, **kwargs: [report])
    monkeypatch.setattr(cli, "console", Console(width=200, markup=False))
    shown = run("evaluate", tiny_project, "--router", "keywords")
    assert shown.exit_code == 0, shown.output
    rows = [[cell.strip() for cell in line[1:-1].split(line[0])] for line in shown.output.splitlines()
            if line[:1] in ("┃", "│")]
    assert rows == [["router", "reads", "inputs", "accuracy", "unroutable", "by shape", "encoder pass", "ms / input"],
                    ["keywords", "", "8", "0.750", "0.125", "0.250", "", "0.50"]]


def test_the_evaluation_table_marks_metrics_that_run_to_100(tiny_project: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Beside accuracies, a ROUGE-L of 0.83 (near nothing) read as 83%: summary.md marked the scale, the
    console did not."""
    from mtlora.evaluation import TaskReport

    def report(task: str, kind: str, metric: str, value: float) -> TaskReport:
        return TaskReport(task=task, kind=kind, split="validation", examples=4, primary_metric=metric,
                          metrics={"lora": {metric: value}}, parameters={"lora": {"trainable": 1, "total": 10,
                                                                                  "stored": 1}})

    reports = [report("summarize", "generation", "rougeL", 0.833), report("sentiment", "classification",
                                                                         "accuracy", 0.787)]
    monkeypatch.setattr(mtlora.api, "evaluate", lambda *args, **kwargs: reports)
    shown = run("evaluate", tiny_project)
    assert shown.exit_code == 0, shown.output
    rows = [[cell.strip() for cell in line[1:-1].split(line[0])][:2] for line in shown.output.splitlines()
            if line[:1] == "│"]
    assert rows == [["summarize", "rougeL (0-100)"], ["sentiment", "accuracy"]]


def test_evaluate_router_all_asks_for_the_routers_that_choose_a_task(tiny_project: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """'all' evaluates what the API evaluates by default: not the explicit router, which in a mix of inputs
    naming no task could only answer "unroutable" (or the default task) for each; unless named beside it."""
    asked: list[object] = []
    monkeypatch.setattr(mtlora.api, "evaluate_routers", lambda config, routers, **kwargs: asked.append(routers) or [])
    for routers in (["all"], ["all", "explicit"], ["semantic", "all"]):
        shown = run("evaluate", tiny_project, *(option for name in routers for option in ("--router", name)))
        assert shown.exit_code == 0, shown.output
    assert asked == [["keywords", "semantic", "learned"], ["keywords", "semantic", "learned", "explicit"],
                     ["semantic", "keywords", "learned"]]
    assert "'all': those that choose a task themselves, keywords, semantic, learned" in " ".join(
        run("evaluate", "--help").output.split())


def test_ctrl_c_outside_training_exits_130_without_a_traceback(tiny_project: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mtlora.api, "evaluate", interrupted)
    stopped = runner.invoke(app, ["evaluate", str(tiny_project)])
    assert stopped.exit_code == 130 and "Interrupted." in stopped.output, stopped.output
    assert stopped.exception is None or isinstance(stopped.exception, SystemExit), stopped.exception


def test_an_empty_mapping_shows_as_a_dash_not_as_nothing() -> None:
    """An input no task could take has no scores: the line read 'scores: ' with nothing after it."""
    from mtlora.cli import _shown

    assert (_shown({}), _shown(None), _shown({"a": 0.5})) == ("-", "-", "a 0.5000")


def test_train_evaluate_predict_and_list(tiny_project: Path) -> None:
    trained = run("train", tiny_project, "--task", "sentiment")
    assert trained.exit_code == 0, trained.output
    assert "sentiment" in trained.output and "head_only" in trained.output

    evaluated = run("evaluate", tiny_project, "--task", "sentiment")
    assert evaluated.exit_code == 0, evaluated.output
    assert "accuracy" in evaluated.output and "summary.md" in evaluated.output
    assert (tiny_project.parent / "reports" / "summary.md").is_file()

    predicted = run("predict", tiny_project, "--task", "sentiment", "loved this great movie", "--json")
    assert predicted.exit_code == 0, predicted.output
    answer = json.loads(predicted.output)
    assert answer["task"] == "sentiment" and answer["label"] in ("negative", "positive")

    project = load_config(tiny_project)
    registry = mtlora.Registry(project.registry)
    texts, tasks = ["loved this great movie", "where is my refund"] * 2, ["sentiment", "support"] * 2
    TokenRouterHead.fit(project.backbone, texts, tasks, list(zip(texts, tasks, strict=True))).save(registry)
    listed = run("adapters", "list", tiny_project)
    assert listed.exit_code == 0 and "sentiment" in listed.output and "classification" in listed.output
    head_row = next(line for line in listed.output.splitlines() if "router (token embeddings)" in line)
    hidden = TokenRouterHead.load(registry, project.backbone).weight.shape[1]
    assert "sentiment, support" in head_row and f"{2 * (hidden + 1)}" in head_row and "accuracy 1.000" in head_row
    shown = run("adapters", "show", tiny_project, "sentiment")
    assert json.loads(shown.output)["labels"] == ["negative", "positive"]
    shutil.copytree(registry.path("sentiment"), registry.root / "broken")
    (registry.root / "broken" / "manifest.json").write_text("{")
    listed = run("adapters", "list", tiny_project)  # the listing that diagnoses a damaged adapter hides no other
    assert listed.exit_code == 0, listed.output
    assert "sentiment" in listed.output and re.search(r"broken\s+│ damaged", listed.output), listed.output
    assert "damaged: " in listed.output and "manifest.json" in listed.output
    shutil.rmtree(registry.root / "broken")

    kept = runner.invoke(app, ["adapters", "remove", str(tiny_project), "sentiment"], input="n\n")
    assert kept.exit_code == 1 and "sentiment" in registry  # asked, and told no
    removed = run("adapters", "remove", tiny_project, "sentiment", "--yes")
    assert removed.exit_code == 0 and "sentiment" not in registry and not registry.baseline_path("sentiment").exists()
    assert not (registry.root / ".staging").exists()
    again = run("adapters", "remove", tiny_project, "sentiment", "--yes")
    assert again.exit_code == 2 and "No adapter 'sentiment'" in again.output


def test_pair_input_on_the_command_line(tiny_project: Path) -> None:
    assert run("train", tiny_project, "--task", "similarity", "--no-baseline").exit_code == 0
    result = run("predict", tiny_project, "-t", "similarity", "the dog sat", "the dog sat")
    assert result.exit_code == 0, result.output
    assert "score:" in result.output


def test_errors_are_one_clear_line_and_exit_2(tiny_project: Path) -> None:
    unknown = run("train", tiny_project, "--task", "nope")
    assert unknown.exit_code == 2
    expected = "No task 'nope' in the project config. Available: paraphrase, qa, sentiment, similarity, support"
    assert expected in unknown.output
    assert "Traceback" not in unknown.output
    bracketed = run("train", tiny_project, "--task", "[/quote]")  # printed as text, not read as a style tag
    assert bracketed.exit_code == 2 and "No task '[/quote]' in the project config" in bracketed.output

    untrained = run("predict", tiny_project, "--task", "sentiment", "hello")
    assert untrained.exit_code == 2 and "No adapter 'sentiment'" in untrained.output

    split = run("evaluate", tiny_project, "--split", "tset")
    assert split.exit_code == 2 and "no split 'tset'; valid splits: train, validation, test" in split.output

    missing = run("evaluate", tiny_project.parent / "absent.yaml")
    assert missing.exit_code == 2 and "file not found" in missing.output

    for nothing_trained in (("predict", tiny_project, "hello"), ("route", tiny_project, "hello")):
        refused = run(*nothing_trained)
        assert refused.exit_code == 2 and "no adapters in" in refused.output and "mtlora train" in refused.output


def test_a_bad_validation_file_fails_before_training(tiny_project: Path) -> None:
    project = load_config(tiny_project)
    (project.data_dir / "bad.jsonl").write_text('{"text": "fine", "label": "neutral"}\n')
    text = tiny_project.read_text()
    tiny_project.write_text(text.replace("validation: sentiment.jsonl", "validation: bad.jsonl", 1))
    assert tiny_project.read_text() != text
    refused = run("train", tiny_project, "--task", "sentiment")
    assert refused.exit_code == 2 and "bad.jsonl:1: unknown label 'neutral'" in refused.output, refused.output
    assert "sentiment" not in mtlora.Registry(project.registry)

    (project.data_dir / "bad.jsonl").write_text("\n")  # declared, but empty: say so, not "set data.validation"
    empty = run("train", tiny_project, "--task", "sentiment")
    expected = f"{project.data_dir / 'bad.jsonl'}: no validation rows"
    assert empty.exit_code == 2 and expected in empty.output.replace("\n", ""), empty.output


@pytest.mark.parametrize("backbone", ["./no-such-model", "no-such-model-xyz"])
def test_a_wrong_backbone_is_one_clear_line(tiny_project: Path, backbone: str) -> None:
    config = tiny_project.read_text()
    wrong = tiny_project.with_name("wrong.yaml")
    wrong.write_text(config.replace(f"backbone: {load_config(tiny_project).backbone}", f"backbone: {backbone}"))
    assert f"backbone: {backbone}" in wrong.read_text()
    refused = run("train", wrong, "--task", "sentiment")
    assert refused.exit_code == 2 and f"backbone '{backbone}'" in refused.output, refused.output
    assert "Traceback" not in refused.output


def test_adapters_list_shows_each_kinds_primary_metric() -> None:
    from mtlora.cli import _main_metric

    squad = {"lora": {"exact_match": 1.0, "f1": 5.259}, "head_only": {"exact_match": 0.0, "f1": 8.5}}
    assert _main_metric(squad, get_task_kind("extractive_qa")) == "f1 (0-100) 5.259"  # QA stores exact_match first
    assert _main_metric({"lora": {"spearman": 0.5}}, get_task_kind("regression")) == "spearman 0.500"
    assert _main_metric({}, get_task_kind("classification")) == "not evaluated yet"


def test_help_and_kinds() -> None:
    assert "train" in run("--help").output
    kinds = run("kinds")
    assert kinds.exit_code == 0
    for name in ("classification", "pair_classification", "regression", "extractive_qa"):
        assert name in kinds.output


def test_route_predict_without_task_evaluate_routers_and_merge(trained_project: Path, tmp_path: Path) -> None:
    routed = run("route", trained_project, "where is my refund", "--router", "keywords")
    assert routed.exit_code == 0, routed.output
    assert "-> support (router: keywords, confidence" in routed.output and "support" in routed.output
    semantic = run("route", trained_project, "where is my refund", "--router", "semantic")
    assert semantic.exit_code == 0, semantic.output
    assert re.search(r"\(router: semantic, read: (embeddings|encoder), confidence", semantic.output)
    # The score column says what the router's scores are.
    assert "rules matched" in routed.output and "cosine similarity" in semantic.output, semantic.output
    assert re.search(r"│ support\s+│\s+[1-9] │", routed.output), routed.output  # a count, not 1.0000

    predicted = run("predict", trained_project, "where is my refund", "--router", "keywords", "--json")
    answer = json.loads(predicted.output)
    assert answer["task"] == "support" and answer["routed_by"] == "keywords" and "label" in answer

    # A question with --context goes to QA by its shape; as two texts it would be a pair, for the pair tasks too.
    context = "the cat sat on the mat"
    predicted = run("predict", trained_project, "who sat on the mat", "--context", context, "--json")
    answer = json.loads(predicted.output)
    assert answer["task"] == "qa" and answer["routed_by"] == "shape"
    assert answer["answer"] and answer["answer"] in context
    both = run("route", trained_project, "who sat", "on the mat", "--context", context)
    assert both.exit_code == 2 and "TEXT_PAIR (a pair task's second text) or --context (QA), not both" in both.output

    with_task = run("evaluate", trained_project, "--router", "keywords", "--task", "sentiment")
    assert with_task.exit_code == 2 and "leave out --task with --router" in with_task.output
    evaluated = run("evaluate", trained_project, "--router", "keywords", "--router", "semantic")
    assert evaluated.exit_code == 0, evaluated.output
    routing = json.loads((trained_project.parent / "reports" / "routing.json").read_text())
    assert [r["router"] for r in routing] == ["keywords", "semantic"]
    assert routing[0]["encoder_share"] is None and 0 <= routing[1]["encoder_share"] <= 1
    table = (trained_project.parent / "reports" / "routing.md").read_text()
    assert "| encoder pass |" in table and f"| {routing[1]['encoder_share']:.3f} |" in table
    best = max(r["accuracy"] for r in routing)  # bold marks the best router, not every one
    for r in routing:
        bold = f"**{r['accuracy']:.3f}**" in table.split(f"| {r['router']} |")[1].splitlines()[0]
        assert bold == (r["accuracy"] == best), table
    assert (trained_project.parent / "reports" / "routing_semantic_confusion.png").is_file()

    merged = run("merge", trained_project, "sentiment", tmp_path / "merged")
    assert merged.exit_code == 0, merged.output
    assert (tmp_path / "merged" / "config.json").is_file()
    again = run("merge", trained_project, "sentiment", tmp_path / "merged")
    assert again.exit_code == 2 and "already exists and is not empty" in again.output
    assert run("merge", trained_project, "sentiment", tmp_path / "merged", "--overwrite").exit_code == 0
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    refused = run("merge", trained_project, "sentiment", tmp_path / "notes", "--overwrite")
    assert refused.exit_code == 2 and "holds no saved model" in refused.output
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"
    under_a_file = run("merge", trained_project, "sentiment", tmp_path / "notes" / "todo.txt" / "merged")
    assert under_a_file.exit_code == 2, under_a_file.output  # a traceback of FileExistsError before
    assert f"error: {tmp_path / 'notes' / 'todo.txt'}: " in under_a_file.output
    assert "(check the path and its permissions)" in under_a_file.output

    both = run("predict", trained_project, "hello", "--task", "sentiment", "--router", "learned")
    assert both.exit_code == 2 and "task 'sentiment' and router 'learned' were both given" in both.output
    unknown = run("route", trained_project, "hello", "--router", "telepathy")
    assert unknown.exit_code == 2 and "No router 'telepathy'. Available: explicit, keywords, learned, semantic" \
        in unknown.output


def test_serve_says_at_once_that_its_port_is_taken(trained_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server started on a taken port"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = runner.invoke(app, ["serve", str(trained_project), "--port", str(port)])
    assert refused.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in refused.output, refused.output


def test_serve_refuses_what_would_fail_in_the_server(tiny_project: Path, trained_project: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server started"))
    untrained = run("serve", tiny_project)  # it would answer every input "unroutable" and call itself ready
    assert untrained.exit_code == 2 and "no adapters in" in untrained.output
    queue = run("serve", trained_project, "--max-queue", "10", "--max-inputs", "20")
    assert queue.exit_code == 2 and ("--max-queue (10) is below --max-inputs (20): a request of that many inputs "
                                     "could never be queued; raise --max-queue or lower --max-inputs") in queue.output
    monkeypatch.setenv("MTLORA_ADMIN_TOKEN", "s3cret")
    workers = run("serve", trained_project, "--workers", "2")
    assert workers.exit_code == 2 and "each worker holds an engine of its own" in workers.output
    learned = trained_project.with_name("learned.yaml")  # no router trained: every routed request would fail
    raw = yaml.safe_load(trained_project.read_text())
    learned.write_text(yaml.safe_dump({**raw, "router": {**raw["router"], "strategy": "learned"}}))
    no_router = run("serve", learned)
    assert no_router.exit_code == 2 and "router.strategy is 'learned', but no learned router" in no_router.output
    # A damaged adapter failed in the server's start-up: a uvicorn traceback and exit status 3.
    registry = tmp_path / "adapters"
    shutil.copytree(load_config(trained_project).registry, registry)
    with (registry / "support" / "adapter_model.safetensors").open("ab") as weights:
        weights.write(b"\0")
    damaged = trained_project.with_name("damaged.yaml")
    damaged.write_text(yaml.safe_dump({**raw, "registry": str(registry)}))
    refused = run("serve", damaged)
    assert refused.exit_code == 2 and "adapter 'support'" in refused.output and "does not match its checksum" in \
        refused.output, refused.output


def test_serve_refuses_an_endless_batching_wait_naming_its_flag(trained_project: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """--max-wait-ms inf passed the flag's x>=0, then the server crashed at start-up with a pydantic traceback
    (the settings travel to the worker as JSON, which writes inf as null); an endless wait would anyway hold
    every request until --max-batch inputs came."""
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server started"))
    endless = run("serve", trained_project, "--max-wait-ms", "inf")
    assert endless.exit_code == 2, endless.output
    assert re.search(r"Invalid value for '?--max-wait-ms'?: Input should be a finite number", endless.output), \
        endless.output


def test_serve_flags_reach_the_server_settings(trained_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every limit is a flag, and the flags' defaults are the server's own (one place decides them)."""
    import uvicorn

    from mtlora.server import ServerSettings

    started: list[ServerSettings] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append(
        ServerSettings.model_validate_json(os.environ["MTLORA_SERVER_SETTINGS"])))
    for variable in ("MTLORA_SERVER_SETTINGS", "MTLORA_CONFIG"):  # `serve` sets them; restored after the test
        monkeypatch.setenv(variable, "")
    with socket.socket() as probe:  # a port free now: `serve` checks its port before anything else
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    run("serve", trained_project, "--port", port)
    run("serve", trained_project, "--port", port, "--max-inputs", "3", "--max-text-chars", "100",
        "--max-body-bytes", "4096", "--max-batch", "8")
    assert started[0] == ServerSettings()
    refused = runner.invoke(app, ["serve", str(trained_project), "--max-inputs", "0"])
    assert refused.exit_code == 2 and "--max-inputs" in refused.output and len(started) == 2
    assert (started[1].max_inputs, started[1].max_text_chars, started[1].max_body_bytes,
            started[1].max_batch) == (3, 100, 4096, 8)


def test_each_command_reads_the_project_file_once(trained_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The project file is read and validated once, and that config is what the command passes on."""
    import uvicorn

    reads: list[Path] = []

    def counted(path, *args, **kwargs):
        reads.append(Path(path))
        return load_config(path, *args, **kwargs)

    monkeypatch.setattr(mtlora.api, "load_config", counted)
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    for variable in ("MTLORA_SERVER_SETTINGS", "MTLORA_CONFIG"):  # `serve` sets them; restored after the test
        monkeypatch.setenv(variable, "")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    for command in (["adapters", "list", trained_project], ["serve", trained_project, "--port", port]):
        reads.clear()
        result = runner.invoke(app, [str(a) for a in command])
        assert result.exit_code == 0, (command, result.output)
        assert reads == [trained_project], (command, reads)


@pytest.mark.parametrize(("columns", "width"), [(None, cli.PIPED_WIDTH), ("60", 60), ("", cli.PIPED_WIDTH)])
def test_output_into_a_pipe_is_not_cut_to_80_columns(columns: str | None, width: int) -> None:
    """Tables redirected to a file or piped on would otherwise cut their cells short ("pair_class…")."""
    import os
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = columns
    shown = subprocess.run([sys.executable, "-c", "from mtlora import cli; print(cli.console.width, cli.errors.width)"],
                           env=env, capture_output=True, text=True, check=True)
    assert shown.stdout.split() == [str(width)] * 2
