"""Routers: each one sends held-out inputs of clearly distinct tasks to the right adapter."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

import mtlora
from mtlora import Engine, load_config, routing
from mtlora.backbone import load_tokenizer
from mtlora.config import RouterSettings
from mtlora.errors import BaseModelMismatchError, CorruptAdapterError, DataError, RegistryError
from mtlora.evaluation import RoutingReport, evaluate_routing, routing_mix, write_routing_reports
from mtlora.evaluation.routing import ROUTER_HEAD
from mtlora.registry import Registry
from mtlora.routing import ExplicitRouter, KeywordRouter, Request, Route, split_prefix, train_router
from mtlora.routing.base import BY_SHAPE
from mtlora.routing.semantic import SemanticRouter
from mtlora.routing.token_head import HEAD_C, TokenRouterHead, mean_token_embeddings, token_embedding_table

HELD_OUT = [("hated the boring film", "sentiment"), ("this movie was wonderful", "sentiment"),
            ("a great film", "sentiment"), ("refund the charge on my invoice", "support"),
            ("my login password", "support"), ("where is my order refund", "support")]


@pytest.fixture(scope="module")
def routed_project(trained_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the trained tiny project plus its learned routers, the adapter and the head over token
    embeddings (trained once for this module, both by one call: features cascade, the default). A copy:
    other modules rely on the shared one having none."""
    folder = tmp_path_factory.mktemp("routed") / "project"
    shutil.copytree(trained_project.parent, folder)
    train_router(load_config(folder / trained_project.name), progress=False, log=lambda _: None)
    return folder / trained_project.name


@pytest.mark.parametrize(("router", "features"), [("keywords", "encoder"), ("semantic", "encoder"),
                                                  ("learned", "encoder"), ("semantic", "embeddings"),
                                                  ("learned", "embeddings"), ("semantic", "cascade"),
                                                  ("learned", "cascade")])
def test_router_sends_held_out_inputs_to_their_task(routed_project: Path, router: str, features: str) -> None:
    project = load_config(routed_project, overrides={"router": {"features": features}})
    engine = Engine.from_config(project, precision="fp32")
    results = engine.predict([text for text, _ in HELD_OUT], router=router)
    assert [r["task"] for r in results] == [task for _, task in HELD_OUT], results
    assert all(r["routed_by"] == router and 0 < r["route_confidence"] <= 1 for r in results)


@pytest.mark.parametrize(("router", "features"), [("keywords", "encoder"), ("learned", "encoder"),
                                                  ("learned", "embeddings"), ("learned", "cascade")])
def test_a_text_of_an_unloaded_task_is_not_sent_to_the_only_text_task(routed_project: Path, router: str,
                                                                      features: str) -> None:
    """Without sentiment loaded, support is the only text task: a text still goes through the router, which
    finds sentiment's texts belong to no loaded task. A pair still goes to the only pair task by shape.
    (The semantic router judges too, but a tiny random model's embeddings put every text near support's.)"""
    project = load_config(routed_project, overrides={"router": {"features": features}})
    engine = Engine.from_config(project, tasks=["support", "paraphrase"], precision="fp32")
    results = engine.predict([text for text, _ in HELD_OUT], router=router)
    assert [r["task"] for r in results] == [task if task == "support" else None for _, task in HELD_OUT], results
    assert all(r["routed_by"] == router for r in results)
    assert engine.predict(HELD_OUT[0][0], router="semantic")["routed_by"] == "semantic"
    pair = engine.predict(("the dog sat", "a dog sat"), router=router)
    assert (pair["task"], pair["routed_by"]) == ("paraphrase", "shape")


def test_learned_router_is_an_adapter_in_the_registry(routed_project: Path) -> None:
    manifest = mtlora.show_adapter(routed_project, "router")
    assert manifest.kind == "classification"
    assert set(manifest.labels) == {"sentiment", "support", "paraphrase", "similarity", "qa"}
    engine = Engine.from_config(routed_project)
    assert "router" not in engine.tasks
    engine.predict("a great film", router="learned")  # loads the router adapter
    with pytest.raises(mtlora.InputError, match="the learned router's adapter, not a task"):
        engine.predict("a great film", task="router")


