"""The multi-adapter engine: one backbone pass for mixed tasks, run-time adapters, merge, threads, bad input."""

from __future__ import annotations

import gc
import json
import shutil
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

import mtlora
from mtlora import EmptyTextError, Engine, InputError, UnknownTaskError, load_config
from mtlora.batching import pad_rows

MIXED = [
    ("sentiment", "loved this great movie"),
    ("qa", {"question": "who sat on the mat", "context": "the cat sat on the mat"}),
    ("paraphrase", ("the cat sat on the mat", "a cat sat on a mat")),
    ("support", "where is my refund"),
    ("similarity", ("the dog sat", "the dog sat")),
    ("sentiment", "terrible boring film that i hated"),
    ("qa", {"question": "what is the capital of france", "context": "paris is the capital of france"}),
    ("paraphrase", ("paris river", "login charge")),
    ("similarity", ("my order", "where is my refund")),
]


def replayed_by_calling(forward: Callable[[], dict[str, torch.Tensor]]) -> tuple[Callable[[], None], dict]:
    """A stand-in for a CUDA graph's capture off CUDA: each replay runs `forward` on the static inputs and
    writes into the static outputs, as a replay does."""
    outputs = forward()

    def replay() -> None:
        for name, tensor in forward().items():
            outputs[name].copy_(tensor)
    return replay, outputs


def graphed(engine: Engine, captures: list[int] | None = None) -> Engine:
    """`engine` with its shared passes run the way it runs them as CUDA graphs (`replayed_by_calling`),
    each capture's padded length appended to `captures`."""
    def capture(forward: Callable[[], dict[str, torch.Tensor]]) -> tuple[Callable[[], None], dict]:
        replay, outputs = replayed_by_calling(forward)
        if captures is not None:
            captures.append(outputs["last_hidden_state"].shape[1])
        return replay, outputs
    def graphs_off(reason: str) -> None:  # a graph that differs would otherwise go unseen behind eager answers
        pytest.fail(f"the engine turned its graphs off: {reason}")
    engine._encoders.cuda_graphs = True
    engine._encoders.graph_capture = lambda: capture
    engine._encoders._graphs_off = graphs_off  # type: ignore[method-assign]
    return engine


# Passes of 3 rows: a call's shared passes each hold other adapters, and reuse the layers' stacks.
@pytest.fixture(scope="module", params=[{"mixed_batches": True}, {"mixed_batches": True, "batch_size": 3},
                                        {"mixed_batches": False}, {"mixed_batches": False, "fold_cache": 8},
                                        {"mixed_batches": True, "batch_size": 3, "graphs": True}],
                ids=["one-mixed-pass", "shared-passes-of-3", "folded-per-adapter", "folds-kept-between-calls",
                     "graphed-passes-of-3"])
def engine(trained_project: Path, request: pytest.FixtureRequest) -> Engine:
    settings = dict(request.param)
    made = Engine.from_config(trained_project, precision="fp32", **{k: v for k, v in settings.items() if k != "graphs"})
    return graphed(made) if settings.get("graphs") else made


def assert_same(actual: dict, expected: dict) -> None:
    for key, value in expected.items():
        if key == "task":
            continue
        if isinstance(value, float | dict):
            assert actual[key] == pytest.approx(value, abs=1e-5), key
        else:
            assert actual[key] == value, key


def assert_answers_as_alone(engine: Engine, project: Path, items: list, tasks: list[str]) -> None:
    """One mixed call of the engine answers each input as the task's own predictor (plain PEFT) does."""
    for item, task, result in zip(items, tasks, engine.predict(items, task=tasks), strict=True):
        assert_same(result, mtlora.load_predictor(project, task).predict_batch([item])[0])


def test_mixed_batch_equals_each_task_alone(engine: Engine, trained_project: Path) -> None:
    tasks = [task for task, _ in MIXED]
    mixed = engine.predict_batch([item for _, item in MIXED], task=tasks)
    for (task, item), result in zip(MIXED, mixed, strict=True):
        alone = mtlora.load_predictor(trained_project, task).predict_batch([item])[0]
        assert result["task"] == task and result["routed_by"] == "explicit"
        assert_same(result, alone)
        single = engine.predict(item, task=task)
        assert_same(single, alone)


def test_heads_of_every_shape_answer_in_one_batch(engine: Engine) -> None:
    results = engine.predict([item for _, item in MIXED], task=[task for task, _ in MIXED])
    assert {r["task"] for r in results} == {"sentiment", "support", "paraphrase", "similarity", "qa"}
    assert isinstance(results[4]["score"], float)
    assert results[1]["answer"] and results[1]["answer"] in "the cat sat on the mat"
    assert set(results[3]["probabilities"]) == {"billing", "account"}


def test_prefix_names_the_task(engine: Engine) -> None:
    result = engine.predict("<support> where is my refund")
    assert result["task"] == "support" and result["routed_by"] == "explicit"
    assert engine.predict("support: where is my refund")["task"] == "support"
    assert engine.predict("sentiment: my refund", router="explicit")["task"] == "sentiment"


def test_input_shape_narrows_the_candidates(engine: Engine) -> None:
    qa = engine.predict({"question": "who sat", "context": "the cat sat"})
    assert qa["task"] == "qa" and qa["routed_by"] == "shape"
    # The text tasks' keywords match, but a pair can only go to a pair task (and none has keywords).
    pair = engine.predict(("a refund for the movie", "my film refund"), router="keywords")
    assert pair["task"] is None and not set(pair["scores"]) & {"sentiment", "support"}, pair
    assert engine.predict("a refund for the movie", router="keywords")["task"] in ("sentiment", "support")


@pytest.mark.parametrize(("fold_cache", "graphs"), [(0, False), (4, False), (0, True)],
                         ids=["shared-passes", "folds-kept", "graphed"])
def test_adapters_come_and_go_at_run_time(trained_project: Path, fold_cache: int, graphs: bool) -> None:
    engine = Engine.from_config(trained_project, tasks=["sentiment"], precision="fp32", fold_cache=fold_cache)
    if graphs:
        graphed(engine)
    before = engine.embed(["the cat sat on the mat"])
    first = engine.predict("loved this great movie", task="sentiment")
    engine.add("support")
    assert engine.tasks == ["sentiment", "support"]
    assert engine.predict("where is my refund", task="support")["task"] == "support"
    assert_same(engine.predict("loved this great movie", task="sentiment"), first)
    engine.remove("sentiment")
    with pytest.raises(UnknownTaskError, match=r"No task 'sentiment' loaded in the engine\. Available: support"):
        engine.predict("loved this great movie", task="sentiment")
    engine.remove("support")
    torch.testing.assert_close(engine.embed(["the cat sat on the mat"]), before, rtol=0, atol=1e-6)
    engine.add("sentiment")
    assert_same(engine.predict("loved this great movie", task="sentiment"), first)


