"""Training: loss falls for every kind, adapters round-trip through the registry, resume is exact."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import AutoModel, AutoModelForSequenceClassification, TrainerControl
from transformers.trainer_utils import get_last_checkpoint

import mtlora
from mtlora import load_config
from mtlora.modeling import load_adapter_model
from mtlora.registry import Registry
from mtlora.training import TrainingInterrupted, TrainOutcome, callbacks, train_task
from mtlora.training import trainer as trainer_module

QUIET = {"progress": False, "log": lambda _: None}
INPUTS = {
    "sentiment": ["loved this great movie", "terrible boring film"],
    "support": ["where is my refund", "my login password"],
    "paraphrase": [("the cat sat on the mat", "a cat sat on a mat"), ("paris river", "login charge")],
    "similarity": [("the dog sat", "the dog sat"), ("my order", "where is my refund")],
    "qa": [("who sat on the mat", "the cat sat on the mat"), ("what is paris", "paris is a city")],
}


@pytest.mark.parametrize("task", ["sentiment", "paraphrase", "similarity", "qa"])
def test_loss_falls_for_every_kind(tiny_project: Path, task: str) -> None:
    config = load_config(tiny_project)
    outcome = train_task(config, config.task(task), "lora", **QUIET)
    losses = [loss for _, loss in outcome.losses]
    assert len(losses) >= 12
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.7 * first, losses
    assert 0 < outcome.trainable < 0.2 * outcome.total


def test_training_inputs_cut_at_max_length_are_counted(tiny_project: Path) -> None:
    config = load_config(tiny_project)
    task = config.task("sentiment")
    task = task.model_copy(update={"training": task.training.model_copy(update={"max_length": 4, "max_steps": 1})})
    said: list[str] = []
    train_task(config, task, "lora", progress=False, log=said.append)
    cut = [line for line in said if "run past max_length 4 tokens and are cut to it" in line]
    # "wonderful film", twice, fills the 4 tokens exactly ([CLS] wonderful film [SEP]): not cut.
    assert cut and cut[0].startswith("[sentiment] 14 of 16 training inputs (87.5%)"), said


def test_a_length_past_the_backbones_positions_or_a_later_tasks_bad_data_stops_train_before_any_task(
        tiny_project: Path) -> None:
    """Both used to surface late: the length at the first input that long (in training, or when serving),
    the data of the last task after every task before it had trained."""
    import yaml

    from mtlora.errors import ConfigError, DataError, TaskProblems

    config = yaml.safe_load(tiny_project.read_text())
    config["tasks"][1]["training"] = {"max_length": 129}  # the tiny BERT has 128 positions
    tiny_project.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"^tasks\.support\.training\.max_length: 129 tokens, but backbone .+ reads "
                                          r"at most 128 \(its position embeddings\); set max_length: 128 or less"):
        mtlora.train(tiny_project, **QUIET)
    config["tasks"][1]["training"] = {}
    config["tasks"][-1]["data"]["train"] = "missing.jsonl"
    tiny_project.write_text(yaml.safe_dump(config))
    with pytest.raises(DataError, match=r"missing\.jsonl"):
        mtlora.train(tiny_project, **QUIET)
    # Several tasks' problems come at once, each under its task: not one per run.
    config["tasks"][1]["training"] = {"max_length": 129}
    tiny_project.write_text(yaml.safe_dump(config))
    last = config["tasks"][-1]["name"]
    with pytest.raises(TaskProblems, match=rf"^2 tasks cannot train, so none was trained:\n"
                                           rf"  - support: tasks\.support\.training\.max_length: 129 tokens.*\n"
                                           rf"  - {last}: .*missing\.jsonl") as caught:
        mtlora.train(tiny_project, **QUIET)
    assert list(caught.value.problems) == ["support", last]
    assert Registry(tiny_project.parent / "adapters").names() == []


def test_a_max_length_of_exactly_the_backbones_positions_is_taken(tiny_project: Path) -> None:
    """max_length: 512 on a 512-position BERT is the usual setting: only a length past them is refused."""
    from transformers import AutoConfig

    config = load_config(tiny_project, overrides={"defaults": {"training": {"max_length": 128}}})
    trainer_module.check_max_length(config.task("sentiment"), config.backbone,
                                    AutoConfig.from_pretrained(config.backbone))

def test_lora_target_modules_naming_no_layer_list_the_backbones_own(tiny_project: Path) -> None:
    from mtlora.errors import ConfigError

    config = load_config(tiny_project)
    task = config.task("sentiment")
    task = task.model_copy(update={"lora": task.lora.model_copy(update={"target_modules": ["q_proj", "v_proj"]})})
    with pytest.raises(ConfigError, match=r"^lora\.target_modules \['q_proj', 'v_proj'\]: no layer of backbone .+ "
                                          r"linear layers are named dense, key, query, value: name some of them"):
        train_task(config, task, "lora", **QUIET)


def test_readable_tokens_follow_each_familys_positions() -> None:
    from transformers import BertConfig, DebertaV2Config, EncoderDecoderConfig, RobertaConfig, T5Config

    from mtlora.backbone import readable_tokens

    bert = BertConfig(max_position_embeddings=128)
    assert readable_tokens(bert) == 128
    assert readable_tokens(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512
    assert readable_tokens(EncoderDecoderConfig.from_encoder_decoder_configs(bert, BertConfig())) == 128
    assert readable_tokens(T5Config()) is None  # relative positions read any length
    assert readable_tokens(DebertaV2Config(position_biased_input=False)) is None


def test_train_lets_each_model_go_once_stored(tiny_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training many tasks must hold one model at a time: on a GPU the models would otherwise fill it."""
    made: list[weakref.ref] = []

    def recording(*args: Any, **kwargs: Any) -> TrainOutcome:
        outcome = train_task(*args, **kwargs)
        made.append(weakref.ref(outcome.model))
        return outcome

    monkeypatch.setattr(mtlora.api, "train_task", recording)
    outcomes = mtlora.train(tiny_project, "sentiment", baseline=True, **QUIET)
    assert [(o.method, o.model) for o in outcomes] == [("lora", None), ("head_only", None)]
    assert len(made) == 2 and all(ref() is None for ref in made)