def test_training_the_router_again_keeps_its_adapter_and_fits_its_head_again(routed_project: Path,
                                                                             tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mtlora.cli import app

    folder = tmp_path / "project"
    shutil.copytree(routed_project.parent, folder)
    project = folder / routed_project.name
    registry = Registry(load_config(project).registry)
    adapter = {path: path.read_bytes() for path in registry.path("router").rglob("*") if path.is_file()}
    head = TokenRouterHead.folder(registry) / "router.json"
    head.unlink()  # the head is fit again whatever: it comes back
    again = CliRunner().invoke(app, ["train-router", str(project)])
    assert again.exit_code == 0, again.output
    assert "[router] lora is up to date" in again.output and "Router adapter up to date, kept" in again.output
    assert {path: path.read_bytes() for path in adapter} == adapter and head.is_file()
    changed = load_config(project, overrides={"router": {"training": {"lr": 1e-2}}})
    assert not train_router(changed, progress=False, log=lambda _: None).kept


def test_a_registry_holding_only_the_router_has_no_adapters_to_serve(routed_project: Path, tmp_path: Path) -> None:
    """The router's adapter is no task: an engine over it alone would answer every input "unroutable"."""
    from mtlora import api

    registry = tmp_path / "adapters"
    shutil.copytree(load_config(routed_project).registry / "router", registry / "router")
    project = load_config(routed_project, overrides={"registry": str(registry)})
    with pytest.raises(RegistryError, match=rf"^no adapters in {registry} yet: train them first"):
        api.load_engine(project)


def test_removing_the_router_removes_every_part_of_it(routed_project: Path, tmp_path: Path) -> None:
    """The adapter, its head over token embeddings and the inputs they trained on: a head left behind would
    still be listed, and would still route for `router.features: embeddings`."""
    from typer.testing import CliRunner

    from mtlora.cli import app

    folder = tmp_path / "project"
    shutil.copytree(routed_project.parent, folder)
    project = folder / routed_project.name
    registry = Registry(load_config(project).registry)
    parts = [registry.path("router"), TokenRouterHead.folder(registry), registry.root / ".router-data"]
    assert all(part.is_dir() for part in parts)
    interrupted = registry.run_path("router", "lora") / "checkpoint-2"  # as an interrupted retraining leaves it
    interrupted.mkdir(parents=True)
    parts.append(interrupted.parent.parent)
    asked = CliRunner().invoke(app, ["adapters", "remove", str(project), "router"], input="n\n")
    assert asked.exit_code == 1 and all(part.is_dir() for part in parts)
    assert "the learned router (router, .routers/embeddings, .router-data, .runs/router)" in asked.output
    removed = CliRunner().invoke(app, ["adapters", "remove", str(project), "router", "--yes"])
    assert removed.exit_code == 0, removed.output
    assert not any(part.exists() for part in parts)
    assert not (registry.root / ".routers").exists() and not (registry.root / ".runs").exists()
    assert "sentiment" in registry and TokenRouterHead.saved_info(registry) is None
    again = CliRunner().invoke(app, ["adapters", "remove", str(project), "router", "--yes"])
    assert again.exit_code == 2 and "No adapter 'router'" in again.output


def test_route_in_python_gives_one_route_for_one_input_as_predict_does(trained_project: Path) -> None:
    one = mtlora.route(trained_project, "where is my refund", router="keywords")
    assert isinstance(one, Route) and one.task == "support"
    listed = mtlora.route(trained_project, ["where is my refund", "a great film"], router="keywords")
    assert [route.task for route in listed] == ["support", "sentiment"]


def test_semantic_threshold_leaves_far_inputs_unroutable(trained_project: Path) -> None:
    project = load_config(trained_project, overrides={"router": {"min_similarity": 0.9999}})
    result = Engine.from_config(project, precision="fp32").predict("paris is a city on a river", router="semantic")
    assert result["task"] is None and "below the threshold" in result["reason"]
    assert set(result["scores"]) == {"sentiment", "support"}


def test_router_trains_with_a_registry_given_relative_to_the_working_folder(
        tiny_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = load_config(tiny_project)
    monkeypatch.chdir(tiny_project.parent)
    relative = project.model_copy(update={"registry": Path("adapters"), "tasks": project.tasks[:2]})
    quick = relative.router.model_copy(update={"training": relative.router.training.model_copy(update={"epochs": 1})})
    outcome = train_router(relative.model_copy(update={"router": quick}), progress=False, log=lambda _: None)
    assert outcome.saved_to is not None and outcome.saved_to.resolve().is_relative_to(tiny_project.parent / "adapters")


def test_the_router_head_is_reported_as_a_token_head_not_a_head_only_baseline(trained_project: Path,
                                                                              tmp_path: Path) -> None:
    folder = tmp_path / "project"
    shutil.copytree(trained_project.parent, folder)
    project = load_config(folder / trained_project.name, overrides={"router": {"features": "embeddings"}})
    outcome = train_router(project, progress=False, log=lambda _: None)
    assert (outcome.task, outcome.method, outcome.steps) == ("router", "token_head", 0)


@pytest.mark.parametrize("features", ["encoder", "embeddings", "cascade"])
def test_router_evaluation_skips_an_untrained_learned_router_and_says_why(trained_project: Path,
                                                                          features: str) -> None:
    project = load_config(trained_project, overrides={"router": {"features": features}})
    said: list[str] = []
    reports = mtlora.evaluate_routers(project, ["keywords", "learned"], write=False, log=said.append)
    assert [r.router for r in reports] == ["keywords"]
    skipped = [line for line in said if "skipping 'learned'" in line]
    assert len(skipped) == 1 and "mtlora train-router" in skipped[0]
    lacks = {"encoder": "its router adapter", "embeddings": "its head over token embeddings",
             "cascade": "its head over token embeddings and its router adapter"}
    assert f"(it lacks {lacks[features]})" in skipped[0]
    said.clear()
    with pytest.raises(RegistryError, match=r"no router to evaluate \(learned: "):  # and no report to write
        mtlora.evaluate_routers(project, ["learned"], write=False, log=said.append)
    assert not [line for line in said if "skipping" in line], said  # the error says why, once


def test_router_evaluation_leaves_out_by_default_a_router_that_only_follows_named_tasks(
        trained_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The explicit router answers an input naming no task with the default task or "unroutable": its row in
    a mix of unnamed inputs measured nothing. Its class says so (`chooses_task`), not its name."""
    reports = mtlora.evaluate_routers(trained_project, write=False, log=lambda _: None)
    assert [r.router for r in reports] == ["keywords", "semantic"]  # and learned, once trained
    assert routing.choosing_routers() == ["keywords", "semantic", "learned"]
    follower = type("Follower", (ExplicitRouter,), {"name": "follower"})
    monkeypatch.setitem(routing.ROUTERS, "follower", follower)
    assert routing.choosing_routers() == ["keywords", "semantic", "learned"]


def test_router_evaluation_needs_the_split_from_some_task(trained_project: Path) -> None:
    """The tiny project declares no test data: routing a mix of nothing is refused, not a scikit-learn error."""
    with pytest.raises(DataError, match=r"split 'test': no task of the project has inputs in it to route"):
        mtlora.evaluate_routers(trained_project, ["keywords"], split="test", write=False, log=lambda _: None)


def test_a_router_over_one_task_is_refused_before_anything_is_written(tiny_project: Path) -> None:
    project = load_config(tiny_project)
    alone = project.model_copy(update={"tasks": project.tasks[:1]})
    with pytest.raises(DataError, match=r"from 1 task\(s\) \(sentiment\), and a router chooses between tasks"):
        train_router(alone, progress=False, log=lambda _: None)
    assert not (project.registry / ".router-data").exists()


def test_router_evaluation_routes_among_the_projects_tasks_only(trained_project: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry may hold adapters the project does not list; a route to one of them has no column in
    the report (it crashed the quality bench when a registry held an extra text task)."""
    project = load_config(trained_project)
    two = project.model_copy(update={"tasks": [project.task("sentiment"), project.task("support")]})
    loaded: list[list[str]] = []
    original = Engine.from_config.__func__

    def recording(cls: type[Engine], *args: object, **kwargs: object) -> Engine:
        engine = original(cls, *args, **kwargs)
        loaded.append(engine.tasks)
        return engine

    monkeypatch.setattr(Engine, "from_config", classmethod(recording))
    semantic, keywords = mtlora.evaluate_routers(two, ["semantic", "keywords"], write=False, log=lambda _: None)
    assert loaded == [["sentiment", "support"]]
    assert semantic.labels == ["sentiment", "support", "(unroutable)"]
    assert (semantic.features, keywords.features) == ("cascade", None)  # what each router read
    assert semantic.encoder_share is not None and keywords.encoder_share is None
    versions = Registry(project.registry).versions()
    assert semantic.adapters == {name: versions[name] for name in ("sentiment", "support")}
    # A task the project lists but no adapter has yet (or no longer) is left out, and said so: it failed
    # the whole evaluation ("No adapter ..."), and a routing.md from before could not be brought up to date.
    three = two.model_copy(update={"tasks": [*two.tasks, project.task("sentiment").model_copy(update={"name": "new"})]})
    said: list[str] = []
    keywords, = mtlora.evaluate_routers(three, ["keywords"], write=False, log=said.append)
    assert keywords.labels == ["sentiment", "support", "(unroutable)"] and loaded[-1] == ["sentiment", "support"]
    assert any("not trained yet, so left out of the mix: new" in line for line in said), said


class SlowToBuild:
    """An engine whose router takes `setup` seconds to build on its first call, as the semantic and learned
    routers do (embedding their example bank, loading their adapter), and as long again on the first input
    it is unsure of, as a cascade builds its encoder banks; it routes a text to its first word."""

    def __init__(self, setup: float, tasks: tuple[str, ...] = ()) -> None:
        self.setup, self.tasks = setup, list(tasks)
        self.built: set[tuple[str, bool]] = set()

    def request(self, item: str) -> str:
        return item

    def router(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(unmeasured=lambda: None)

    def route(self, requests: list[str], router: str) -> list[Route]:
        for part in {(router, False), *((router, True) for text in requests if "unsure" in text)} - self.built:
            time.sleep(self.setup)
            self.built.add(part)
        return [Route(text.split()[0], router, 1.0) for text in requests]


def test_routing_time_per_input_leaves_out_the_routers_setup() -> None:
    mix = [("sentiment a great film", "sentiment"), ("support my refund", "support"),
           ("sentiment an unsure film", "sentiment"), ("support my order", "support")]
    report, = evaluate_routing(SlowToBuild(setup=0.4), mix, ["keywords"], "validation", log=lambda _: None)
    assert report.accuracy == 1.0
    assert report.ms_per_input < 20  # with either 0.4 s setup timed, 100 ms per input


class ByShape(SlowToBuild):
    """An engine that answers a pair by its shape, to the one pair task, or to none when no task takes it."""

    def route(self, requests: list[str], router: str) -> list[Route]:
        return [Route("paraphrase" if "pair" in text else None, BY_SHAPE, 1.0) for text in requests]


def test_only_routes_made_to_a_task_count_as_routed_by_shape() -> None:
    mix = [("a pair of texts", "paraphrase"), ("no task takes this shape", "qa")]
    report, = evaluate_routing(ByShape(setup=0), mix, ["keywords"], "validation", log=lambda _: None)
    assert (report.shape_share, report.unroutable) == (0.5, 0.5)


class TakesItsTime(SlowToBuild):
    """An engine whose every routing call takes `setup` seconds, set up or not."""

    def route(self, requests: list[str], router: str) -> list[Route]:
        time.sleep(self.setup)
        return [Route(text.split()[0], router, 1.0) for text in requests]


def test_routing_time_is_in_milliseconds_per_input() -> None:
    mix = [("sentiment a great film", "sentiment"), ("support my refund", "support")] * 2
    report, = evaluate_routing(TakesItsTime(setup=0.1), mix, ["keywords"], "validation", log=lambda _: None)
    assert 25 <= report.ms_per_input < 100  # 100 ms over 4 inputs


def test_a_qa_input_comes_into_the_routing_mix_as_its_question_then_its_context(tiny_project: Path) -> None:
    """A router reads an input's first text (the question of a QA input, as `Engine.request` takes a pair)."""
    project = load_config(tiny_project)
    qa = project.model_copy(update={"tasks": [project.task("qa")]})
    mix = routing_mix(qa, log=lambda _: None)
    from conftest import QA

    assert sorted(item for item, _ in mix) == sorted((question, context) for question, context, _ in QA * 2)


def test_a_route_to_a_loaded_task_with_no_inputs_in_the_mix_counts_as_a_miss(tmp_path: Path) -> None:
    """A task whose split is empty is left out of the mix but still loaded: a route to it failed the whole
    evaluation ("ValueError: 'news' is not in list")."""
    mix = [("sentiment great film", "sentiment"), ("support my refund", "support"), ("news stocks fell", "sentiment")]
    engine = SlowToBuild(setup=0, tasks=("news", "sentiment", "support"))
    report, = evaluate_routing(engine, mix, ["keywords"], "validation", log=lambda _: None)
    assert report.accuracy == 2 / 3 and report.per_task == {"sentiment": 0.5, "support": 1.0}
    assert report.labels == ["sentiment", "support", "news", "(unroutable)"]
    assert report.confusion == [[1, 0, 1, 0], [0, 1, 0, 0]]
    write_routing_reports([report], tmp_path)
    assert "| sentiment | support |" in (tmp_path / "routing.md").read_text()


def test_routing_reports_the_share_of_inputs_routed_by_their_shape(trained_project: Path, tmp_path: Path) -> None:
    """With qa the only task that takes two texts, its inputs go to it by shape before any router runs, and
    count in every router's accuracy: the report says how many."""
    project = load_config(trained_project)
    three = project.model_copy(update={"tasks": [project.task(t) for t in ("sentiment", "support", "qa")]})
    mix = routing_mix(three, log=lambda _: None)
    by_shape = sum(task == "qa" for _, task in mix) / len(mix)
    keywords, = mtlora.evaluate_routers(three, ["keywords"], write=False, log=lambda _: None)
    assert 0 < keywords.shape_share == by_shape and keywords.per_task["qa"] == 1.0
    write_routing_reports([keywords], tmp_path)
    assert json.loads((tmp_path / "routing.json").read_text())[0]["shape_share"] == by_shape
    table = (tmp_path / "routing.md").read_text()
    assert "| accuracy | unroutable | by shape | encoder pass |" in table
    assert f"| {keywords.unroutable:.3f} | {by_shape:.3f} |  | {keywords.ms_per_input:.2f} |" in table
    assert "accuracy and the per-task columns include them" in table


@pytest.mark.parametrize(("split", "described"), [("train", "A mix of every task's inputs (train)"),
                                                   ("test", "A held-out mix of every task's inputs (test)")])
def test_routing_md_calls_only_a_mix_of_unseen_inputs_held_out(tmp_path: Path, split: str, described: str) -> None:
    report = RoutingReport(router="keywords", features=None, split=split, examples=2, accuracy=1.0, unroutable=0.0,
                           shape_share=0.0, per_task={"sentiment": 1.0}, labels=["sentiment", "(unroutable)"],
                           confusion=[[2, 0]], ms_per_input=0.1)
    write_routing_reports([report], tmp_path)
    assert (tmp_path / "routing.md").read_text().splitlines()[2].startswith(described + ", pairs and QA")


def test_token_embedding_features_are_the_same_with_any_adapter_loaded(trained_project: Path,
                                                                       tiny_bert: Path) -> None:
    texts = ["a great film", "my login password"]
    with_adapters = Engine.from_config(trained_project, precision="fp32").embed(texts, "embeddings")
    without = Engine.from_config(trained_project, tasks=[], precision="fp32").embed(texts, "embeddings")
    assert torch.equal(with_adapters, without)
    table = token_embedding_table(str(tiny_bert))
    ids = load_tokenizer(str(tiny_bert))(texts[0], add_special_tokens=False)["input_ids"]
    expected = torch.nn.functional.normalize(table[ids].mean(dim=0), dim=0)
    assert torch.allclose(with_adapters[0], expected, atol=1e-6)
    with pytest.raises(mtlora.InputError, match="encoder, embeddings"):
        Engine.from_config(trained_project, tasks=[]).embed(texts, "tokens")


@pytest.mark.parametrize("labels", [["sentiment", "support"], ["sentiment", "support", "qa"]])
def test_token_router_head_gives_scikit_learns_probabilities(tiny_bert: Path, labels: list[str]) -> None:
    from sklearn.linear_model import LogisticRegression

    examples = {"sentiment": ["great film", "awful boring movie", "loved it"],
                "support": ["refund my order", "login password", "invoice charge"],
                "qa": ["what is the capital", "who sat on the mat", "where did the dog sit"]}
    texts = [text for label in labels for text in examples[label]]
    truth = [label for label in labels for _ in examples[label]]
    head = TokenRouterHead.fit(str(tiny_bert), texts, truth, validation=list(zip(texts, truth, strict=True)))
    features = mean_token_embeddings(load_tokenizer(str(tiny_bert)), token_embedding_table(str(tiny_bert)), texts)
    reference = LogisticRegression(C=HEAD_C, max_iter=2000).fit(features.numpy(), [labels.index(t) for t in truth])
    assert head.info.labels == sorted(labels)
    order = [labels.index(name) for name in head.info.labels]
    expected = torch.tensor(reference.predict_proba(features.numpy())[:, order], dtype=torch.float32)
    assert torch.allclose(head.probabilities(features), expected, atol=1e-5)
    assert head.info.validation_accuracy == 1.0


def test_token_router_head_round_trip_and_refusals(tmp_path: Path, tiny_bert: Path, other_tiny_bert: Path) -> None:
    texts, labels = ["great film", "awful movie", "refund my order", "login password"], ["a", "a", "b", "b"]
    head = TokenRouterHead.fit(str(tiny_bert), texts, labels)
    registry = Registry(tmp_path / "adapters")
    with pytest.raises(RegistryError, match="mtlora train-router"):
        TokenRouterHead.load(registry, str(tiny_bert))
    head.save(registry)
    loaded = TokenRouterHead.load(registry, str(tiny_bert))
    features = torch.nn.functional.normalize(torch.randn(3, head.weight.shape[1]), dim=1)
    assert torch.equal(loaded.probabilities(features), head.probabilities(features))
    assert loaded.info == head.info
    with pytest.raises(BaseModelMismatchError, match="retrain it on this one"):
        TokenRouterHead.load(registry, str(other_tiny_bert))
    info_file = TokenRouterHead.folder(registry) / "router.json"
    info_file.write_text(info_file.read_text().replace('"b"', '"b", "c"'))  # a task the weights do not score
    with pytest.raises(CorruptAdapterError, match="names 3"):
        TokenRouterHead.load(registry, str(tiny_bert))
    (TokenRouterHead.folder(registry) / "head.safetensors").write_bytes(b"damaged")
    with pytest.raises(CorruptAdapterError, match="checksum"):
        TokenRouterHead.load(registry, str(tiny_bert))
    with pytest.raises(DataError, match="add a task"):
        TokenRouterHead.fit(str(tiny_bert), texts, ["a"] * len(texts))


def test_calibrated_threshold_lets_most_of_a_tasks_own_inputs_through() -> None:
    generator = torch.Generator().manual_seed(0)

    def near(direction: int, count: int) -> torch.Tensor:
        points = torch.nn.functional.one_hot(torch.tensor([direction] * count), 16).float()
        return torch.nn.functional.normalize(points + 0.1 * torch.randn(count, 16, generator=generator), dim=-1)

    router = SemanticRouter(None, RouterSettings())  # type: ignore[arg-type]  # calibration reads only the bank
    bank, new_inputs = near(0, 200), near(0, 1000)
    threshold = router._calibrate(bank)
    scores = torch.tensor(router._scores(new_inputs, bank))  # a new input is scored as routing scores it
    assert 0.95 <= float((scores >= threshold).float().mean()) <= 0.999  # about CALIBRATED_SHARE
    far = torch.topk(near(1, 50) @ bank.T, 3, dim=1).values.mean(dim=1)
    assert bool((far < threshold).all())
    assert router._calibrate(bank[:20]) == -1.0  # too few examples to calibrate: any best match routes


def test_semantic_scores_of_a_call_are_each_inputs_own() -> None:
    """A call's inputs are scored against a bank together; each gets the mean of its own nearest examples."""
    generator = torch.Generator().manual_seed(1)
    inputs, bank = torch.randn(5, 8, generator=generator), torch.randn(7, 8, generator=generator)
    alone = [float(torch.topk(bank @ row, 3).values.mean()) for row in inputs]
    assert SemanticRouter._scores(inputs, bank) == pytest.approx(alone, abs=1e-6)
    assert SemanticRouter._scores(inputs, bank[:2]) == pytest.approx(  # fewer examples than TOP_K: all of them
        [float((bank[:2] @ row).mean()) for row in inputs], abs=1e-6)


def test_semantic_route_scores_each_request_on_its_own_candidates() -> None:
    """Scored a task at a time for the whole call, each request still gets scores for its own candidates
    only, and a task without examples gets none."""
    inputs = torch.eye(3)
    banks = {"a": torch.tensor([[1.0, 0, 0]]), "b": torch.tensor([[0, 1.0, 0], [0.6, 0.8, 0]]), "c": torch.empty(0)}
    engine = SimpleNamespace(embed=lambda texts, reading: inputs[: len(texts)])
    router = SemanticRouter(engine, RouterSettings(min_similarity=0.5, features="embeddings"))  # type: ignore[arg-type]
    router.bank = lambda task, reading: banks[task]  # type: ignore[method-assign]
    first, second, third = router.route([Request("x"), Request("y"), Request("z")], [["a", "b"], ["b", "c"], ["c"]])
    assert first.task == "a" and first.scores == pytest.approx({"a": 1.0, "b": 0.3})  # b: mean of its 2 examples
    assert second.task == "b" and second.scores == pytest.approx({"b": 0.9})
    assert third.task is None and third.scores == {}


def test_keyword_priority_breaks_ties() -> None:
    hints = {"a": {"keywords": ["order"]}, "b": {"keywords": ["order"], "priority": 2}}
    (route,) = KeywordRouter(hints).route([Request("my order")], [["a", "b"]])
    assert route.task == "b"
    (route,) = KeywordRouter(hints).route([Request("my order")], [["a"]])
    assert route.task == "a"
    # ... and does nothing else: it neither outweighs a match nor refuses one.
    hints = {"a": {"keywords": ["order", "refund"]}, "b": {"keywords": ["order"], "priority": 2000},
             "c": {"keywords": ["film"], "priority": -1}}
    routes = KeywordRouter(hints).route([Request("my order refund"), Request("a film")], [["a", "b", "c"]] * 2)
    assert [r.task for r in routes] == ["a", "c"]


def test_keywords_match_whole_words_that_begin_or_end_with_a_symbol() -> None:
    router = KeywordRouter({"other": {"keywords": ["build"]}, "code": {"keywords": ["c++", "#bug"]}})
    texts = ["my c++ code", "a #bug here", "c++", "abc++ x", "#bugs"]
    routes = router.route([Request(t) for t in texts], [["other", "code"]] * len(texts))
    assert [r.scores for r in routes] == [{"code": 1.0}, {"code": 1.0}, {"code": 1.0}, {}, {}]


def test_keywords_are_found_in_either_text_of_a_pair() -> None:
    router = KeywordRouter({"paraphrase": {"keywords": ["same"]}, "similarity": {"keywords": ["score"]}})
    routes = router.route([Request("the cat sat", "score this one", "pair")], [["paraphrase", "similarity"]])
    assert routes[0].task == "similarity"


def test_keyword_patterns_route_and_every_rule_ignores_case() -> None:
    """Texts come as users type them: a keyword or pattern given in lower case still matches "REFUND"."""
    router = KeywordRouter({"orders": {"keywords": ["refund"], "patterns": [r"order #\d+"]},
                            "films": {"keywords": ["Movie"]}})
    texts = ["where is ORDER #123", "a REFUND please", "what a movie", "order #x", "no rule here"]
    routes = router.route([Request(t) for t in texts], [["orders", "films"]] * len(texts))
    assert [r.task for r in routes] == ["orders", "orders", "films", None, None]


def test_keyword_confidence_is_the_winners_share_of_the_matches() -> None:
    router = KeywordRouter({"a": {"keywords": ["order", "refund"]}, "b": {"keywords": ["order"]}, "c": {}})
    routes = router.route([Request("my order refund"), Request("a refund")], [["a", "b", "c"]] * 2)
    assert [(r.task, r.confidence, r.scores) for r in routes] == [
        ("a", pytest.approx(2 / 3), {"a": 2.0, "b": 1.0}), ("a", 1.0, {"a": 1.0})]


def test_a_score_exactly_at_the_threshold_routes() -> None:
    """The threshold is the least score that routes: min_similarity 1.0 still takes an identical input."""
    engine = SimpleNamespace(embed=lambda texts, reading: torch.eye(3)[: len(texts)])
    router = SemanticRouter(engine, RouterSettings(min_similarity=1.0, features="embeddings"))  # type: ignore[arg-type]
    router.bank = lambda task, reading: torch.tensor([[1.0, 0, 0]])  # type: ignore[method-assign]
    at, below = router.route([Request("x"), Request("y")], [["a"], ["a"]])
    assert (at.task, at.confidence, at.reason) == ("a", 1.0, "")
    assert below.task is None and "below the threshold 1.00" in below.reason


def semantic_with_thresholds(settings: RouterSettings, thresholds: dict[tuple[str, str], float]) -> SemanticRouter:
    """A semantic router whose calibrated thresholds per (task, reading) are given, with no engine to read."""
    engine = SimpleNamespace(manifest=lambda task: SimpleNamespace(created_at="then"))
    router = SemanticRouter(engine, settings)  # type: ignore[arg-type]
    router._thresholds = {(task, "then", reading): value for (task, reading), value in thresholds.items()}
    return router


def test_a_lone_candidate_is_sure_on_token_embeddings_by_its_lead_over_its_own_threshold() -> None:
    """With no other task to lead, a text that only shares a task's words may belong to none: the cascade
    keeps its token-embedding route only by the margin over that task's threshold on token embeddings."""
    router = semantic_with_thresholds(RouterSettings(cascade_margin=0.5),
                                      {("a", "embeddings"): 0.25, ("a", "encoder"): -1.0})
    lone = [Route("a", "semantic", score, {"a": score}) for score in (0.75, 0.74)]
    assert [router._sure(route) for route in lone] == [True, False]
    fixed = SemanticRouter(None, RouterSettings(min_similarity=0.25, cascade_margin=0.5))  # type: ignore[arg-type]
    assert [fixed._sure(route) for route in lone] == [True, False]
    # Beside another task, the lead over it is what counts, whatever the threshold.
    assert router._sure(Route("a", "semantic", 0.75, {"a": 0.75, "b": 0.5})) is False


def test_calibrated_thresholds_are_kept_per_task_reading_and_adapter_version() -> None:
    """Similarities on token embeddings and on the encoder differ in scale, and a retrained adapter has
    other examples: a threshold calibrated for one must not serve another."""
    generator = torch.Generator().manual_seed(2)
    spread = torch.randn(60, 8, generator=generator)
    banks = {"encoder": torch.nn.functional.normalize(spread, dim=-1),
             "embeddings": torch.nn.functional.normalize(torch.ones(60, 8) + 0.05 * spread, dim=-1)}
    version = SimpleNamespace(created_at="first")
    router = SemanticRouter(SimpleNamespace(manifest=lambda task: version), RouterSettings())  # type: ignore[arg-type]
    scale = {"first": 1.0, "retrained": 0.5}
    router.bank = lambda task, reading: banks[reading] * scale[version.created_at]  # type: ignore[method-assign]
    on_encoder, on_embeddings = router.threshold_for("a", "encoder"), router.threshold_for("a", "embeddings")
    assert (on_encoder, on_embeddings) == (router._calibrate(banks["encoder"]), router._calibrate(banks["embeddings"]))
    assert on_embeddings > on_encoder + 0.3
    version.created_at = "retrained"
    assert router.threshold_for("a", "encoder") == pytest.approx(on_encoder / 4)


def test_calibration_starts_at_its_minimum_number_of_examples() -> None:
    from mtlora.routing.semantic import MIN_CALIBRATION_EXAMPLES

    noise = torch.randn(MIN_CALIBRATION_EXAMPLES, 4, generator=torch.Generator().manual_seed(0))
    bank = torch.nn.functional.normalize(torch.ones(MIN_CALIBRATION_EXAMPLES, 4) + 0.1 * noise, dim=-1)
    router = SemanticRouter(None, RouterSettings())  # type: ignore[arg-type]
    assert router._calibrate(bank) > 0.5 and router._calibrate(bank[1:]) == -1.0


def test_routing_hints_come_from_the_project_file_without_retraining(routed_project: Path) -> None:
    engine = Engine.from_config(routed_project, tasks=["sentiment", "support"], precision="fp32")
    assert engine.predict("lovely weather", router="keywords")["task"] is None
    raw = yaml.safe_load(routed_project.read_text())
    raw["tasks"][0]["routing"] = {"keywords": ["weather"]}
    edited = routed_project.with_name("edited.yaml")
    edited.write_text(yaml.safe_dump(raw))
    engine = Engine.from_config(edited, tasks=["sentiment", "support"], precision="fp32")
    assert engine.predict("lovely weather", router="keywords")["task"] == "sentiment"
    # An engine over the registry alone has no project file: it uses the hints the manifests kept.
    bare = Engine(load_config(routed_project).backbone, load_config(routed_project).registry, ["sentiment", "support"],
                  precision="fp32")
    assert bare.predict("where is my refund", router="keywords")["task"] == "support"


def test_a_prefix_naming_a_trained_task_that_is_not_loaded_is_refused(trained_project: Path) -> None:
    """Routed as text with its prefix, `<sentiment> ...` went to support, the one text task loaded."""
    engine = Engine.from_config(trained_project, tasks=["support", "paraphrase"], precision="fp32")
    for text in ("<sentiment> a great film", "sentiment: a great film"):
        # One input's error is not numbered: "inputs[0]: " would point into a list the caller never gave.
        with pytest.raises(mtlora.UnknownTaskError, match=r"^No task 'sentiment' loaded in the engine .*Available: "
                                                          r"paraphrase, support \(load it: Engine.add\('sentiment'\)"):
            engine.predict(text)
    with pytest.raises(mtlora.UnknownTaskError, match=r"^inputs\[1\]: No task 'sentiment' loaded"):
        engine.predict(["where is my refund", "<sentiment> a great film"])
    assert engine.predict("note: where is my refund", router="keywords")["task"] == "support"  # not a task
    assert engine.predict("<sentiment> my refund", task="support")["task"] == "support"  # named: the text is its


def test_a_prefix_naming_an_untrained_project_task_or_misspelling_a_loaded_one_is_refused(
        trained_project: Path) -> None:
    """Both were routed as text, prefix and all: `<sentimnet> great film` was answered by support."""
    raw = yaml.safe_load(trained_project.read_text())
    untrained = {**raw["tasks"][0], "name": "topics"}
    edited = trained_project.with_name("untrained_task.yaml")
    edited.write_text(yaml.safe_dump({**raw, "tasks": [*raw["tasks"], untrained]}))
    engine = Engine.from_config(edited, precision="fp32")
    with pytest.raises(mtlora.UnknownTaskError, match=r"No task 'topics' loaded in the engine \(the text's prefix "
                                                      r"names it; the project file has it, but it is not trained\)"
                                                      r".*\(mtlora train PROJECT.yaml --task topics\)"):
        engine.predict("topics: stocks fell")
    with pytest.raises(mtlora.UnknownTaskError, match=r"No task 'sentimnet' .*no task has that name\)\. Did you "
                                                      r"mean 'sentiment'\? Available: "):
        engine.predict("<sentimnet> a great film")
    # `name:` may begin a text, and a `<tag>` far from every task's name is text too: `<sent>` shares only
    # a part of 'sentiment' (a looser cutoff refused it as a typo).
    for text in ("sentimnet: a great film", "<b> a great film", "<sent> a great film",
                 "<sentimnet>a great film"):  # the last: markup
        engine.predict(text, router="keywords")  # routed, not refused


def test_a_task_not_in_the_registry_is_told_the_likely_one_and_not_the_router(routed_project: Path) -> None:
    """The registry's listing offered `router`, which is then refused as a task to answer with."""
    with pytest.raises(mtlora.AdapterNotFoundError, match=r"No adapter 'sentimnet' in registry .*\. Did you mean "
                                                          r"'sentiment'\? Available: paraphrase, qa, sentiment, "
                                                          r"similarity, support \("):
        mtlora.predict(routed_project, "a great film", task="sentimnet")


def test_serve_checks_the_router_adapter_only_where_the_router_reads_it(routed_project: Path, tmp_path: Path) -> None:
    """A damaged router adapter stops a server whose learned router would load it, and no other."""
    from mtlora import api

    registry = tmp_path / "adapters"
    shutil.copytree(load_config(routed_project).registry, registry)
    with (registry / "router" / "adapter_model.safetensors").open("ab") as weights:
        weights.write(b"\0")
    for strategy, features, refused in (("learned", "encoder", True), ("learned", "cascade", True),
                                        ("learned", "embeddings", False), ("semantic", "encoder", False)):
        project = load_config(routed_project, overrides={"registry": str(registry),
                                                          "router": {"strategy": strategy, "features": features}})
        if refused:
            with pytest.raises(mtlora.CorruptAdapterError, match=r"adapter 'router'"):
                api.verify_adapters(project)
        else:
            api.verify_adapters(project)


def test_the_registry_listing_points_to_where_the_router_is_scored(routed_project: Path) -> None:
    """No command fills a router adapter's "validation" column: it read "not evaluated yet"."""
    from typer.testing import CliRunner

    from mtlora.cli import app

    listed = CliRunner().invoke(app, ["adapters", "list", str(routed_project)], catch_exceptions=False)
    router_row = next(line for line in listed.output.splitlines() if line.lstrip("│ ").startswith("router "))
    assert "see evaluate" in router_row and "not evaluated" not in router_row, listed.output


def test_a_text_starting_with_the_routers_name_is_routed_as_text(routed_project: Path) -> None:
    """`router` is the learned router's adapter, not a task: a text starting `router:` names no task,
    before the router is loaded and after."""
    engine = Engine.from_config(routed_project, precision="fp32")
    assert engine.predict("router: where is my refund", router="keywords")["task"] == "support"
    engine.predict("a great film", router="learned")  # loads the router adapter
    assert engine.predict("router: where is my refund", router="keywords")["task"] == "support"


@pytest.mark.parametrize("reading", ["encoder", "embeddings"])
def test_embeddings_of_no_texts_have_the_width_of_some(trained_project: Path, reading: str) -> None:
    engine = Engine.from_config(trained_project, precision="fp32")
    assert engine.embed([], reading).shape == (0, engine.embed(["a great film"], reading).shape[1])


def test_prefixes() -> None:
    assert split_prefix("<sentiment> great", ["sentiment"]) == ("sentiment", "great")
    assert split_prefix("sentiment: great", ["sentiment"]) == ("sentiment", "great")
    assert split_prefix("note: great", ["sentiment"]) == (None, "note: great")


def test_the_explicit_router_sends_a_request_naming_a_task_to_it_as_the_engine_does() -> None:
    """The engine routes a named request itself; asked directly, the router answered "no task named"."""
    router = ExplicitRouter(default_task="support")
    requests = [Request("great film", task="sentiment"), Request("a", "b", "pair", task="sentiment"),
                Request("where is my refund")]
    named, wrong_shape, unnamed = router.route(requests, [["sentiment", "support"], ["paraphrase"],
                                                          ["sentiment", "support"]])
    assert named == Route("sentiment", "explicit", 1.0, {"sentiment": 1.0})
    assert wrong_shape.task is None and wrong_shape.reason == (
        "the named task 'sentiment' is not loaded or does not take a text pair (the tasks that do: paraphrase)")
    assert (unnamed.task, unnamed.reason) == ("support", "no task named (name one: the task argument, or a <task> "
                                                         "or task: prefix on the text); fell back to the default task")


@pytest.mark.parametrize("features", ["encoder", "embeddings", "cascade"])
def test_a_learned_router_trained_without_a_loaded_task_says_so(
        routed_project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, features: str) -> None:
    folder = tmp_path / "project"
    shutil.copytree(routed_project.parent, folder)
    project = load_config(folder / routed_project.name, overrides={"router": {"features": features}})
    registry = mtlora.Registry(project.registry)
    shutil.copytree(registry.path("support"), registry.path("tickets"))  # trained after the router, say
    registry.update("tickets", name="tickets")
    engine = Engine.from_config(project, tasks=["sentiment", "tickets"], precision="fp32")
    with caplog.at_level(logging.WARNING, logger="mtlora.routing.learned"):
        engine.predict("a great film", router="learned")
    head, adapter = "the learned router's head over token embeddings", "the learned router's adapter"
    which = {"encoder": ["the learned router"], "embeddings": [head], "cascade": [head, adapter]}
    for router in which[features]:
        assert f"{router} was trained without tickets and never routes to it" in caplog.text


@pytest.mark.parametrize(("router", "settings"), [
    ("semantic", {}), ("semantic", {"min_similarity": "median", "default_task": "support"}),
    ("learned", {}), ("learned", {"default_task": "support"})])
def test_a_cascade_reads_the_encoder_only_for_what_the_token_embeddings_leave_unsure(
        routed_project: Path, monkeypatch: pytest.MonkeyPatch, router: str, settings: dict) -> None:
    """Each input keeps its route on token embeddings where that is sure (a task won on its score, and the
    learned head's probability or the semantic lead over the next task clears the cascade's bar); the rest
    are routed as the encoder routes them, row for row in a call mixing shapes, and only they pay for an
    encoder pass. Routes that fell back to the default task, or to none, are never sure."""
    items: list = [text for text, _ in HELD_OUT] + ["paris is a city on a river", "the dog sat on the mat",
                                                     ("the dog sat", "a dog sat"), ("my refund", "the refund"),
                                                     {"question": "who sat", "context": "the cat sat"},
                                                     ("where is my order", "the cat sat on the mat")]
    texts = [item if isinstance(item, str) else item.get("question") if isinstance(item, dict) else item[0]
             for item in items]

    def routes(features: str, **changes: object) -> list[mtlora.routing.Route]:
        project = load_config(routed_project, overrides={"router": {**settings, **changes, "features": features}})
        engine = Engine.from_config(project, precision="fp32")
        return engine.route([engine.request(item) for item in items], router)

    def routes_again(features: str, **changes: object) -> list[mtlora.routing.Route]:
        """As `routes`, but only the second call is watched: the first embeds the tasks' examples."""
        project = load_config(routed_project, overrides={"router": {**settings, **changes, "features": features}})
        engine = Engine.from_config(project, precision="fp32")
        engine.route([engine.request(item) for item in items], router)
        monkeypatch.setattr(Engine, "embed", embedding)
        monkeypatch.setattr(Engine, "run_adapter", running_adapter)
        return engine.route([engine.request(item) for item in items], router)

    if settings.get("min_similarity") == "median":  # a threshold that half the inputs miss on token embeddings
        best = sorted(max(r.scores.values()) for r in routes("embeddings", min_similarity="auto") if r.scores)
        settings = {**settings, "min_similarity": best[len(best) // 2]}

    def sureness(route: mtlora.routing.Route) -> float:
        if router == "learned" or route.task is None or route.reason:
            return route.confidence if route.reason == "" else 0.0
        others = [score for task, score in route.scores.items() if task != route.task]
        return route.confidence - max(others) if others else float("inf")

    on_tokens, on_encoder = routes("embeddings"), routes("encoder")
    routed = [i for i, r in enumerate(on_tokens) if r.router == router]
    levels = sorted(sureness(on_tokens[i]) for i in routed)
    bar = next(level for level in levels[len(levels) // 2:] if 0 < level < float("inf"))  # half clear it
    read: list[str] = []
    embed, run_adapter = Engine.embed, Engine.run_adapter

    def embedding(engine: Engine, batch: list[str], reading: str = "encoder") -> torch.Tensor:
        read.extend(batch if reading == "encoder" else [])
        return embed(engine, batch, reading)

    def running_adapter(engine: Engine, name: str, batch: list[str]) -> list[dict]:
        read.extend(batch)
        return run_adapter(engine, name, batch)

    cascade = routes_again("cascade", **{"cascade_confidence" if router == "learned" else "cascade_margin": bar})
    sure = [i not in routed or sureness(on_tokens[i]) >= bar for i in range(len(items))]
    assert 0 < sum(not ok for ok in sure) < len(routed), [sureness(on_tokens[i]) for i in routed]
    if "default_task" in settings:
        assert any("fell back" in on_tokens[i].reason for i in routed) or router == "learned"
    assert sorted(read) == sorted(text for text, ok in zip(texts, sure, strict=True) if not ok)
    for i, (route, ok) in enumerate(zip(cascade, sure, strict=True)):
        expected = on_tokens[i] if ok else on_encoder[i]
        assert route.reading == (expected.reading if i in routed else None)
        assert route.reading in (("embeddings" if ok else "encoder"), None)
        assert (route.task, route.router, route.reason) == (expected.task, expected.router, expected.reason)
        assert route.scores == pytest.approx(expected.scores, abs=1e-6)


def test_a_cascade_falls_back_to_a_default_task_without_examples(routed_project: Path, tmp_path: Path) -> None:
    """A default task whose manifest keeps no example inputs has no similarity to look up: the cascade
    crashed on it (and with it every request of the call) where one reading falls back cleanly."""
    folder = tmp_path / "project"
    shutil.copytree(routed_project.parent, folder)
    project = load_config(folder / routed_project.name,
                          overrides={"router": {"default_task": "sentiment", "min_similarity": 0.9999}})
    mtlora.Registry(project.registry).update("sentiment", example_inputs=[])
    result = Engine.from_config(project, precision="fp32").predict("where is my refund", router="semantic")
    assert result["task"] == "sentiment" and "fell back to the default task" in result["route_reason"]
    assert result["route_reading"] == "encoder"


def test_a_router_adapter_trained_before_the_cascade_says_both_ways_on(routed_project: Path, tmp_path: Path) -> None:
    """A registry whose learned router predates `cascade` as the default has the adapter but no head."""
    folder = tmp_path / "project"
    shutil.copytree(routed_project.parent, folder)
    project = load_config(folder / routed_project.name)
    shutil.rmtree(TokenRouterHead.folder(mtlora.Registry(project.registry)))
    with pytest.raises(RegistryError, match=r"lacks its head over token embeddings, which router.features: cascade "
                                            r"\(the default\) reads first: run `mtlora train-router`.* set "
                                            r"router.features: encoder"):
        Engine.from_config(project, precision="fp32").predict("a great film", router="learned")
    adapter_alone = project.with_router(features="encoder")
    assert Engine.from_config(adapter_alone, precision="fp32").predict("a great film", router="learned")["task"]


def test_route_takes_inputs_as_predict_does(routed_project: Path) -> None:
    engine = Engine.from_config(load_config(routed_project), precision="fp32")
    items: list = ["a great film", ("the dog sat", "a dog sat"), {"question": "who sat", "context": "the cat sat"}]
    assert engine.route(items, "learned") == engine.route([engine.request(item) for item in items], "learned")
    with pytest.raises(mtlora.EmptyTextError, match=r"^inputs\[1\]: text is empty"):
        engine.route(["fine", " "])


def test_a_keywords_row_without_any_rule_to_match_says_so(trained_project: Path, tmp_path: Path) -> None:
    """With no task's keywords or patterns, the keywords router left every input unroutable and its row read
    0.000 as if it had judged them all wrong: routing.md and the log now say it had nothing to match."""
    project = load_config(trained_project)
    bare = project.model_copy(update={
        "reports": tmp_path / "reports",
        "tasks": [t.model_copy(update={"routing": t.routing.model_copy(update={"keywords": [], "patterns": []})})
                  for t in project.tasks]})
    said: list[str] = []
    (report,) = mtlora.evaluate_routers(bare, ["keywords"], log=said.append)
    assert report.unroutable == 1.0 and "no task has routing keywords or patterns" in report.note
    assert any("warning: keywords: no task has routing keywords" in line for line in said), said
    assert "**keywords**: no task has routing keywords or patterns" in (tmp_path / "reports" / "routing.md").read_text()
    (report,) = mtlora.evaluate_routers(project, ["keywords"], write=False, log=lambda _: None)
    assert report.note is None  # the project's own hints: rules to match


def test_routing_rows_of_before_go_when_the_routers_head_alone_is_fit_again(routed_project: Path,
                                                                             tmp_path: Path) -> None:
    """`train-router` with features: embeddings fits the head over token embeddings again and saves no
    adapter: the learned router's row of before stayed in routing.md beside the new head, with its old
    accuracy, since the rows were stamped with the adapters' saves alone. The other routers' rows stay:
    they read neither the head nor the router's adapter (they went with every refit)."""
    folder = tmp_path / "project"
    shutil.copytree(routed_project.parent, folder)
    project = load_config(folder / routed_project.name, overrides={
        "router": {"features": "embeddings"}, "reports": str(tmp_path / "reports")})
    registry = Registry(project.registry)

    def rows() -> list[str]:
        return [row["router"] for row in json.loads((tmp_path / "reports" / "routing.json").read_text())]

    (learned,) = mtlora.evaluate_routers(project, ["learned"], log=lambda _: None)
    head = TokenRouterHead.load(registry, project.backbone)
    assert learned.adapters is not None and learned.adapters[ROUTER_HEAD] == head.info.head_sha256
    mtlora.evaluate_routers(project, ["semantic"], log=lambda _: None)
    assert rows() == ["learned", "semantic"]  # the same saves: the learned row of before stays
    TokenRouterHead(head.weight, head.bias + 1.0, head.info).save(registry)  # a fit on other inputs
    mtlora.evaluate_routers(project, ["semantic"], log=lambda _: None)
    assert rows() == ["semantic"]
    # The semantic router reads no part of the learned router: its row stays beside the refit's.
    mtlora.evaluate_routers(project, ["learned"], log=lambda _: None)
    TokenRouterHead(head.weight, head.bias + 2.0, head.info).save(registry)
    mtlora.evaluate_routers(project, ["learned"], log=lambda _: None)
    assert rows() == ["semantic", "learned"]


def test_a_change_of_tasks_embeds_only_the_examples_of_the_adapter_it_loads(trained_project: Path,
                                                                          monkeypatch) -> None:
    """Each load or unload rebuilds the routers. The semantic router's banks (the embedded example inputs,
    by save) outlive the rebuild: loading one adapter embeds its own examples, not every task's again; and
    the banks of an adapter unloaded go."""
    engine = Engine.from_config(trained_project, tasks=["sentiment"], precision="fp32")
    calls: list[tuple[str, ...]] = []
    embed = engine.embed
    monkeypatch.setattr(engine, "embed", lambda texts, reading="encoder": calls.append(tuple(texts)) or embed(
        texts, reading))
    texts = ["a great film", "where is my refund", "the plot was thin"]

    def banks() -> set[tuple[str, ...]]:  # the calls that embedded examples, not the inputs
        return {call for call in calls if not set(call) <= set(texts)}

    before = engine.route(texts, "semantic")
    alone = banks()
    calls.clear()
    engine.add("support")
    engine.route(texts, "semantic")
    assert alone and banks() and not banks() & alone, "sentiment's examples were embedded again"
    engine.remove("support")
    assert engine.route(texts, "semantic") == before
    assert {key[0] for key in engine.router_memo["semantic"]["banks"]} == {"sentiment"}