def test_shared_passes_read_stacks_the_adapters_weights_view_as_adapters_come_and_go(trained_project: Path) -> None:
    """Each layer's LoRA lives in one stack that the adapters' weights are views of (no second copy, none
    made per call), made again as adapters come, go or are reloaded: a mixed call then still answers
    each input as its task alone does."""
    engine = Engine.from_config(trained_project, tasks=["sentiment", "support"], precision="fp32",
                                mixed_batches=True)
    encoders = engine._encoders

    def check_stacks(names: set[str]) -> None:
        assert encoders._stacks
        for layer, stack in encoders._stacks.items():
            assert set(stack.names) == names & set(layer.lora_A)
            for name in stack.names:
                for weight, buffer in ((layer.lora_A[name].weight, stack.lora_a),
                                       (layer.lora_B[name].weight, stack.lora_b)):
                    assert weight.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()

    def check_answers(left_out: str = "") -> None:
        rest = [(task, item) for task, item in MIXED if task != left_out]
        assert_answers_as_alone(engine, trained_project, [item for _, item in rest], [task for task, _ in rest])

    check_stacks({"sentiment", "support"})
    for task in ("qa", "paraphrase", "similarity"):
        engine.add(task)
    everything = {task for task, _ in MIXED}
    check_stacks(everything)
    check_answers()
    engine.reload("support")
    check_stacks(everything)
    check_answers()
    engine.remove("sentiment")
    check_stacks(everything - {"sentiment"})
    check_answers(left_out="sentiment")


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphed"])
def test_a_weight_given_storage_of_its_own_is_stacked_again(trained_project: Path, graphs: bool) -> None:
    """Shared passes read the stacks, folded ones the adapters' weights: a weight that stops viewing its
    stack (given storage of its own, here with other values) is noticed at the next call, and both
    answer alike (graphs read the stacks they were captured with: new stacks, new graphs)."""
    engine = Engine.from_config(trained_project, tasks=["sentiment", "support"], precision="fp32",
                                mixed_batches=True)
    if graphs:
        graphed(engine)
    items, tasks = ["loved this great movie", "where is my refund"], ["sentiment", "support"]
    before = engine.predict(items, task=tasks)
    for layer in engine._encoders._layers():
        weight = layer.lora_B["sentiment"].weight
        weight.data = weight.data * -10
    shared = engine.predict(items, task=tasks)
    engine._encoders.mixed_batches = False
    for got, expected in zip(shared, engine.predict(items, task=tasks), strict=True):
        assert_same(got, expected)
    assert shared[0]["probabilities"]["positive"] != pytest.approx(before[0]["probabilities"]["positive"], abs=0.1)