@pytest.mark.parametrize("task", ["sentiment", "paraphrase", "similarity", "qa"])
def test_round_trip_matches_the_model_in_memory(tiny_project: Path, task: str) -> None:
    """Save -> load: the stored adapter, head included, computes what the trained model in memory did."""
    config = load_config(tiny_project, overrides={"defaults": {"training": {"max_steps": 4, "baseline": False}}})
    outcome = train_task(config, config.task(task), "lora", **QUIET)
    loaded, _, _ = load_adapter_model(Registry(config.registry), task, config.backbone)
    device = outcome.model.device  # the trainer leaves the model on the GPU where there is one
    tokenizer = mtlora.backbone.load_tokenizer(config.backbone)
    texts = INPUTS[task]
    pairs = [list(column) for column in zip(*texts, strict=True)] if isinstance(texts[0], tuple) else [texts]
    batch = tokenizer(*pairs, padding=True, return_tensors="pt").to(device)
    with torch.inference_mode():
        trained, stored = outcome.model.eval()(**batch), loaded.to(device)(**batch)
    for name in ("start_logits", "end_logits") if task == "qa" else ("logits",):
        torch.testing.assert_close(trained[name], stored[name], rtol=0, atol=1e-6)


def test_a_backbone_stored_in_fp16_trains_and_serves_in_fp32(tmp_path: Path, tiny_bert: Path) -> None:
    """transformers loads a checkpoint in the dtype it is stored in: an fp16 one failed at its first
    LayerNorm on a CPU ("mixed dtype"), where training and inference need fp32 weights."""
    from conftest import write_tiny_project

    half = tmp_path / "half-bert"
    shutil.copytree(tiny_bert, half)
    AutoModel.from_pretrained(tiny_bert).half().save_pretrained(half)
    config = load_config(write_tiny_project(tmp_path, half))
    outcome = train_task(config, config.task("sentiment"), "lora", **QUIET)
    assert all(math.isfinite(loss) for _, loss in outcome.losses)
    predictor = mtlora.load_predictor(config, "sentiment")
    assert {p.dtype for p in predictor.model.parameters()} == {torch.float32}
    engine = mtlora.Engine.from_config(config, ["sentiment"], precision="fp32")
    served = engine.predict_batch(INPUTS["sentiment"], task="sentiment")
    alone = predictor.predict_batch(INPUTS["sentiment"])
    for ours, theirs in zip(served, alone, strict=True):
        assert ours["label"] == theirs["label"]
        assert ours["confidence"] == pytest.approx(theirs["confidence"], abs=1e-5)


@pytest.mark.parametrize("task", ["sentiment", "similarity"])  # 2 labels, and a regression's one output
def test_adapter_loads_with_plain_peft_as_the_readme_shows(trained_project: Path, task: str) -> None:
    config = load_config(trained_project)
    manifest = json.loads((config.registry / task / "manifest.json").read_text())
    base = AutoModelForSequenceClassification.from_pretrained(config.backbone, **manifest["model_kwargs"])
    ours = mtlora.load_predictor(config, task)
    model = PeftModel.from_pretrained(base, config.registry / task).to(ours.device).eval()
    columns = [list(column) for column in zip(*INPUTS[task], strict=True)] if task == "similarity" else [INPUTS[task]]
    batch = ours.tokenizer(*columns, padding=True, return_tensors="pt").to(ours.device)
    with torch.inference_mode():
        torch.testing.assert_close(model(**batch).logits, ours.model(**batch).logits, rtol=0, atol=1e-6)


def test_a_finished_training_leaves_no_work_folders_in_the_registry(trained_project: Path) -> None:
    registry = load_config(trained_project).registry
    assert not (registry / ".runs").exists() and not (registry / ".staging").exists()


def test_manifest_records_what_a_user_needs(trained_project: Path) -> None:
    manifest = mtlora.show_adapter(trained_project, "sentiment")
    assert manifest.kind == "classification" and manifest.labels == ["negative", "positive"]
    assert manifest.base_fingerprint.startswith("sha256:") and len(manifest.base_fingerprint) == 71
    assert manifest.lora["r"] == 4
    assert 0 < manifest.parameters.trainable < manifest.parameters.total
    assert manifest.training["steps"] > 0 and manifest.training["time_s"] > 0
    assert manifest.training["processes"] == 1 and manifest.training["effective_batch_size"] == 4
    assert "adapter_model.safetensors" in manifest.files and "adapter_config.json" in manifest.files
    assert manifest.created_at and manifest.example_inputs
    assert manifest.modules_to_save == ["classifier"]  # PEFT extends the list it is given, in place


def final_adapter_state(project: Path, name: str) -> dict[str, torch.Tensor]:
    config = load_config(project)
    model, _, _ = load_adapter_model(Registry(config.registry), name, config.backbone)
    return {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k or "classifier" in k}


def stop_at_step(step: int, how: type[BaseException] | None):
    """Stop training after `step` as a Ctrl-C (how=None) or a crash (an exception) would."""
    original = callbacks.StopOnSignal.on_step_end

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == step:
            if how is not None:
                raise how("simulated crash")
            self.requested = True
        return original(self, args, state, control, **kwargs)

    return on_step_end


@pytest.mark.parametrize("interruption", ["ctrl_c", "crash"])
def test_resume_after_interruption_ends_with_the_same_weights(
    tiny_bert: Path, tmp_path: Path, monkeypatch, interruption: str
) -> None:
    from conftest import write_tiny_project

    straight = write_tiny_project(tmp_path / "straight", tiny_bert)
    mtlora.train(straight, "sentiment", baseline=False, **QUIET)
    expected = final_adapter_state(straight, "sentiment")

    resumed = write_tiny_project(tmp_path / "resumed", tiny_bert)
    # checkpoint_every is 3: a crash at step 4 loses step 4, Ctrl-C at step 4 saves it.
    how = None if interruption == "ctrl_c" else RuntimeError
    with monkeypatch.context() as patch:
        patch.setattr(callbacks.StopOnSignal, "on_step_end", stop_at_step(4, how))
        with pytest.raises(TrainingInterrupted if how is None else RuntimeError):
            mtlora.train(resumed, "sentiment", baseline=False, **QUIET)
    assert not (load_config(resumed).registry / "sentiment").exists()

    checkpoint = Path(get_last_checkpoint(str(Registry(load_config(resumed).registry).run_path("sentiment", "lora"))))
    spent_before = json.loads((checkpoint / callbacks.RunClock.FILE).read_text())["elapsed_s"]
    messages: list[str] = []
    (outcome,) = mtlora.train(resumed, "sentiment", baseline=False, progress=False, log=messages.append)
    assert outcome.time_s > spent_before > 0  # the time covers the whole run, not only the resumed part
    step = 4 if how is None else 3
    assert any("Resuming from" in m and f"(step {step})" in m for m in messages), messages
    actual = final_adapter_state(resumed, "sentiment")
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-6, msg=key)
    # The loss reported covers the whole run too, not only the steps after the resume.
    whole, split = (mtlora.show_adapter(p, "sentiment").training for p in (straight, resumed))
    assert split["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-4)



def test_a_run_stopped_at_its_last_step_resumes_to_the_same_end(tiny_bert: Path, tmp_path: Path, monkeypatch) -> None:
    """max_steps 6 at 4 steps an epoch, Ctrl-C at step 6: resumed from that step's checkpoint, the Trainer
    trained a 7th step (it resumes into the partial epoch and checks max_steps only after a step)."""
    import yaml
    from conftest import write_tiny_project

    runs = []
    for name in ("straight", "resumed"):
        project = write_tiny_project(tmp_path / name, tiny_bert)
        raw = yaml.safe_load(project.read_text())
        raw["defaults"]["training"].update(max_steps=6)  # checkpoint_every is 3
        project.write_text(yaml.safe_dump(raw, sort_keys=False))
        messages: list[str] = []
        if name == "resumed":
            with monkeypatch.context() as patch:
                patch.setattr(callbacks.StopOnSignal, "on_step_end", stop_at_step(6, None))
                with pytest.raises(TrainingInterrupted):
                    mtlora.train(project, "sentiment", baseline=False, **QUIET)
        (outcome,) = mtlora.train(project, "sentiment", baseline=False, progress=False, log=messages.append)
        runs.append((outcome.steps, final_adapter_state(project, "sentiment"), messages))
    (steps, expected, _), (resumed_steps, actual, messages) = runs
    assert steps == resumed_steps == 6
    assert any("Resuming from" in m and "(step 3)" in m for m in messages), messages
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-6, msg=key)


def test_the_run_clock_carries_the_time_spent_before_a_resume(tmp_path: Path) -> None:
    """The manifest's training time is the whole run's: a resumed run counting from zero under-reports it."""
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    (checkpoint / callbacks.RunClock.FILE).write_text(json.dumps({"elapsed_s": 1000.0}))
    assert 1000.0 <= callbacks.RunClock(str(checkpoint)).elapsed() < 1010.0
    assert callbacks.RunClock(None).elapsed() < 10.0

def test_the_last_step_is_logged_whatever_the_cadence(tiny_bert: Path, tmp_path: Path) -> None:
    """The whole-run loss is read from the logged losses, so they must reach the last step."""
    import yaml
    from conftest import write_tiny_project

    project = write_tiny_project(tmp_path, tiny_bert)
    raw = yaml.safe_load(project.read_text())
    raw["defaults"]["training"].update(log_every=1000, checkpoint_every=1000)
    project.write_text(yaml.safe_dump(raw, sort_keys=False))
    (outcome,) = mtlora.train(project, "sentiment", baseline=False, **QUIET)
    assert [step for step, _ in outcome.losses] == [outcome.steps]
    assert outcome.train_loss == pytest.approx(outcome.losses[0][1], rel=1e-6)


def test_each_logged_loss_records_the_steps_it_averages_across_resumes(tiny_bert: Path, tmp_path: Path,
                                                                       monkeypatch) -> None:
    """Logs every 2 steps, checkpoints every 3, crashes at steps 5 and 7: the log of step 4 averages step 4
    alone (its run resumed at 3), which neither its step nor the log before it tells."""
    import yaml
    from conftest import write_tiny_project

    project = write_tiny_project(tmp_path, tiny_bert)
    raw = yaml.safe_load(project.read_text())
    raw["defaults"]["training"].update(log_every=2, checkpoint_every=3)
    project.write_text(yaml.safe_dump(raw, sort_keys=False))
    for step in (5, 7):
        with monkeypatch.context() as patch:
            patch.setattr(callbacks.StopOnSignal, "on_step_end", stop_at_step(step, RuntimeError))
            with pytest.raises(RuntimeError):
                mtlora.train(project, "sentiment", baseline=False, **QUIET)
    runs = Registry(load_config(project).registry).run_path("sentiment", "lora")
    state = json.loads((Path(get_last_checkpoint(str(runs))) / "trainer_state.json").read_text())
    assert [(e["step"], e["loss_steps"]) for e in state["log_history"] if "loss" in e] == [(2, 2), (4, 1), (6, 2)]


def test_an_interrupted_run_keeps_only_its_last_two_checkpoints(tiny_bert: Path, tmp_path: Path, monkeypatch) -> None:
    """A long run checkpoints many times, each checkpoint with its optimizer state: kept all, they would fill
    the disk. A run resumes from its last."""
    import yaml
    from conftest import write_tiny_project

    project = write_tiny_project(tmp_path, tiny_bert)
    raw = yaml.safe_load(project.read_text())
    raw["defaults"]["training"].update(checkpoint_every=1)
    project.write_text(yaml.safe_dump(raw, sort_keys=False))
    with monkeypatch.context() as patch:
        patch.setattr(callbacks.StopOnSignal, "on_step_end", stop_at_step(5, RuntimeError))
        with pytest.raises(RuntimeError):
            mtlora.train(project, "sentiment", baseline=False, **QUIET)
    runs = Registry(load_config(project).registry).run_path("sentiment", "lora")
    assert sorted(path.name for path in runs.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]