def test_an_add_that_fails_while_stacking_leaves_the_engine_as_it_was(
        trained_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stacking fails on a layer halfway through (out of memory, say): the layers before it already view
    new stacks. The adapter goes again and every weight views the engine's stacks, so it can be added
    again and mixed calls answer as each task alone."""
    import mtlora.engine.folding as folding

    engine = Engine.from_config(trained_project, tasks=["sentiment"], precision="fp32", mixed_batches=True)
    stacked = folding._stacked
    layers_stacked = iter(range(10**6))

    def failing_on_the_fifth_layer(layer: torch.nn.Module) -> folding.StackedLora:
        if next(layers_stacked) == 4:
            raise RuntimeError("out of memory")
        return stacked(layer)

    monkeypatch.setattr(folding, "_stacked", failing_on_the_fifth_layer)
    with pytest.raises(RuntimeError, match="out of memory"):
        engine.add("support")
    assert engine.tasks == ["sentiment"]
    encoders = engine._encoders
    assert all(stack.viewed_by(layer) and stack.names == ("sentiment",) for layer, stack in encoders._stacks.items())
    engine.add("support")
    assert_answers_as_alone(engine, trained_project, ["loved this great movie", "where is my refund"],
                            ["sentiment", "support"])


def test_one_graph_per_padded_length_serves_every_mix_of_adapters(trained_project: Path) -> None:
    eager = Engine.from_config(trained_project, precision="fp32", batch_size=4)
    captures: list[int] = []
    engine = graphed(Engine.from_config(trained_project, precision="fp32", batch_size=4), captures)
    items, tasks = [item for _, item in MIXED], [task for task, _ in MIXED]
    for expected, result in zip(eager.predict(items, task=tasks), engine.predict(items, task=tasks), strict=True):
        assert_same(result, expected)
    assert captures == [32]
    # A pass of fewer rows leaves the last pass's rows in the graph's spare rows: they change nothing.
    for task, item in reversed(MIXED):
        assert_same(engine.predict(item, task=task), eager.predict(item, task=task))
    torch.testing.assert_close(engine.embed(["the cat sat on the mat", "paris"]),
                               eager.embed(["the cat sat on the mat", "paris"]), rtol=0, atol=1e-6)
    long_text = " ".join(["paris"] * 40)  # past the adapters' 32 tokens: only routing reads it whole
    torch.testing.assert_close(engine.embed([long_text]), eager.embed([long_text]), rtol=0, atol=1e-6)
    assert len(engine.tokenizer(long_text)["input_ids"]) == 42 and captures == [32, 64]


def test_a_pass_keeps_its_outputs_when_the_next_replays_its_graph(trained_project: Path) -> None:
    encoders = graphed(Engine.from_config(trained_project, precision="fp32"))._encoders
    first, second = (pad_rows(encoders.tokenizer, [encoders.tokenizer(text)], encoders.device)
                     for text in ("loved this great movie", "where is my refund"))
    with torch.inference_mode():
        kept = encoders._encode(first, ["sentiment"])
        values = kept.last_hidden_state.clone()
        encoders._encode(second, ["support"])
    assert torch.equal(kept.last_hidden_state, values)


def test_an_engine_without_adapters_captures_each_length_once(trained_project: Path) -> None:
    captures: list[int] = []
    engine = graphed(Engine.from_config(trained_project, tasks=[], precision="fp32"), captures)
    embeddings = [engine.embed(["the cat sat on the mat", "paris"]) for _ in range(3)]
    assert captures == [32]
    assert all(torch.equal(embedding, embeddings[0]) for embedding in embeddings)


def perturbed(forward: Callable[[], dict[str, torch.Tensor]]) -> tuple[Callable[[], None], dict]:
    """A capture whose replays give other numbers than the eager pass (as a graph that froze a decision
    the model makes on the host from the data would)."""
    replay, outputs = replayed_by_calling(forward)
    return lambda: (replay(), outputs["last_hidden_state"].add_(1.0)), outputs


def failing(forward: Callable[[], dict[str, torch.Tensor]]) -> tuple[Callable[[], None], dict]:
    forward()  # part way through the capture
    raise RuntimeError("operation not permitted when stream is capturing")


@pytest.mark.parametrize("capture", [failing, perturbed], ids=["capture-fails", "replay-differs"])
def test_graphs_that_cannot_serve_leave_the_engine_answering_eagerly(
        trained_project: Path, capture: Callable, caplog: pytest.LogCaptureFixture) -> None:
    eager = Engine.from_config(trained_project, precision="fp32")
    engine = Engine.from_config(trained_project, precision="fp32")
    engine._encoders.cuda_graphs, engine._encoders.graph_capture = True, lambda: capture
    items, tasks = [item for _, item in MIXED], [task for task, _ in MIXED]
    with caplog.at_level("WARNING", logger="mtlora.engine.encoder"):
        results = engine.predict(items, task=tasks)
    assert "CUDA graphs are off for this engine" in caplog.text and not engine._encoders.cuda_graphs
    for expected, result in zip(eager.predict(items, task=tasks), results, strict=True):
        assert_same(result, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_on_cuda_shared_passes_replay_as_graphs_and_answer_as_eager_passes(trained_project: Path) -> None:
    eager = Engine.from_config(trained_project, precision="fp32", cuda_graphs=False)
    engine = Engine.from_config(trained_project, precision="fp32")
    items, tasks = [item for _, item in MIXED], [task for task, _ in MIXED]
    for _ in range(2):  # the first call captures, the second replays what it captured
        for expected, result in zip(eager.predict(items, task=tasks), engine.predict(items, task=tasks), strict=True):
            assert_same(result, expected)
    assert engine._encoders._graphs is not None and engine._encoders._graphs._graphs


def test_adapters_added_under_a_callers_inference_mode_can_go_again(trained_project: Path) -> None:
    """Stacks are no inference tensors whatever the caller's mode: PEFT sets requires_grad on the weights
    that view them when an adapter goes."""
    engine = Engine.from_config(trained_project, tasks=["sentiment"], precision="fp32", mixed_batches=True)
    with torch.inference_mode():
        engine.add("support")
    assert not any(parameter.is_inference() for parameter in engine._encoders.model.parameters())
    engine.remove("sentiment")
    engine.add("sentiment")
    assert_answers_as_alone(engine, trained_project, ["loved this great movie", "where is my refund"],
                            ["sentiment", "support"])


def test_a_reload_swaps_an_adapter_in_place_and_a_damaged_one_leaves_the_loaded_one_serving(
        trained_project: Path, tmp_path: Path) -> None:
    registry = tmp_path / "adapters"
    shutil.copytree(load_config(trained_project).registry, registry)
    engine = Engine(load_config(trained_project).backbone, registry, ["sentiment", "support"], precision="fp32")
    first = engine.predict("loved this great movie", task="sentiment")
    engine.reload("sentiment")
    assert engine.tasks == ["sentiment", "support"]
    assert_same(engine.predict("loved this great movie", task="sentiment"), first)
    with (registry / "sentiment" / "adapter_model.safetensors").open("ab") as weights:
        weights.write(b"x")
    with pytest.raises(mtlora.CorruptAdapterError, match="does not match its checksum"):
        engine.reload("sentiment")
    assert engine.tasks == ["sentiment", "support"]
    assert_same(engine.predict("loved this great movie", task="sentiment"), first)


def test_an_adapter_trained_on_another_backbone_is_refused_by_the_engine(trained_project: Path,
                                                                          other_tiny_bert: Path) -> None:
    """Of the same shape, it would load and answer with weights it was never trained against."""
    registry = load_config(trained_project).registry
    with pytest.raises(mtlora.BaseModelMismatchError, match="'sentiment' was trained on base model"):
        Engine(str(other_tiny_bert), registry, ["sentiment"], precision="fp32")
    engine = Engine(str(other_tiny_bert), registry, [], precision="fp32")
    for load in (engine.add, engine.reload):
        with pytest.raises(mtlora.BaseModelMismatchError, match="but the backbone given is"):
            load("sentiment")
    assert engine.tasks == []


def test_a_reload_that_fails_putting_its_lora_in_unlists_the_task_and_it_can_be_added_again(
        trained_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The old LoRA is out by then: listed still, the task would be routed to and fail in every call."""
    engine = Engine.from_config(trained_project, tasks=["sentiment", "support"], precision="fp32")
    first = engine.predict("loved this great movie", task="sentiment")
    prepared = engine._encoders.prepared

    def failing_to_put_in(*args: object, **kwargs: object) -> Callable[[], None]:
        prepared(*args, **kwargs)

        def put_in() -> None:
            raise RuntimeError("out of memory")
        return put_in

    monkeypatch.setattr(engine._encoders, "prepared", failing_to_put_in)
    with pytest.raises(RuntimeError, match="out of memory"):
        engine.reload("sentiment")
    assert engine.tasks == ["support"]
    monkeypatch.undo()
    engine.add("sentiment")
    assert_same(engine.predict("loved this great movie", task="sentiment"), first)


def test_adding_a_loaded_adapter_changes_nothing_and_routers_follow_adds_and_removes(trained_project: Path) -> None:
    """A router keeps the task list it was built with: one kept across an add or a remove would never
    route to the new task, or would route to one gone."""
    engine = Engine.from_config(trained_project, tasks=["sentiment"], precision="fp32")
    refund = "where is my refund"
    assert engine.predict(refund, router="keywords")["task"] != "support"
    engine.reload("support")  # not loaded: a reload loads it
    assert engine.tasks == ["sentiment", "support"]
    assert engine.predict(refund, router="keywords")["task"] == "support"
    engine.remove("support")
    assert engine.predict(refund, router="keywords")["task"] != "support"
    engine.add("support")
    engine.add("support")
    assert engine.tasks == ["sentiment", "support"]
    assert engine.predict(refund, router="keywords")["task"] == "support"
    with pytest.raises(UnknownTaskError, match=r"No task 'nope' loaded in the engine\. Available: sentiment, support"):
        engine.remove("nope")


def test_adapter_weights_with_no_place_in_the_backbone_are_refused_not_dropped(tiny_bert: Path) -> None:
    """PEFT only warns of them: the adapter, trained on another backbone, would answer without them."""
    from peft import LoraConfig, get_peft_model_state_dict

    from mtlora.engine.peft_adapters import load_weights, with_adapter
    from mtlora.errors import BaseModelMismatchError

    model = with_adapter(AutoModel.from_pretrained(tiny_bert), "one", LoraConfig(r=2, target_modules=["query"]))
    state = get_peft_model_state_dict(model, adapter_name="one")
    load_weights(model, "one", state, "sentiment")
    stray = {**state, "base_model.model.encoder.layer.9.attention.self.query.lora_A.weight": torch.zeros(2, 32)}
    with pytest.raises(BaseModelMismatchError, match=r"^adapter 'sentiment' has weights the backbone has no place "
                                                     r"for: \['base_model.model.encoder.layer.9"):
        load_weights(model, "one", stray, "sentiment")


def test_deleting_the_active_adapter_activates_another_first_and_the_last_one_left_is_kept(tiny_bert: Path) -> None:
    """PEFT would switch itself, warning at every LoRA layer on each remove; and it cannot delete its last
    adapter, which is all that would be left but those the caller is deleting too (`gone`)."""
    import warnings

    from peft import LoraConfig

    from mtlora.engine.peft_adapters import delete_adapter, with_adapter

    model = AutoModel.from_pretrained(tiny_bert)
    for name in ("one", "two", "three"):
        model = with_adapter(model, name, LoraConfig(r=2, target_modules=["query", "value"]))
    model.set_adapter("one")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert delete_adapter(model, "one")
    assert model.active_adapters == ["two"] and list(model.peft_config) == ["two", "three"]
    assert not delete_adapter(model, "two", gone={"three"})
    assert list(model.peft_config) == ["two", "three"]


@pytest.mark.parametrize("fold_cache", [0, 2])
def test_a_reload_of_other_weights_answers_with_them(trained_project: Path, tmp_path: Path, fold_cache: int) -> None:
    """A retrained adapter, reloaded, answers as a fresh engine does: no fold of the old weights is kept."""
    from mtlora.registry import Registry

    backbone, source = load_config(trained_project).backbone, load_config(trained_project).registry
    registry = Registry(tmp_path / "adapters")
    shutil.copytree(source, registry.root)
    engine = Engine(backbone, registry, ["sentiment", "support"], precision="fp32", mixed_batches=False,
                    fold_cache=fold_cache)
    text = "loved this great movie"
    before = engine.predict(text, task="sentiment")
    shutil.rmtree(registry.path("sentiment"))
    shutil.copytree(source / "support", registry.path("sentiment"))  # the same head shape, other weights
    registry.update("sentiment", name="sentiment")
    engine.reload("sentiment")
    fresh = Engine(backbone, registry, ["sentiment"], precision="fp32").predict(text, task="sentiment")
    assert list(fresh["probabilities"].values()) != pytest.approx(list(before["probabilities"].values()), abs=1e-3)
    assert_same(engine.predict(text, task="sentiment"), fresh)


def test_merged_export_gives_the_adapter_outputs(engine: Engine, trained_project: Path, tmp_path: Path) -> None:
    folder = engine.merge("sentiment", tmp_path / "sentiment-merged")
    predictor = mtlora.load_predictor(trained_project, "sentiment")
    merged = AutoModelForSequenceClassification.from_pretrained(folder).to(predictor.device).eval()
    batch = predictor.tokenizer(["loved this great movie", "terrible boring film"], padding=True,
                                return_tensors="pt").to(predictor.device)
    with torch.inference_mode():
        torch.testing.assert_close(merged(**batch).logits, predictor.model(**batch).logits, rtol=0, atol=1e-5)
    assert AutoTokenizer.from_pretrained(folder).model_max_length == predictor.manifest.max_length
    # A plain transformers user reads the class names from the config: they must be the logits' order.
    assert merged.config.id2label == {0: "negative", 1: "positive"}
    assert merged.config.label2id == {"negative": 0, "positive": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["sentiment-merged"]  # no staging folder left beside it


def test_merged_exports_of_regression_and_qa_answer_as_their_adapters_do(
        trained_project: Path, tmp_path: Path) -> None:
    """A plain transformers user of a merged export gets the adapter's answers: QA logits, and scores on the
    training scale (the head learned standardised ones)."""
    from transformers import AutoModelForQuestionAnswering

    pairs = [("who sat on the mat", "the cat sat on the mat"), ("the dog sat", "a dog sat")]
    similarity = mtlora.load_predictor(trained_project, "similarity")
    merged = AutoModelForSequenceClassification.from_pretrained(mtlora.merge(trained_project, "similarity",
                                                                             tmp_path / "similarity")).eval()
    batch = similarity.tokenizer(*map(list, zip(*pairs, strict=True)), padding=True, return_tensors="pt")
    with torch.inference_mode():
        scores = merged(**batch).logits[:, 0].tolist()
    assert scores == pytest.approx([p["score"] for p in similarity.predict_batch(pairs)], abs=1e-4)
    qa = mtlora.load_predictor(trained_project, "qa")
    merged = AutoModelForQuestionAnswering.from_pretrained(mtlora.merge(trained_project, "qa", tmp_path / "qa")).eval()
    with torch.inference_mode():
        ours, theirs = merged(**batch), qa.model.to("cpu")(**batch)
    for name in ("start_logits", "end_logits"):
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-5)


def test_concurrent_callers_get_their_own_answers(engine: Engine) -> None:
    # The same one-input calls made one after the other: a concurrent call must give exactly that answer.
    expected = [engine.predict(item, task=task) for task, item in MIXED]
    failures: list[str] = []

    def call(offset: int) -> None:
        for round_ in range(5):
            i = (offset + round_) % len(MIXED)
            task, item = MIXED[i]
            result = engine.predict(item, task=task)
            if result != expected[i]:
                failures.append(f"thread {offset}: {task} gave {result}, alone {expected[i]}")

    threads = [threading.Thread(target=call, args=(k,)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


def test_listing_the_tasks_while_another_thread_removes_one(trained_project: Path) -> None:
    """`tasks` and `manifests` are read without the lock (a server's event loop lists them while an admin's
    `remove` runs in a worker thread): a removal between two names' reads must not fail the listing with
    "dictionary changed size during iteration" (a 500), nor a listed task's manifest be an unknown task."""
    engine = Engine.from_config(trained_project, tasks=["sentiment", "support"], precision="fp32")
    loaded = dict(engine._tasks)

    class RemovedWhileRead(str):  # reading this name lets the other thread remove "support"
        __hash__ = str.__hash__

        def __ne__(self, other: object) -> bool:
            engine._tasks.pop("support", None)
            return str.__ne__(self, other)

    for listing in (lambda: engine.tasks, lambda: list(engine.manifests())):
        engine._tasks = {RemovedWhileRead("sentiment"): loaded["sentiment"], "support": loaded["support"]}
        assert listing() == ["sentiment", "support"]  # as they were when the listing began
    assert engine.manifests()["sentiment"] is loaded["sentiment"].manifest


def test_bad_inputs_are_explained(engine: Engine) -> None:
    with pytest.raises(InputError, match="text is empty"):
        engine.predict("   ", task="sentiment")
    # Refused before routing, not routed to "unroutable"; nor answered from the special tokens alone.
    for empty in ("", "  ", "<support>  ", "\x00\x01", "\u200b\t\u3000", "\ufffd\ufffd", "\u0301", " \u20dd"):
        with pytest.raises(EmptyTextError, match=r"^text is empty"):
            engine.predict(empty)
    # Text, though this Python may not know the character (an emoji of Unicode 15, U+1FAE8) or no one
    # assigned it (private use): the tokenizer keeps each as its unknown token.
    for text in ("\U0001fae8", "\uf8ff", "你好", "क्\u200dष", "e\u0301"):
        assert engine.predict(text, task="sentiment")["task"] == "sentiment"
    with pytest.raises(InputError, match=r"^text holds '\\ud800' at character 1, half of a UTF-16 surrogate pair"):
        engine.predict("a\ud800b", task="sentiment")
    with pytest.raises(InputError, match=r"starts with <support>, but task 'sentiment' was named"):
        engine.predict("<support> refund please", task="sentiment")
    assert engine.predict("<support> refund please", task="support")["task"] == "support"
    with pytest.raises(InputError, match=r"^question is empty"):
        engine.predict({"question": " ", "context": "the cat sat"})
    with pytest.raises(EmptyTextError, match=r"^inputs\[2\]: text_pair is empty"):
        engine.predict(["fine", "good", ("a", "")])
    with pytest.raises(EmptyTextError, match=r"^text_pair is empty"):  # not read as one text, "a"
        engine.predict({"text": "a", "text_pair": ""}, task="paraphrase")
    with pytest.raises(InputError, match=r"^inputs\[1\]: task 'sentiment' \(classification\) takes a text, but a "
                                         r"text pair was given \(give it a text, or name a task that takes a text "
                                         r"pair: paraphrase, qa, similarity\)"):
        engine.predict(["fine", ("a", "b")], task="sentiment")
    with pytest.raises(InputError, match=r"task 'paraphrase' \(pair_classification\) takes a text pair,"):
        engine.predict("just one text", task="paraphrase")
    with pytest.raises(UnknownTaskError, match=r"No task 'nope' loaded in the engine\. Available: paraphrase, qa"):
        engine.predict("hello", task="nope")
    with pytest.raises(InputError, match="an input is a text"):
        engine.predict(42)  # type: ignore[arg-type]
    with pytest.raises(UnknownTaskError, match=r"No router 'telepathy'\. Available: explicit, keywords"):
        Engine(engine.backbone, engine.registry, [], router="telepathy")  # when built, not at the first routed call
    with pytest.raises(InputError, match="2 inputs but 3 task names"):
        engine.predict_batch(["a", "b"], task=["sentiment"] * 3)


def test_a_dict_naming_one_task_while_the_call_names_another_is_refused(engine: Engine) -> None:
    """The call's task won without a word, though a `<task>` prefix that disagrees is refused, and so is
    such a dict given to a predictor."""
    with pytest.raises(InputError, match=r"^the input names task 'support', but task 'sentiment' was named: "
                                         r"drop one of them"):
        engine.predict({"text": "refund please", "task": "support"}, task="sentiment")
    with pytest.raises(InputError, match=r"^inputs\[1\]: the input names task 'support'"):
        engine.predict(["fine", {"text": "refund please", "task": "support"}], task=["sentiment", "sentiment"])
    assert engine.predict({"text": "refund please", "task": "support"}, task="support")["task"] == "support"
    assert engine.predict({"text": "refund please", "task": "support"})["task"] == "support"


def test_a_predictor_takes_the_inputs_the_engine_takes(trained_project: Path) -> None:
    """One task's predictor reads an input as the engine does: a {question, context} dict, a {text,
    text_pair} dict, a JSON [text, text_pair] list."""
    engine = Engine.from_config(trained_project, ["qa", "paraphrase"], precision="fp32")
    qa = mtlora.load_predictor(trained_project, "qa")
    question = {"question": "who sat on the mat", "context": "the cat sat on the mat"}
    (alone,) = qa.predict_batch([question])
    assert alone["task"] == "qa"
    assert_same(engine.predict(question, task="qa"), alone)
    assert_same(qa.predict(question["question"], question["context"]), alone)
    paraphrase = mtlora.load_predictor(trained_project, "paraphrase")
    pair = ("the cat sat on the mat", "a cat sat on a mat")
    expected = engine.predict(pair, task="paraphrase")
    for item in ({"text": pair[0], "text_pair": pair[1]}, list(pair)):
        assert_same(expected, paraphrase.predict_batch([item])[0])
    with pytest.raises(InputError, match=r"^question is empty"):
        qa.predict_batch([{"question": " ", "context": "the cat sat"}])
    with pytest.raises(InputError, match="an input is a text, a \\(text, text_pair\\) tuple"):
        qa.predict_batch([42])  # type: ignore[list-item]
    with pytest.raises(InputError, match="names task 'sentiment', but this predictor answers 'paraphrase' only"):
        paraphrase.predict_batch([{"text": pair[0], "text_pair": pair[1], "task": "sentiment"}])
    # What the engine refuses for a task, its predictor refuses alike; two texts to QA are question and context.
    with pytest.raises(InputError) as refused:
        paraphrase.predict_batch([question])
    with pytest.raises(InputError) as refused_by_engine:
        engine.predict(question, task="paraphrase")
    assert str(refused.value) == ("task 'paraphrase' (pair_classification) takes a text pair, but a question with a "
                                  "context was given (give it a text pair)")
    assert str(refused_by_engine.value) == str(refused.value)[:-1] + ", or name a task that takes a question with a " \
                                                                     "context: qa)"
    with pytest.raises(InputError, match=r"^context is empty"):
        qa.predict("who sat on the mat", " ")


def test_the_predict_verb_takes_a_task_per_input(trained_project: Path) -> None:
    texts = ["a great film", "my login password"]
    answers = mtlora.predict(trained_project, texts, task=["sentiment", "support"])
    assert [a["task"] for a in answers] == ["sentiment", "support"]
    answers = mtlora.predict(trained_project, texts, task=["sentiment", None], router="keywords")
    assert [a["task"] for a in answers] == ["sentiment", "support"]


def test_long_text_is_truncated_and_says_so(engine: Engine) -> None:
    result = engine.predict("great movie " * 40, task="sentiment")
    assert result["truncated"] is True
    long_context = "the dog sat on the mat . " * 30 + "the cat sat on a city river"
    answer = engine.predict({"question": "who sat on a city river", "context": long_context}, task="qa")
    assert answer["truncated"] is False and answer["answer"] and answer["answer"] in long_context
    # A question that leaves a window less context than the stride is cut (the tokenizer would panic).
    long_question = {"question": "who sat on the mat " * 20, "context": long_context}
    answer = engine.predict(long_question, task="qa")
    assert answer["truncated"] is True and answer["answer"] and answer["answer"] in long_context


def test_a_question_of_few_characters_but_many_tokens_is_cut_too() -> None:
    """A byte-level BPE (RoBERTa's) can give one character several tokens: counting characters would
    let such a question through uncut, and the tokenizer would panic on it."""
    from mtlora.tasks.extractive_qa import _questions_that_fit

    class BytePerToken:  # each UTF-8 byte a token, as a byte-level BPE can split CJK text
        def num_special_tokens_to_add(self, pair: bool) -> int:
            return 4

        def __call__(self, texts: list[str], **kwargs: object) -> dict:
            return {"offset_mapping": [[(i, i + 1) for i, ch in enumerate(t) for _ in ch.encode()] for t in texts]}

    question = "猫" * 10  # 10 characters, 30 tokens
    (cut_question,), (cut,) = _questions_that_fit(BytePerToken(), [{"question": question}], max_length=64,
                                                  doc_stride=32)  # room: 64 - 32 - 4 - 1 = 27 tokens
    assert cut and cut_question == "猫" * 9


def test_a_qa_adapter_whose_stride_leaves_no_room_for_a_question_says_so(trained_project: Path,
                                                                         tmp_path: Path) -> None:
    project = load_config(trained_project)
    registry = mtlora.Registry(tmp_path / "adapters")
    shutil.copytree(project.registry / "qa", registry.path("qa"))
    registry.update("qa", doc_stride=22)  # of max_length 24: as the config allowed before
    engine = Engine(project.backbone, registry, ["qa"], precision="fp32")
    with pytest.raises(InputError, match="leave a window no room for the question; retrain this adapter"):
        engine.predict({"question": "who sat", "context": "the cat sat on the mat"}, task="qa")


def test_unroutable_input_is_not_a_guess(engine: Engine) -> None:
    result = engine.predict("the river of paris", router="keywords")
    assert result["task"] is None and result["unroutable"] is True
    assert "no keyword matched" in result["reason"]


def test_the_only_text_task_still_has_to_win_its_route_and_a_question_is_never_read_for_a_task(
        trained_project: Path) -> None:
    """A plain text fits every text task, so being the one loaded says nothing of it; a question may begin
    with what looks like a task token and is still the QA task's question."""
    engine = Engine.from_config(trained_project, ["sentiment", "qa"], precision="fp32")
    result = engine.predict("the river of paris", router="keywords")
    assert result["task"] is None and result["unroutable"] is True
    question = {"question": "<sentiment> who sat on the mat", "context": "the cat sat on the mat"}
    assert engine.predict(question)["task"] == "qa"
    qa = mtlora.load_predictor(trained_project, "qa")
    with pytest.raises(InputError, match=r"^question is empty"):  # two texts to a QA task: question, context
        qa.predict_batch([(" ", "the cat sat on the mat")])


def test_engine_loads_with_the_learned_router_absent(trained_project: Path) -> None:
    engine = Engine.from_config(trained_project, precision="fp32")
    with pytest.raises(mtlora.RegistryError, match="train-router"):
        engine.predict("loved this movie", router="learned")


def test_project_default_task_catches_what_no_router_places(trained_project: Path) -> None:
    project = load_config(trained_project, overrides={"router": {"default_task": "sentiment"}})
    engine = Engine.from_config(project, precision="fp32")
    result = engine.predict("the river of paris", router="keywords")
    assert result["task"] == "sentiment" and result["route_confidence"] == 0.0
    assert result["route_reason"] == "no keyword matched; fell back to the default task"
    unnamed = engine.predict("the river of paris", router="explicit")  # naming no task is not placing it
    assert unnamed["task"] == "sentiment" and unnamed["route_reason"].startswith("no task named")
    pair = engine.predict(("the river", "of paris"), router="keywords")  # sentiment takes no pairs
    assert pair["task"] is None
    assert pair["reason"].endswith("default task 'sentiment' is not a candidate (not loaded, or takes other inputs)")


@pytest.mark.parametrize("mixed_batches", [True, False], ids=["one-mixed-pass", "folded-per-adapter"])
def test_bf16_engine_answers_like_fp32(trained_project: Path, mixed_batches: bool) -> None:
    """bf16 holds the encoder's linear and LoRA weights in bf16 (what autocast would cast them to) and
    stays within bf16 rounding of fp32; embeddings and norms stay fp32."""
    tasks, items = [task for task, _ in MIXED], [item for _, item in MIXED]
    fp32 = Engine.from_config(trained_project, precision="fp32").predict_batch(items, task=tasks)
    engine = Engine.from_config(trained_project, precision="bf16", mixed_batches=mixed_batches)
    bf16 = engine.predict_batch(items, task=tasks)
    for exact, rounded in zip(fp32, bf16, strict=True):
        assert rounded["task"] == exact["task"]
        for key in ("probabilities", "score"):
            if key in exact:
                assert rounded[key] == pytest.approx(exact[key], abs=0.02), (exact["task"], key)
    dtypes = {name: p.dtype for name, p in engine._encoders.model.named_parameters()}
    assert dtypes["base_model.model.encoder.layer.0.attention.self.query.base_layer.weight"] == torch.bfloat16
    assert dtypes["base_model.model.encoder.layer.0.attention.self.query.lora_A.sentiment.weight"] == torch.bfloat16
    assert dtypes["base_model.model.embeddings.word_embeddings.weight"] == torch.float32
    assert dtypes["base_model.model.encoder.layer.0.output.LayerNorm.weight"] == torch.float32


def test_folded_and_unmerged_lora_answer_alike(trained_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Passes of few tokens run LoRA unmerged, larger ones fold it into the weights: pass by pass, or (on
    CUDA) once per adapter for all of its passes in a call. One row a pass, so each adapter has two."""
    from mtlora.engine import folding

    folds: list[int] = []
    fold = folding._FoldedForward._fold
    monkeypatch.setattr(folding._FoldedForward, "_fold", lambda self, *a, **k: folds.append(1) or fold(self, *a, **k))
    engine = Engine.from_config(trained_project, precision="fp32", mixed_batches=False, batch_size=1)
    tasks, items = [task for task, _ in MIXED], [item for _, item in MIXED]
    answers, folded = {}, {}
    for way, (min_tokens, per_block) in {"unmerged": (10**9, False), "folded per pass": (0, False),
                                         "folded per adapter": (0, True)}.items():
        engine._encoders._fold_min_tokens, engine._encoders._fold_per_block = min_tokens, per_block
        folds.clear()
        answers[way] = engine.predict_batch(items, task=tasks)
        folded[way] = len(folds)
    # The ways differ in what they fold (a test that set settings nothing read compared a way with itself).
    assert folded["unmerged"] == 0 < folded["folded per adapter"] < folded["folded per pass"]
    for way in ("folded per pass", "folded per adapter"):
        for a, b in zip(answers[way], answers["unmerged"], strict=True):
            assert a["task"] == b["task"]
            assert_same(a, b)


def test_fold_cache_keeps_the_most_recently_used_adapters() -> None:
    from mtlora.engine.folding import FoldCache

    cache = FoldCache(adapters=2)
    cache.folded("a")[0] = torch.ones(1)
    cache.folded("b")[0] = torch.ones(1)
    assert 0 in cache.folded("a")  # used again: "b" is now the oldest
    cache.folded("c")[0] = torch.ones(1)
    assert cache.folded("b") == {} and 0 in cache.folded("c")  # "b" was evicted; asking for it evicted "a"
    assert cache.folded("a") == {}
    cache.clear()
    assert cache.folded("c") == {}


def test_auto_shares_passes_unless_folds_are_cached(trained_project: Path) -> None:
    """What bench/infer_speed.py measured faster on a CPU and on an H100: shared passes, or cached folds
    when kept."""
    assert Engine.from_config(trained_project, tasks=["sentiment"], device="cpu").mixed_batches is True
    kept = Engine.from_config(trained_project, tasks=["sentiment"], device="cpu", fold_cache=2)
    assert kept.mixed_batches is False


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("mixed_batches", "sometimes", "mixed_batches: should be true, false or 'auto'; got 'sometimes'"),
    ("mixed_batches", 1, "mixed_batches: should be true, false or 'auto'; got 1"),
    ("precision", "bf61", "precision: Input should be 'auto', 'fp32' or 'bf16'"),
    ("fold_cache", -1, "fold_cache: Input should be greater than or equal to 0"),  # a FoldCache(-1) kept none
    ("batch_size", 0, "batch_size: Input should be greater than 0"),
    ("cuda_graphs", "maybe", "cuda_graphs: Input should be a valid boolean, unable to interpret input")])
def test_engine_settings_are_checked_in_python_too(trained_project: Path, setting: str, value: object,
                                                    message: str) -> None:
    """As the project file's `inference` section is checked, with its messages."""
    with pytest.raises(InputError) as caught:
        Engine.from_config(trained_project, tasks=["sentiment"], **{setting: value})
    assert str(caught.value) == message
    with pytest.raises(mtlora.ConfigError, match=rf"inference\.{message}"):
        load_config(trained_project, overrides={"inference": {setting: value}})


def test_project_inference_settings_reach_the_engine(trained_project: Path) -> None:
    project = load_config(trained_project, overrides={"inference": {"precision": "bf16", "batch_size": 4,
                                                                    "mixed_batches": False, "fold_cache": 2}})
    engine = Engine.from_config(project, tasks=["sentiment"])
    assert (engine.bf16, engine.batch_size, engine.mixed_batches) == (True, 4, False)
    assert engine._encoders.fold_cache is not None and engine._encoders.fold_cache.adapters == 2
    assert not Engine.from_config(project, tasks=["sentiment"], precision="fp32").bf16  # an argument wins
    with pytest.raises(mtlora.ConfigError, match="fold_cache"):
        load_config(trained_project, overrides={"inference": {"fold_cache": -1}})


def test_batches_do_not_pad_short_rows_to_long_ones() -> None:
    from mtlora.batching import length_sorted_batches

    lengths = [40, 256, 35, 250, 38, 120]
    batches = length_sorted_batches(lengths, batch_size=32)
    assert batches == [[1, 3], [5], [0, 4, 2]]
    assert length_sorted_batches([10] * 5, batch_size=2) == [[0, 1], [2, 3], [4]]
    # A handful of short rows: one pass costs less than the padding a second one would save.
    assert length_sorted_batches([30, 20, 14, 12], batch_size=32) == [[0, 1, 2, 3]]


def test_on_cuda_rows_share_passes_unless_padding_costs_more_than_a_pass() -> None:
    """A pass on a GPU costs the host far more than padding costs the device: rows of very different
    lengths share passes (the least padding among the fewest passes), unless one pass would pad more
    than a pass costs."""
    from mtlora.batching import length_sorted_batches, pass_cost_tokens

    lengths = [40, 256, 35, 250, 38, 120, 12]
    cost = pass_cost_tokens(torch.device("cuda"))
    assert length_sorted_batches(lengths, 32, cost) == [[1, 3, 5, 0, 4, 2, 6]]
    assert length_sorted_batches(lengths, 3, cost) == [[1, 3], [5, 0], [4, 2, 6]]
    assert len(length_sorted_batches(lengths, 32)) == 3  # on a CPU padding 12 tokens to 256 costs more
    assert length_sorted_batches([384] + [12] * 31, 32, cost) == [[0], list(range(1, 32))]


def test_batches_are_the_cheapest_cut_of_the_sorted_rows() -> None:
    import itertools
    import random

    from mtlora.batching import PASS_COST_TOKENS, length_sorted_batches

    def cost(batches: list[list[int]], lengths: list[int]) -> int:
        return sum(len(b) * max(lengths[i] for i in b) + PASS_COST_TOKENS for b in batches)

    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.choice([rng.randint(5, 60), rng.randint(100, 256)]) for _ in range(rng.randint(1, 8))]
        batch_size = rng.randint(1, 5)
        batches = length_sorted_batches(lengths, batch_size)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        assert all(len(b) <= batch_size for b in batches)
        order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
        cuts = [list(c) for k in range(len(order)) for c in itertools.combinations(range(1, len(order)), k)]
        cheapest = min(cost([order[a:b] for a, b in zip([0, *c], [*c, len(order)], strict=True)], lengths)
                       for c in cuts
                       if all(b - a <= batch_size for a, b in zip([0, *c], [*c, len(order)], strict=True)))
        assert cost(batches, lengths) == cheapest



def tiny_model(architecture: str, tiny_bert: Path) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2Model

    if architecture == "bert":
        return AutoModel.from_pretrained(tiny_bert)
    return GPT2Model(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2))


@pytest.mark.parametrize(("architecture", "fold"), [("bert", True), ("bert", False), ("gpt2", True)],
                         ids=["folded", "unmerged", "conv1d-left-to-peft"])
def test_folded_lora_computes_what_peft_computes(tiny_bert: Path, architecture: str, fold: bool) -> None:
    """Folding replaces PEFT's LoRA forward: per adapter, the same outputs. GPT-2's Conv1D layers, which
    hold their weights transposed, are not folded but left to PEFT."""
    from peft import LoraConfig, get_peft_model

    from mtlora.engine.folding import folded_lora, lora_layers

    torch.manual_seed(0)
    # Random B as well as A: PEFT's default zero B would make every adapter the base model.
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False,
                        fan_in_fan_out=architecture == "gpt2")
    model = get_peft_model(tiny_model(architecture, tiny_bert), config, adapter_name="one").eval()
    model.add_adapter("two", config)
    layers = lora_layers(model)
    inputs = {"input_ids": torch.randint(5, 60, (3, 7)), "attention_mask": torch.ones(3, 7, dtype=torch.long)}
    with torch.inference_mode():
        for adapter in ("one", "two"):
            model.set_adapter(adapter)
            expected = model(**inputs).last_hidden_state
            model.set_adapter("one" if adapter == "two" else "two")  # folding, not the active adapter, decides
            with folded_lora(layers, adapter, min_tokens=0 if fold else 10**9):
                folded = model(**inputs).last_hidden_state
            torch.testing.assert_close(folded, expected, rtol=1e-5, atol=1e-5)
        with folded_lora(layers, "__base__", min_tokens=0 if fold else 10**9), model.disable_adapter():
            base = model(**inputs).last_hidden_state
        assert not torch.allclose(base, expected, atol=1e-3)  # the adapters do change the outputs


@pytest.mark.parametrize("architecture", ["bert", "gpt2"], ids=["bert", "conv1d-left-to-peft"])
def test_mixed_lora_gives_each_row_what_its_adapter_gives_alone(tiny_bert: Path, architecture: str) -> None:
    """Passes with rows of several adapters (of different ranks and scalings, one with a rank and scaling
    of its own on some layers, one on fewer layers) and a row without any: each row as its adapter
    computes it alone. The first pass skips a wide adapter that sits between its own in the stacks
    (its blocks are gathered); the second reads the stacks' columns as they are."""
    from peft import LoraConfig, get_peft_model

    from mtlora.engine.folding import lora_layers, mixed_lora, stack_lora

    torch.manual_seed(0)
    gpt2 = architecture == "gpt2"
    # Random B as well as A: PEFT's default zero B would make every adapter the base model.
    one = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, fan_in_fan_out=gpt2,
                     **({} if gpt2 else {"rank_pattern": {"key": 2}, "alpha_pattern": {"value": 16}}))
    wide = LoraConfig(r=16, lora_alpha=4, target_modules="all-linear", init_lora_weights=False, fan_in_fan_out=gpt2)
    two = LoraConfig(r=2, lora_alpha=8, target_modules=["c_attn"] if gpt2 else ["query", "value"],
                     init_lora_weights=False, fan_in_fan_out=gpt2)
    model = get_peft_model(tiny_model(architecture, tiny_bert), one, adapter_name="one").eval()
    model.add_adapter("wide", wide)
    model.add_adapter("two", two)
    layers = lora_layers(model)
    stacks = stack_lora(layers)
    alone = {}
    inputs = {"input_ids": torch.randint(5, 60, (5, 7)), "attention_mask": torch.ones(5, 7, dtype=torch.long)}
    with torch.inference_mode():
        for adapter in ("one", "wide", "two"):
            model.set_adapter(adapter)
            alone[adapter] = model(**inputs).last_hidden_state
        with model.disable_adapter():
            alone["__base__"] = model(**inputs).last_hidden_state
        for rows in (["one", "two", "__base__", "one", "two"], ["wide", "one", "two", "wide", "__base__"]):
            with mixed_lora(layers, rows, stacks):
                mixed = model(**inputs).last_hidden_state
            for i, adapter in enumerate(rows):
                torch.testing.assert_close(mixed[i], alone[adapter][i], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(alone["one"], alone["two"], atol=1e-3)  # the adapters do differ


def test_folding_keeps_no_copy_of_the_adapted_weights(tiny_bert: Path) -> None:
    """Folds go into one scratch buffer the size of the largest weight, which the block lets go: at rest
    only the backbone and the adapters stay in memory."""
    from peft import LoraConfig, get_peft_model

    from mtlora.engine.folding import folded_lora, lora_layers

    config = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(AutoModel.from_pretrained(tiny_bert), config, adapter_name="one").eval()
    layers = lora_layers(model)
    inputs = {"input_ids": torch.randint(5, 60, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    with torch.inference_mode():
        with folded_lora(layers, "one"):
            model(**inputs)
            scratch = layers[0].forward.scratch
            largest = max(layer.get_base_layer().weight.numel() for layer in layers)
            assert [tensor.numel() for tensor in scratch.values()] == [largest]
            kept = [weakref.ref(tensor) for tensor in scratch.values()]
            del scratch
        gc.collect()
    assert all(ref() is None for ref in kept)


def test_lora_on_an_embedding_is_refused(tiny_project: Path) -> None:
    """PEFT applies an embedding's LoRA to every row of a pass, other adapters' rows too: the engine refuses it."""
    config = yaml.safe_load(tiny_project.read_text())
    config["tasks"][0]["lora"] = {"target_modules": ["query", "value", "word_embeddings"], "saved_rank": None}
    config["tasks"][0]["training"] = {"epochs": 1}
    tiny_project.write_text(yaml.safe_dump(config))
    for task in ("sentiment", "support"):
        mtlora.train(tiny_project, task, baseline=False, progress=False, log=lambda _: None)
    project = load_config(tiny_project)
    engine = Engine(project.backbone, mtlora.Registry(project.registry), ["support"], precision="fp32")
    with pytest.raises(mtlora.RegistryError, match=r"'sentiment' puts LoRA on layers other than linear ones "
                                                   r"\(.*word_embeddings\).*mtlora merge"):
        engine.add("sentiment")
    assert engine.tasks == ["support"]
    # A reload to such a version is refused before the loaded one goes: it keeps serving.
    registry = mtlora.Registry(project.registry)
    before = engine.predict("where is my refund", task="support")
    shutil.rmtree(registry.path("support"))
    shutil.copytree(registry.path("sentiment"), registry.path("support"))
    with pytest.raises(mtlora.RegistryError, match="'support' puts LoRA on layers other than linear ones"):
        engine.reload("support")
    assert engine.tasks == ["support"]
    assert_same(engine.predict("where is my refund", task="support"), before)


def test_an_adapter_saved_again_while_it_loads_is_not_half_loaded(trained_project: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Checked, then read: a retrain finishing in between must not pair one manifest with other weights."""
    from mtlora.engine import encoder as encoder_module

    project = load_config(trained_project)
    registry = mtlora.Registry(tmp_path / "adapters")
    shutil.copytree(project.registry / "sentiment", registry.path("sentiment"))
    engine = Engine(project.backbone, registry, [], precision="fp32")
    real_load = encoder_module.load_file

    def load_during_a_save(path: object) -> dict:
        loaded = real_load(path)
        manifest = registry.manifest("sentiment").model_copy(update={"created_at": "retrained"})
        registry.save("sentiment", lambda folder: shutil.copytree(
            project.registry / "sentiment", folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("manifest.json")),
            manifest)
        return loaded

    monkeypatch.setattr(encoder_module, "load_file", load_during_a_save)
    with pytest.raises(mtlora.RegistryError, match="'sentiment' was saved again while it was being loaded"):
        engine.add("sentiment")
    monkeypatch.setattr(encoder_module, "load_file", real_load)
    engine.add("sentiment")  # the new one, whole
    assert engine.manifest("sentiment").created_at == "retrained"


# The copy is DoRA by its config only: it has no magnitude vectors, which PEFT warns about when merging.
@pytest.mark.filterwarnings("ignore:Found missing adapter keys")
def test_a_lora_variant_is_refused_and_the_engine_serves_on(trained_project: Path, tmp_path: Path) -> None:
    """DoRA's maths is not W + scaling·B·A: folding it would answer wrongly, so `add` refuses it, and
    leaves the engine as it was."""
    from mtlora.registry.store import sha256_file

    project = load_config(trained_project)
    registry = mtlora.Registry(tmp_path / "adapters")
    for name in ("sentiment", "dora"):
        shutil.copytree(mtlora.Registry(project.registry).path("sentiment"), registry.path(name))
    config_file = registry.path("dora") / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "use_dora": True}))
    files = registry.manifest("dora").files
    registry.update("dora", name="dora", files={**files, config_file.name: sha256_file(config_file)})

    engine = Engine(project.backbone, registry, ["sentiment"], precision="fp32")
    before = engine.predict("loved this great movie", task="sentiment")
    for _ in range(2):  # the refused adapter left nothing behind that would make a second try fail otherwise
        with pytest.raises(mtlora.RegistryError, match=r"'dora' uses a LoRA variant \(DoRA\).*merge"):
            engine.add("dora")
    assert engine.tasks == ["sentiment"]
    assert_same(engine.predict("loved this great movie", task="sentiment"), before)
    with pytest.raises(mtlora.RegistryError, match="LoRA variant"):  # the only adapter: the backbone is bare again
        Engine(project.backbone, registry, ["dora"], precision="fp32")
    assert (engine.merge("dora", tmp_path / "dora-merged") / "config.json").is_file()  # what the error offers
    # And without an engine, as `mtlora merge` exports: one that loaded the adapter first refused it.
    here = project.model_copy(update={"registry": registry.root})
    assert (mtlora.merge(here, "dora", tmp_path / "by-api") / "config.json").is_file()


def test_a_tokenizer_saved_padding_and_truncating_left_works_on_the_right(tmp_path: Path) -> None:
    """QA spans and heads read token positions from the left: a left-padding tokenizer (XLNet, an
    LLM's) moved every short row's tokens and gave batched answers other than one-at-a-time ones. One
    truncating on the left would cut the start of a text that the result says was cut at its end."""
    from conftest import write_tiny_bert

    from mtlora.backbone import load_tokenizer

    folder = write_tiny_bert(tmp_path / "left")
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**settings, "padding_side": "left",
                                                              "truncation_side": "left"}))
    saved = AutoTokenizer.from_pretrained(folder)
    assert (saved.padding_side, saved.truncation_side) == ("left", "left")
    tokenizer = load_tokenizer(str(folder))
    batch = tokenizer(["the cat", "the cat sat on the mat"], padding=True)
    assert batch["input_ids"][0][:4] == tokenizer("the cat")["input_ids"]
    cut = tokenizer("the cat sat on the mat", truncation=True, max_length=4)["input_ids"]
    assert cut[:3] == tokenizer("the cat")["input_ids"][:3]


def test_a_backbone_whose_rows_share_an_adapted_input_answers_mixed_calls_per_adapter(
        tmp_path: Path, tiny_bert: Path, caplog: pytest.LogCaptureFixture) -> None:
    """DeBERTa runs its relative-position embeddings, one tensor for all rows, through its adapted query and
    key layers: a shared pass crashed on every mixed call, the CPU default."""
    from conftest import trained_briefly, write_tiny_project
    from transformers import DebertaV2Config, DebertaV2Model

    folder = tmp_path / "deberta"
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(folder)
    DebertaV2Model(DebertaV2Config(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, relative_attention=True, position_buckets=8,
                                   pos_att_type=["p2c", "c2p"], share_att_key=True)).save_pretrained(folder)
    items, tasks = ["loved this great movie", "where is my refund"], ["sentiment", "support"]
    path = trained_briefly(write_tiny_project(tmp_path, folder), tasks)
    engine = Engine.from_config(path, precision="fp32", mixed_batches=True)
    assert_answers_as_alone(engine, path, items, tasks)
    assert "passes of their own" in caplog.text and not engine.mixed_batches


def test_a_backbone_transformers_cannot_run_in_bf16_trains_and_answers_in_fp32_under_auto(
        tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DeBERTa (v1) fails under bf16 in transformers itself ("value cannot be converted to type c10::BFloat16
    without overflow"), and 'auto' picks bf16 on CUDA and on CPUs with native bf16: the defaults crashed in
    training, routing and serving alike. An explicit 'bf16' is refused with the way out."""
    from conftest import trained_briefly, write_tiny_project
    from transformers import DebertaConfig, DebertaModel

    from mtlora import backbone

    folder = tmp_path / "deberta-v1"
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(folder)
    DebertaModel(DebertaConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, relative_attention=True, max_relative_positions=16,
                               pos_att_type=["p2c", "c2p"])).save_pretrained(folder)
    monkeypatch.setattr(backbone, "bf16_supported", lambda device: True)  # as on CUDA
    cpu = torch.device("cpu")
    assert backbone.use_bf16("auto", cpu, str(tiny_bert)) and not backbone.use_bf16("auto", cpu, str(folder))
    with pytest.raises(mtlora.ConfigError, match=r"deberta models in bf16 \(huggingface/transformers#35332\); set"):
        backbone.use_bf16("bf16", cpu, str(folder))
    path = write_tiny_project(tmp_path, folder)
    config = yaml.safe_load(path.read_text())
    config["tasks"][-1]["training"]["precision"] = "bf16"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(mtlora.ConfigError, match="transformers#35332"):  # before the first task trains
        mtlora.train(path, progress=False, log=lambda _: None)
    assert not (tmp_path / "adapters").exists() or not any((tmp_path / "adapters").iterdir())
    del config["tasks"][-1]["training"]["precision"]
    config["defaults"]["training"]["precision"] = config["inference"]["precision"] = "auto"
    path.write_text(yaml.safe_dump(config))
    trained_briefly(path, ["sentiment", "support"])
    engine = Engine.from_config(path)
    assert not engine.bf16
    with pytest.raises(mtlora.ConfigError, match="set precision: fp32"):  # serving asked for bf16 by name
        Engine.from_config(path, precision="bf16")
    assert [r["task"] for r in engine.predict(["loved this great movie", "where is my refund"],
                                              task=["sentiment", "support"])] == ["sentiment", "support"]


@pytest.mark.parametrize("mixed_batches", [True, False])
def test_a_backbone_whose_config_names_no_pad_token_trains_and_answers_batches(
        tmp_path: Path, tiny_bert: Path, mixed_batches: bool) -> None:
    """GPT-2's tokenizer has no pad token and its checkpoints name none, and their classification heads,
    which find each row's last token by it, refused any batch of two: training crashed at its first step."""
    from conftest import WORDS, trained_briefly, write_tiny_project
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2Model, GPT2TokenizerFast

    folder = tmp_path / "gpt2"
    bpe = Tokenizer(models.BPE())  # byte-level BPE as GPT-2's, trained here: its own files are not offline
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    bpe.train_from_iterator([" ".join(WORDS)] * 10, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    GPT2TokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                      unk_token="<|endoftext|>").save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    GPT2Model(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                         bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
              ).save_pretrained(folder)
    assert tokenizer.pad_token is None and GPT2Config.from_pretrained(folder).pad_token_id is None
    items, tasks = ["loved this great movie", "where is my refund", "great", "my login password"], \
        ["sentiment", "support", "sentiment", "support"]
    path = trained_briefly(write_tiny_project(tmp_path, folder), ["sentiment", "support"])
    engine = Engine.from_config(path, precision="fp32", mixed_batches=mixed_batches)
    assert_answers_as_alone(engine, path, items, tasks)


def test_an_albert_adapter_with_a_pooler_of_its_own_is_refused_with_the_reason(tmp_path: Path,
                                                                                 tiny_bert: Path) -> None:
    """ALBERT's pooler is a bare linear layer (its tanh lives in the model's forward): the head stand-in
    cannot run it, so such an adapter is refused rather than served with a wrong pooling."""
    from conftest import trained_briefly, write_tiny_project
    from transformers import AlbertConfig, AlbertForMaskedLM

    folder = tmp_path / "albert"
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(folder)
    AlbertForMaskedLM(AlbertConfig(vocab_size=200, embedding_size=16, hidden_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=64)).save_pretrained(folder)
    path = trained_briefly(write_tiny_project(tmp_path, folder), ["sentiment"])
    with pytest.raises(mtlora.AdapterNotServableError, match=r"trained a pooler of its own \(albert"):
        Engine.from_config(path, precision="fp32")


def test_adapters_of_a_checkpoint_without_a_pooler_serve_with_their_own(tmp_path: Path, tiny_bert: Path) -> None:
    """A BERT saved from BertForMaskedLM has no pooler: each adapter trains one in full, which the engine
    refused as a retrained shared weight, so no task of the project could be served."""
    from conftest import trained_briefly, write_tiny_project
    from transformers import BertForMaskedLM

    folder = tmp_path / "mlm"
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(folder)
    BertForMaskedLM(AutoModel.from_pretrained(tiny_bert).config).save_pretrained(folder)
    items, tasks = ["loved this great movie", ("the cat sat", "a cat sat")], ["sentiment", "paraphrase"]
    path = trained_briefly(write_tiny_project(tmp_path, folder), tasks)
    assert_answers_as_alone(Engine.from_config(path, precision="fp32"), path, items, tasks)


def test_a_tokenizer_a_kind_refuses_stops_its_adapter_loading(trained_project: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A QA adapter on tokenizers 0.23.2 is refused when it loads (so `serve` does not start), not at each
    request it would then fail."""
    from mtlora.errors import MtloraError
    from mtlora.tasks.extractive_qa import ExtractiveQATask

    def refuse(self, tokenizer, where):
        raise MtloraError("windows stop short")

    monkeypatch.setattr(ExtractiveQATask, "check_tokenizer", refuse)
    engine = Engine.from_config(trained_project, tasks=["sentiment"])
    with pytest.raises(MtloraError, match="windows stop short"):
        engine.add("qa")
    assert engine.tasks == ["sentiment"]