@pytest.mark.parametrize(("logged", "expected"), [
    ([{"step": 2, "loss": 1.0, "loss_steps": 2}, {"step": 4, "loss": 0.5, "loss_steps": 2},
      {"step": 5, "loss": 0.2, "loss_steps": 1}], (2 * 1.0 + 2 * 0.5 + 0.2) / 5),
    # Two resumes, at 3 and at 9 (checkpoints every 3, logs every 2): steps 3 and 9 were never logged.
    ([{"step": 2, "loss": 1.0, "loss_steps": 2}, {"step": 4, "loss": 0.5, "loss_steps": 1},
      {"step": 6, "loss": 0.4, "loss_steps": 2}, {"step": 8, "loss": 0.3, "loss_steps": 2},
      {"step": 10, "loss": 0.2, "loss_steps": 1}], (2 * 1.0 + 0.5 + 2 * 0.4 + 2 * 0.3 + 0.2) / 8),
    # A checkpoint of an mtlora that recorded no step counts: each log counts from the one before.
    ([{"step": 2, "loss": 1.0}, {"step": 4, "loss": 0.5}], (2 * 1.0 + 2 * 0.5) / 4),
    ([], 0.7),
])
def test_whole_run_loss_weights_each_log_by_the_steps_it_averages(logged: list[dict], expected: float) -> None:
    assert callbacks.whole_run_loss(logged, unlogged=0.7) == pytest.approx(expected)


def test_a_short_last_log_alone_does_not_make_training_look_diverged(tiny_bert: Path, tmp_path: Path,
                                                                     monkeypatch) -> None:
    """The last step's log may average one step: judged like a full one, one noisy step read as a
    diverged run."""
    import yaml
    from conftest import write_tiny_project

    project = write_tiny_project(tmp_path, tiny_bert)
    raw = yaml.safe_load(project.read_text())
    raw["defaults"]["training"].update(log_every=5)
    project.write_text(yaml.safe_dump(raw, sort_keys=False))
    judged: list[list[tuple[int, float]]] = []
    monkeypatch.setattr(trainer_module, "loss_warning", lambda losses: judged.append(losses))
    (outcome,) = mtlora.train(project, "sentiment", baseline=False, **QUIET)
    assert outcome.steps % 5 != 0 and outcome.losses[-1][0] == outcome.steps  # a short last log exists
    assert judged == [outcome.losses[:-1]]

def test_changed_settings_start_over_instead_of_resuming(tiny_project: Path, monkeypatch) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(callbacks.StopOnSignal, "on_step_end", stop_at_step(3, None))
        with pytest.raises(TrainingInterrupted):
            mtlora.train(tiny_project, "sentiment", baseline=False, **QUIET)
    messages: list[str] = []
    # What cannot change a training step does not start it over: routing hints, evaluation settings.
    config = load_config(tiny_project, overrides={"defaults": {"training": {"eval_batch_size": 3}}})
    config.tasks[0].routing.keywords.append("cinema")
    dev = tiny_project.parent / "data" / "sentiment_dev.jsonl"
    dev.write_text("".join((tiny_project.parent / "data" / "sentiment.jsonl").read_text().splitlines(True)[:4]))
    config.tasks[0].data.validation = config.tasks[0].data.validation.model_copy(update={"path": dev.name})
    with monkeypatch.context() as patch:
        patch.setattr(callbacks.StopOnSignal, "on_step_end", stop_at_step(5, None))
        with pytest.raises(TrainingInterrupted):
            mtlora.train(config, "sentiment", baseline=False, progress=False, log=messages.append)
    assert any("Resuming from" in m for m in messages), messages
    # Changed training rows start over, as a changed setting does; `fresh` starts over whatever changed.
    data = tiny_project.parent / "data" / "sentiment.jsonl"
    data.write_text(data.read_text() + '{"text": "a fine film", "label": "positive"}\n')
    for changes in ({}, {"fresh": True}):
        messages = []
        with monkeypatch.context() as patch:
            patch.setattr(callbacks.StopOnSignal, "on_step_end", stop_at_step(3, None))
            with pytest.raises(TrainingInterrupted):
                mtlora.train(tiny_project, "sentiment", baseline=False, progress=False, log=messages.append,
                             **changes)
        assert not any("Resuming from" in m for m in messages), messages
    config = load_config(tiny_project, overrides={"defaults": {"training": {"lr": 1e-2}}})
    mtlora.train(config, "sentiment", baseline=False, progress=False, log=messages.append)
    assert any("settings or the training data changed" in m for m in messages), messages


def test_a_result_trained_with_the_same_settings_and_data_is_kept_not_trained_again(tiny_project: Path,
                                                                                      monkeypatch) -> None:
    """`mtlora train` run again, as after an interruption: what finished before is kept, the interrupted
    run resumes, and anything whose settings or data changed trains again."""
    config = load_config(tiny_project, overrides={"defaults": {"training": {"epochs": 2}}})
    first = mtlora.train(config, "sentiment", **QUIET)
    registry = Registry(config.registry)
    folders = (registry.path("sentiment"), registry.baseline_path("sentiment"))
    stored = {path: path.read_bytes() for folder in folders for path in folder.rglob("*") if path.is_file()}
    trained: list[str] = []
    original = trainer_module._fit

    def counted(task, method, *args, **kwargs):
        trained.append(method)
        return original(task, method, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "_fit", counted)
    messages: list[str] = []
    kept = mtlora.train(config, "sentiment", progress=False, log=messages.append)
    assert trained == [] and [o.method for o in kept] == ["lora", "head_only"] and all(o.kept for o in kept)
    assert [(o.steps, o.train_loss, o.trainable) for o in kept] == [(o.steps, o.train_loss, o.trainable) for o in first]
    assert sum("is up to date" in m and "--fresh trains it again" in m for m in messages) == 2, messages
    assert {path: path.read_bytes() for path in stored} == stored
    # A run that left no checkpoint (a crash before the first) leaves nothing behind once the result is kept.
    leftover = registry.run_path("sentiment", "lora")
    leftover.mkdir(parents=True)
    (leftover / "run.json").write_text("{}")
    assert all(o.kept for o in mtlora.train(config, "sentiment", **QUIET)) and not leftover.exists()
    # Routing hints change no training step: the adapter is kept, and its manifest takes the new ones.
    hinted = config.model_copy(deep=True)
    hinted.task("sentiment").routing.keywords.append("cinema")
    assert all(o.kept for o in mtlora.train(hinted, "sentiment", **QUIET)) and trained == []
    assert "cinema" in registry.manifest("sentiment").routing["keywords"]
    # A bad validation file fails now, as it does when training, not later at `evaluate`.
    missing = config.model_copy(deep=True)
    missing.task("sentiment").data.validation = missing.task("sentiment").data.validation.model_copy(
        update={"path": "absent.jsonl"})
    with pytest.raises(mtlora.DataError, match=r"absent\.jsonl: file not found"):
        mtlora.train(missing, "sentiment", **QUIET)
    # A damaged baseline is trained again, not kept (nor left for evaluate to fail on).
    baseline_weights = next(registry.baseline_path("sentiment").glob("*.safetensors"))
    baseline_weights.write_bytes(baseline_weights.read_bytes()[:-8])
    mtlora.train(config, "sentiment", **QUIET)
    assert trained == ["head_only"]
    trained.clear()
    # So is a damaged adapter (its files no longer match the manifest's checksums).
    adapter_weights = registry.path("sentiment") / "adapter_model.safetensors"
    adapter_weights.write_bytes(adapter_weights.read_bytes()[:-8])
    assert not any(o.kept for o in mtlora.train(config, "sentiment", baseline=False, **QUIET))
    assert trained == ["lora"] and "sentiment" in registry and registry.verified("sentiment")
    trained.clear()
    # An interrupted retraining resumes rather than keeping the result it was replacing.
    with monkeypatch.context() as patch:
        patch.setattr(callbacks.StopOnSignal, "on_step_end", stop_at_step(2, None))
        with pytest.raises(TrainingInterrupted):
            mtlora.train(config, "sentiment", baseline=False, fresh=True, **QUIET)
    messages.clear()
    mtlora.train(config, "sentiment", baseline=False, progress=False, log=messages.append)
    assert trained == ["lora", "lora"] and any("Resuming from" in m for m in messages), messages
    # A changed setting of both methods trains both again, reading the task's data once, before either:
    # finding the stored result stale does not read it again.
    reads: list[str] = []
    read = trainer_module.load_task_data
    monkeypatch.setattr(trainer_module, "load_task_data", lambda project, task: reads.append(task.name) or read(
        project, task))
    changed = load_config(tiny_project, overrides={"defaults": {"training": {"epochs": 3}}})
    assert not any(o.kept for o in mtlora.train(changed, "sentiment", **QUIET))
    assert trained == ["lora", "lora", "lora", "head_only"]
    assert reads == ["sentiment"]
    assert not any(o.kept for o in mtlora.train(changed, "sentiment", fresh=True, **QUIET))


def test_each_method_trains_at_its_own_learning_rate_and_a_change_of_the_other_ones_keeps_its_result(
        tiny_project: Path, monkeypatch) -> None:
    """The head-only baseline trains at `baseline_lr` (a lone head needs a far higher rate than LoRA),
    LoRA at `lr`: changing one rate trains only the method that reads it, and the two still compare."""
    rates: list[tuple[str, float]] = []
    arguments = trainer_module._training_arguments

    def recorded(settings, method, *args):
        made = arguments(settings, method, *args)
        rates.append((method, made.learning_rate))
        return made

    monkeypatch.setattr(trainer_module, "_training_arguments", recorded)

    def train(**rates_given: float) -> list[bool]:
        config = load_config(tiny_project, overrides={"defaults": {"training": {"epochs": 2, **rates_given}}})
        return [outcome.kept for outcome in mtlora.train(config, "sentiment", **QUIET)]

    assert train(baseline_lr=0.3) == [False, False] and rates == [("lora", 0.02), ("head_only", 0.3)]
    rates.clear()
    assert train(baseline_lr=0.3, lr=0.01) == [False, True] and rates == [("lora", 0.01)]
    rates.clear()
    assert train(baseline_lr=0.2, lr=0.01) == [True, False] and rates == [("head_only", 0.2)]
    said: list[str] = []
    (report,) = mtlora.evaluate(tiny_project, "sentiment", log=said.append)
    assert "head_only" in report.metrics, said


def test_a_changed_config_or_tokenizer_of_the_backbone_changes_what_a_kept_result_must_match(
        tiny_bert: Path, tmp_path: Path) -> None:
    """Adapters stay usable across them (the weights' fingerprint), but a kept result must have been
    trained with them."""
    from mtlora.backbone import fingerprint_backbone, fingerprint_backbone_setup

    folder = tmp_path / "bert"
    shutil.copytree(tiny_bert, folder)
    weights, setup = fingerprint_backbone(str(folder)), fingerprint_backbone_setup(str(folder))
    for changed in ("config.json", "tokenizer_config.json"):
        settings = json.loads((folder / changed).read_text())
        (folder / changed).write_text(json.dumps({**settings, "mtlora_test": changed}))
        fingerprint_backbone_setup.cache_clear()
        assert fingerprint_backbone_setup(str(folder)) != setup, changed
        setup = fingerprint_backbone_setup(str(folder))
    fingerprint_backbone.cache_clear()
    assert fingerprint_backbone(str(folder)) == weights


def test_a_changed_checkpoint_and_log_cadence_resumes_with_the_new_one(tiny_project: Path, monkeypatch) -> None:
    # The tiny project checkpoints every 3 steps and logs every step.
    with monkeypatch.context() as patch:
        patch.setattr(callbacks.StopOnSignal, "on_step_end", stop_at_step(3, None))
        with pytest.raises(TrainingInterrupted):
            mtlora.train(tiny_project, "sentiment", baseline=False, **QUIET)
    config = load_config(tiny_project, overrides={"defaults": {"training": {"checkpoint_every": 2, "log_every": 2}}})
    messages: list[str] = []
    warned: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = warned.append  # type: ignore[method-assign]
    hf_logger = logging.getLogger("transformers.trainer_utils")
    monkeypatch.setattr(hf_logger, "handlers", [*hf_logger.handlers, handler])  # restored after the test
    with monkeypatch.context() as patch:  # a crash at step 5 keeps the last checkpoint the cadence wrote
        patch.setattr(callbacks.StopOnSignal, "on_step_end", stop_at_step(5, RuntimeError))
        with pytest.raises(RuntimeError):
            mtlora.train(config, "sentiment", baseline=False, progress=False, log=messages.append)
    assert any("Resuming from" in m and "(step 3)" in m for m in messages), messages
    # HF's warning that the steps differ from the checkpoint's would say the new ones were not taken.
    assert not [r for r in warned if r.getMessage().startswith("Warning: The following arguments")], warned
    run = Registry(config.registry).run_path("sentiment", "lora")
    assert Path(get_last_checkpoint(str(run))).name == "checkpoint-4"
    (outcome,) = mtlora.train(config, "sentiment", baseline=False, progress=False, log=messages.append)
    logged = [step for step, _ in outcome.losses]
    assert logged[:3] == [1, 2, 3] and logged[3:] and all(step % 2 == 0 for step in logged[3:]), logged


def test_a_run_marker_cut_short_starts_the_run_over(tiny_project: Path, monkeypatch) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(callbacks.StopOnSignal, "on_step_end", stop_at_step(3, None))
        with pytest.raises(TrainingInterrupted):
            mtlora.train(tiny_project, "sentiment", baseline=False, **QUIET)
    [marker] = tiny_project.parent.rglob("run.json")
    marker.write_text('{"signat')  # as a crash or a full disk can leave it
    messages: list[str] = []
    mtlora.train(tiny_project, "sentiment", baseline=False, progress=False, log=messages.append)
    assert any("Not resuming" in m for m in messages), messages


def test_training_is_seeded(tiny_project: Path) -> None:
    config = load_config(tiny_project)
    first = train_task(config, config.task("similarity"), "lora", **QUIET)
    second = train_task(config, config.task("similarity"), "lora", **QUIET)
    assert first.losses == second.losses
    assert not math.isnan(first.train_loss)


@pytest.mark.parametrize("task", ["sentiment", "similarity"])
def test_gradient_accumulation_trains_as_the_whole_batch_would(tiny_project: Path, task: str) -> None:
    """batch_size 2 x grad_accum 2 takes the steps batch_size 4 takes (the sampler gives each optimizer step
    the same rows): the same logged losses and, up to rounding, the same adapter. The Trainer took the
    heads' mean losses for sums over `num_items_in_batch` and left them undivided: twice the loss, twice
    the gradient, clipped more often. (Not QA: its loss also scores the padding positions, so it changes with
    how a batch is padded; and its targets are not `labels`, which the Trainer counted, so it was spared.)"""
    outcomes = []
    for batch_size, accumulated in [(4, 1), (2, 2)]:
        config = load_config(tiny_project, overrides={"defaults": {"training": {
            "batch_size": batch_size, "grad_accum": accumulated, "max_steps": 12}}})
        outcomes.append(train_task(config, config.task(task), "lora", **QUIET))
    whole, accumulated_run = outcomes
    assert whole.steps == accumulated_run.steps
    assert whole.processes == accumulated_run.processes == 1
    assert [loss for _, loss in accumulated_run.losses] == pytest.approx([loss for _, loss in whole.losses],
                                                                        rel=1e-4)
    assert accumulated_run.train_loss == pytest.approx(whole.train_loss, rel=1e-4)
    weights = []
    for outcome in outcomes:
        assert outcome.model is not None
        weights.append({k: v for k, v in outcome.model.state_dict().items() if "lora_" in k or "modules_to_save" in k})
    assert weights[0].keys() == weights[1].keys()
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, atol=2e-4, rtol=1e-3, msg=name)


def test_bf16_training_runs_where_the_hardware_allows(tiny_project: Path) -> None:
    """precision 'bf16' trains with autocast (on CPU too); the saved adapter keeps fp32 weights."""
    config = load_config(tiny_project, overrides={"defaults": {"training": {"precision": "bf16", "epochs": 2}}})
    outcome = train_task(config, config.task("sentiment"), "lora", **QUIET)
    assert outcome.steps > 0 and not math.isnan(outcome.train_loss)
    state = final_adapter_state(tiny_project, "sentiment")
    assert all(tensor.dtype == torch.float32 for tensor in state.values())


def _torchrun_train(project: Path, tmp_path: Path, before: str = "") -> subprocess.CompletedProcess:
    """`mtlora train` of the sentiment task in two gloo processes under torchrun: the multi-GPU path, on CPU.
    `before` runs in each process first. Each says at exit whether its process group is still open."""
    script = tmp_path / "train.py"
    script.write_text(
        "import sys, torch.distributed\n"
        f"{before}\n"
        "from mtlora.cli import app\n"
        "code = app(sys.argv[1:], standalone_mode=False)\n"
        "print('group open' if torch.distributed.is_initialized() else 'group closed')\n"
        "sys.exit(code)\n"
    )
    # On a machine with one GPU two NCCL processes would share it, which NCCL refuses: this is the CPU path.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script),
               "train", str(project), "--task", "sentiment", "--no-baseline"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_torchrun_with_two_processes_trains_one_adapter(tiny_project: Path, tmp_path: Path) -> None:
    """Two processes share the batches, only the first writes, and each closes its process group before
    exit (NCCL warns of a leak otherwise; gloo says nothing, so ask)."""
    done = _torchrun_train(tiny_project, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Trained") == 1
    assert done.stdout.count("group closed") == 2, done.stdout[-3000:]
    manifest = mtlora.show_adapter(tiny_project, "sentiment")
    assert manifest.training["steps"] == 24  # 16 examples x 12 epochs / (batch 4 x 2 processes)
    # batch_size is per process: the manifest says what each step took, which the settings alone do not.
    assert manifest.training["processes"] == 2 and manifest.training["effective_batch_size"] == 8
    assert "8 rows a step (batch_size 4 x 2 processes)" in done.stdout + done.stderr
    assert not (load_config(tiny_project).registry / ".runs" / "sentiment").exists()


def _second_process_signals_itself_at_step_5(times: int) -> str:
    """What each torchrun process runs first: the second sends itself `times` SIGINTs at step 5, and each says
    how many DistributedDataParallel wrappers are still alive once `_fit` returned or raised."""
    return (
        "import gc, os, signal, torch\n"
        "from mtlora.training import callbacks, trainer\n"
        "on_step_end = callbacks.StopOnSignal.on_step_end\n"
        "def signalled(self, args, state, control, **kwargs):\n"
        "    if args.process_index == 1 and state.global_step == 5:\n"
        f"        for _ in range({times}):\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "    return on_step_end(self, args, state, control, **kwargs)\n"
        "callbacks.StopOnSignal.on_step_end = signalled\n"
        "fit = trainer._fit\n"
        "def counted(*args, **kwargs):\n"
        "    try:\n"
        "        return fit(*args, **kwargs)\n"
        "    finally:\n"
        "        wrappers = sum(isinstance(o, torch.nn.parallel.DistributedDataParallel) for o in gc.get_objects())\n"
        "        print(f'process {os.environ[\"RANK\"]}: {wrappers} wrappers left', flush=True)\n"
        "trainer._fit = counted\n"
    )


def _wrappers_left(stdout: str) -> dict[str, int]:
    return {rank: int(count) for rank, count in re.findall(r"^process (\d): (\d+) wrappers left$", stdout, re.M)}


def test_a_signal_to_one_torchrun_process_stops_every_process_at_the_same_step(
    tiny_project: Path, tmp_path: Path
) -> None:
    """A signal reaches each process at its own moment, maybe steps apart. Were each to act on its own, the
    ones still training would wait forever in a collective that the stopped one never joins, and the first
    process, which stores the adapter, could store it unfinished.

    And the interrupted run's traceback must not keep the DistributedDataParallel wrapper past the close of
    the process group: its reducer would then destroy the group holding the GIL, and hang (1 run in 20)."""
    stopped = _torchrun_train(tiny_project, tmp_path, before=_second_process_signals_itself_at_step_5(1))
    assert stopped.returncode != 0
    assert _wrappers_left(stopped.stdout) == {"0": 0, "1": 0}, stopped.stdout[-3000:]
    # Both stop at step 5. (torchrun then ends the other worker as soon as one exits with 130, so whether
    # each gets as far as closing its process group is a race: not asserted here.)
    assert stopped.stderr.count("interrupted at step 5; checkpoint saved") == 2, stopped.stderr[-3000:]
    assert not (load_config(tiny_project).registry / "sentiment").exists()

    resumed = _torchrun_train(tiny_project, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(step 5)" in resumed.stdout, resumed.stdout[-3000:]
    assert mtlora.show_adapter(tiny_project, "sentiment").training["steps"] == 24


def test_a_second_ctrl_c_under_torchrun_leaves_no_wrapper_past_the_process_group(
    tiny_project: Path, tmp_path: Path
) -> None:
    """A second Ctrl-C stops training at once, with a KeyboardInterrupt out of the Trainer, whose frames in its
    traceback hold the DistributedDataParallel wrapper: they are cleared. (The other process then loses its
    peer, and torchrun may end it before it reports: only the signalled one is asked.)"""
    stopped = _torchrun_train(tiny_project, tmp_path, before=_second_process_signals_itself_at_step_5(2))
    assert stopped.returncode != 0
    assert _wrappers_left(stopped.stdout).get("1") == 0, stopped.stdout[-3000:]


def test_length_batches_cover_every_row_once_in_shuffled_order() -> None:
    import random

    from mtlora.training.sampler import ShuffledLengthBatches

    lengths = [random.Random(i).randint(3, 60) for i in range(1000)]
    sampler = ShuffledLengthBatches(lengths, batch_size=10, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(1000)) and order == list(sampler)
    batches = [order[i:i + 10] for i in range(0, 1000, 10)]
    padded = sum(10 * max(lengths[i] for i in b) for b in batches)
    assert padded < 1.1 * sum(lengths)  # similar lengths in a batch: little padding
    longest = [max(lengths[i] for i in b) for b in batches]
    assert longest != sorted(longest, reverse=True)  # but no long-to-short order over training
    sampler.set_epoch(1)
    assert list(sampler) != order


def test_a_short_last_batch_comes_last_and_the_seed_decides_the_order() -> None:
    """A short batch anywhere but last would shift every later batch boundary of the DataLoader, mixing
    rows of unlike lengths; and a seed that did not change the order would make `training.seed` a no-op."""
    from mtlora.training.sampler import ShuffledLengthBatches

    lengths = list(range(25))  # one mega-batch: runs [24..15], [14..5] and the short [4..0]
    orders = []
    for seed in range(6):
        order = list(ShuffledLengthBatches(lengths, batch_size=10, seed=seed))
        assert sorted(order) == list(range(25))
        assert sorted(order[-5:]) == [0, 1, 2, 3, 4], (seed, order)
        assert {tuple(sorted(order[i:i + 10])) for i in (0, 10)} == {tuple(range(5, 15)), tuple(range(15, 25))}
        orders.append(order)
    assert len({tuple(order) for order in orders}) > 1
    many = [length % 37 for length in range(200)]
    assert list(ShuffledLengthBatches(many, 10, seed=0)) != list(ShuffledLengthBatches(many, 10, seed=1))


@pytest.mark.parametrize("seed", [0, 7])
def test_the_trainer_groups_lengths_by_optimizer_step_and_orders_them_by_the_training_seed(seed: int,
                                                                                          tiny_bert: Path) -> None:
    """A run of similar lengths per optimizer step (every micro-batch of a gradient accumulation), and
    `training.seed` deciding the data order as it decides the initial weights."""
    args = trainer_module._training_arguments(
        trainer_module.TrainSettings(batch_size=4, grad_accum=3, seed=seed), "lora", Path("unused"), progress=False,
        backbone=str(tiny_bert))
    fake = SimpleNamespace(args=args, lengths=list(range(30)))
    sampler = trainer_module._LengthBatchedTrainer._get_train_sampler(fake)
    assert (sampler.batch_size, sampler.seed, sampler.lengths) == (12, seed, list(range(30)))

def test_the_inputs_kept_for_routing_are_a_seeded_sample_without_labels() -> None:
    """Semantic routing calibrates its thresholds on them: an unseeded sample would route differently
    after each retraining of an unchanged task."""
    train = [{"text": f"input {i} " + "x" * (600 if i == 0 else 0), "label": "pos"} for i in range(200)]
    kept = trainer_module._example_inputs(train, seed=3)
    assert kept == trainer_module._example_inputs(train, seed=3) != trainer_module._example_inputs(train, seed=4)
    assert len(kept) == trainer_module.EXAMPLE_INPUTS_KEPT and all(set(e) == {"text"} for e in kept)
    assert max(len(e["text"]) for e in trainer_module._example_inputs(train[:10], seed=3)) == 500

def test_the_loss_warnings_judge_four_logs_for_divergence_and_eight_for_a_stall() -> None:
    from mtlora.training.trainer import loss_warning

    # Four logs are enough to see a fall and a climb back to 95% of the start.
    assert "training diverged" in loss_warning([(1, 1.0), (2, 0.5), (3, 0.6), (4, 0.95)])
    assert loss_warning([(1, 1.0), (2, 0.5), (3, 0.6)]) is None
    # Under eight logs a quarter is one log: too noisy to call a run stalled on.
    short = [(i, loss) for i, loss in enumerate([0.7, 0.65, 0.6, 0.62, 0.6, 0.66, 0.72], 1)]
    assert loss_warning(short) is None
    assert "the loss did not fall" in loss_warning([*short, (8, 0.72)])

def test_a_run_that_diverged_or_never_learned_is_reported() -> None:
    from mtlora.training.trainer import loss_warning

    diverged = [(25, 0.68), (50, 0.35), (75, 0.75), (100, 0.69), (125, 0.69)]
    assert "training diverged" in loss_warning(diverged)
    assert loss_warning([(25, 0.68), (50, 0.35), (75, 0.2), (100, 0.1)]) is None
    assert loss_warning([(25, 0.68), (50, 0.35)]) is None
    # SST-2 at batch 4 and lr 1e-3: 1,000 steps near ln 2 (0.59 accuracy); and a slow but real fall.
    stalled = [(50 * i, loss) for i, loss in enumerate([0.69, 0.72, 0.69, 0.70, 0.68, 0.69, 0.70, 0.69], 1)]
    assert "the loss did not fall" in loss_warning(stalled)
    slow = [(50 * i, loss) for i, loss in enumerate([0.69, 0.68, 0.66, 0.64, 0.62, 0.60, 0.58, 0.57], 1)]
    assert loss_warning(slow) is None


def test_a_run_that_never_learned_says_so_and_its_manifest_keeps_it(tiny_project: Path) -> None:
    config = load_config(tiny_project, overrides={"defaults": {"training": {"lr": 1e-9, "baseline": False}}})
    messages: list[str] = []
    mtlora.train(config, "sentiment", progress=False, log=messages.append)
    assert any("[sentiment] warning: the loss did not fall" in m for m in messages), messages
    warning = Registry(config.registry).manifest("sentiment").training["warning"]
    assert warning and "the loss did not fall" in warning


ONE_PROCESS = SimpleNamespace(world_size=1, device=torch.device("cpu"))
TWO_PROCESSES = SimpleNamespace(world_size=2, device=torch.device("cpu"))


def test_sigterm_asks_for_a_checkpoint_as_ctrl_c_does() -> None:
    """`docker stop` and job schedulers send SIGTERM before they kill: the run saves its step and stops."""
    before = signal.getsignal(signal.SIGTERM)
    stopper, control = callbacks.StopOnSignal(), TrainerControl()
    with stopper.installed():
        os.kill(os.getpid(), signal.SIGTERM)
        stopper.on_step_end(ONE_PROCESS, None, control)
    assert stopper.requested and control.should_save and control.should_training_stop
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_second_sigterm_changes_nothing_and_a_second_ctrl_c_aborts() -> None:
    """A scheduler that signals every process of a torchrun job reaches each worker twice (directly and
    through the launcher): that must not abort the checkpoint the first one asked for."""
    stopper = callbacks.StopOnSignal()
    with stopper.installed():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_a_process_told_to_stop_by_another_still_saves_on_its_own_signal() -> None:
    """torchrun forwards a signal to every process: one that already agreed to stop on another's must take
    its own as the first, not as the second Ctrl-C that aborts without a checkpoint."""
    stopper = callbacks.StopOnSignal()
    stopper.requested = True  # as `on_step_end` sets it when another process heard a signal
    with stopper.installed():
        os.kill(os.getpid(), signal.SIGINT)
        assert stopper.heard == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_a_signal_during_the_processes_agreement_stops_the_run_one_step_later(monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal handled while the stop flag is being reduced across processes is too late for that step's
    agreement, and must count at the next one, not be overwritten by it."""
    calls = []

    def all_reduce(tensor: torch.Tensor, op: Any) -> None:  # one process: its own flag is the maximum
        calls.append(int(tensor))
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    stopper, control = callbacks.StopOnSignal(), TrainerControl()
    with stopper.installed():
        stopper.on_step_end(TWO_PROCESSES, None, control)
        assert stopper.heard == signal.SIGINT and not control.should_training_stop
        stopper.on_step_end(TWO_PROCESSES, None, control)
    assert calls == [0, 1] and stopper.requested and control.should_save and control.should_training_stop
