"""Seq2seq kinds on a tiny T5 and on a tiny encoder-decoder warm-started from the tiny BERT."""

from __future__ import annotations

import collections
import gc
import hashlib
import json
import weakref
from pathlib import Path

import pytest
import torch
import yaml
from conftest import SENTIMENT, SUPPORT, trained_briefly, write_jsonl, write_seq2seq_project
from safetensors.torch import load_file
from test_training import QUIET, final_adapter_state, stop_at_step

import mtlora
from mtlora import load_config
from mtlora.config import TaskConfig
from mtlora.engine import Engine
from mtlora.engine.job import Job
from mtlora.engine.seq2seq import Seq2SeqAdapters
from mtlora.errors import ConfigError, DataError
from mtlora.evaluation import routing_mix
from mtlora.registry import Registry
from mtlora.tasks import mcq_generation
from mtlora.tasks.base import Encoded
from mtlora.tasks.mcq_generation import MCQ, MCQGenerationTask, parse_mcq
from mtlora.training import TrainingInterrupted, callbacks, train_task

TEXTS = ["where is my refund", "my login password", "the cat sat on the mat", "paris is the capital of france"]


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(folder.rglob("*")):
        if file.is_file():
            digest.update(file.name.encode() + file.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("task", ["triage", "summarize", "mcq"])
def test_each_kind_trains_with_falling_loss_on_a_warm_started_encoder_decoder(
        tmp_path: Path, warm_start_bert: Path, task: str) -> None:
    config = load_config(write_seq2seq_project(tmp_path, warm_start_bert))
    outcome = train_task(config, config.task(task), "lora", **QUIET)
    losses = [loss for _, loss in outcome.losses]
    assert len(losses) >= 8
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3, losses
    assert 0 < outcome.trainable < outcome.total


def test_gradient_accumulation_weighs_every_target_token_alike(tmp_path: Path, warm_start_bert: Path) -> None:
    """batch_size 2 x grad_accum 2 trains as batch_size 4 does on the same rows (the sampler gives each step
    the same four): each step's loss is its mean over all its target tokens. It was the mean of each
    micro-batch's mean, which weighed the tokens of a micro-batch of short targets more than long ones."""
    project = write_seq2seq_project(tmp_path, warm_start_bert)
    write_jsonl(tmp_path / "data" / "summarize.jsonl",
                [{"text": text, "summary": " ".join(["film"] * (1 + 3 * (i % 3)))}
                 for i, (text, _) in enumerate(SENTIMENT + SUPPORT)])
    outcomes = []
    for batch_size, accumulated in [(4, 1), (2, 2)]:
        config = load_config(project, overrides={"defaults": {"training": {
            "batch_size": batch_size, "grad_accum": accumulated, "max_steps": 6}}})
        outcomes.append(train_task(config, config.task("summarize"), "lora", **QUIET))
    whole, accumulated_run = outcomes
    assert [loss for _, loss in accumulated_run.losses] == pytest.approx([loss for _, loss in whole.losses],
                                                                        rel=1e-4)
    weights = [{k: v for k, v in outcome.model.state_dict().items() if "lora_" in k}
               for outcome in outcomes if outcome.model is not None]
    assert len(weights) == 2 and weights[0] and weights[0].keys() == weights[1].keys()
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, atol=2e-4, rtol=1e-3, msg=name)


def test_training_names_the_targets_max_target_length_cuts(tmp_path: Path, warm_start_bert: Path) -> None:
    """A cut target teaches the adapter to stop where the cut is; it was cut without a word."""
    project = write_seq2seq_project(tmp_path, warm_start_bert)
    rows = [{"text": text, "summary": "good film" if i % 4 else "a very long summary of the whole film"}
            for i, (text, _) in enumerate(SENTIMENT)]
    write_jsonl(tmp_path / "data" / "summarize.jsonl", rows)
    config = load_config(project, overrides={"defaults": {"training": {"max_steps": 1}}})
    task = config.task("summarize")
    assert task.seq2seq is not None
    task = task.model_copy(update={"seq2seq": task.seq2seq.model_copy(update={"max_target_length": 5})})
    messages: list[str] = []
    train_task(config, task, "lora", progress=False, log=messages.append)
    long = sum(1 for i in range(len(SENTIMENT)) if i % 4 == 0)
    assert any(f"{long} of {len(SENTIMENT)} training targets" in m and "seq2seq.max_target_length" in m
               for m in messages), messages


@pytest.mark.parametrize("backbone", ["tiny_t5", "tiny_bart"])
def test_generation_trains_on_seq2seq_checkpoints(request, tmp_path: Path, backbone: str) -> None:
    config = load_config(write_seq2seq_project(tmp_path, request.getfixturevalue(backbone)))
    outcome = train_task(config, config.task("summarize"), "lora", **QUIET)
    losses = [loss for _, loss in outcome.losses]
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3, losses
    prediction = mtlora.load_predictor(config, "summarize").predict("great good movie")
    assert isinstance(prediction["text"], str) and 1 <= prediction["generated_tokens"] <= 6  # max_new_tokens


def test_decoding_past_a_warm_started_decoders_positions_is_refused_before_training(
        tmp_path: Path, warm_start_bert: Path) -> None:
    """Generation failed at the 128th token written (the tiny BERT's positions), after the training."""
    from mtlora.errors import ConfigError

    config = load_config(write_seq2seq_project(tmp_path, warm_start_bert))
    task = config.task("summarize")
    decoding = task.seq2seq.decoding.model_copy(update={"max_new_tokens": 128})
    task = task.model_copy(update={"seq2seq": task.seq2seq.model_copy(update={"decoding": decoding})})
    with pytest.raises(ConfigError, match=r"^tasks\.summarize\.seq2seq\.decoding\.max_new_tokens: 128 tokens, but "
                                          r"the decoder of backbone .+ reads at most 128, its start token included; "
                                          r"set max_new_tokens: 127 or less"):
        train_task(config, task, "lora", **QUIET)


def test_an_encoder_with_no_decoder_form_is_refused_for_seq2seq(tmp_path: Path, tiny_bert: Path) -> None:
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    folder = tmp_path / "distilbert"
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(folder)
    encoder = DistilBertModel(DistilBertConfig(vocab_size=200, dim=32, n_layers=1, n_heads=2, hidden_dim=64))
    encoder.save_pretrained(folder)
    config = load_config(write_seq2seq_project(tmp_path, folder))
    with pytest.raises(ConfigError, match="distilbert has no causal-LM form"):
        train_task(config, config.task("summarize"), "lora", **QUIET)


@pytest.mark.parametrize(("start", "pad"), [(0, 0), (101, 0)])  # T5 starts from its pad token, BERT2BERT from [CLS]
def test_generated_tokens_count_what_the_decoder_wrote(start: int, pad: int) -> None:
    from types import SimpleNamespace

    from mtlora.tasks.seq2seq import _generated_tokens

    written = torch.tensor([start, 7, 8, 1, pad, pad])  # two words and the end token, then padding
    assert _generated_tokens(SimpleNamespace(pad_token_id=pad), written) == 3


def test_label_restricted_prediction_only_answers_with_a_label(trained_seq2seq_project: Path) -> None:
    predictor = mtlora.load_predictor(trained_seq2seq_project, "triage")
    odd_inputs = [*TEXTS, "zzz qqq", "!!!", "paris " * 40]
    for prediction in predictor.predict_batch(odd_inputs):
        assert prediction["label"] in ("refund", "login")
        assert sum(prediction["probabilities"].values()) == pytest.approx(1.0)


def test_task_tokens_survive_save_and_load_and_the_base_stays_untouched(tmp_path: Path, warm_start_bert: Path) -> None:
    before = folder_digest(warm_start_bert)
    config = load_config(write_seq2seq_project(tmp_path, warm_start_bert))
    outcome = train_task(config, config.task("summarize"), "lora", **QUIET)
    assert folder_digest(warm_start_bert) == before

    folder = Registry(config.registry).path("summarize")
    assert "<summarize>" in (folder / "tokenizer.json").read_text()
    assert (folder / "adapter_model.safetensors").stat().st_size < 2_000_000  # token rows, not the whole embedding
    predictor = mtlora.load_predictor(config, "summarize")
    assert predictor.tokenizer.convert_tokens_to_ids("<summarize>") == len(predictor.tokenizer) - 1
    # The loaded adapter writes exactly what the model in memory wrote.
    encoded = predictor.tokenizer(["<summarize> great good movie"], return_tensors="pt",
                                  return_token_type_ids=False).to(predictor.device)
    with torch.inference_mode():
        expected = outcome.model.generate(**encoded, max_new_tokens=6)
        actual = predictor.model.generate(**encoded, max_new_tokens=6)
    assert torch.equal(expected, actual)
    assert predictor.predict("great good movie")["text"] == predictor.tokenizer.decode(
        actual[0], skip_special_tokens=True, clean_up_tokenization_spaces=True).strip()


def test_resume_after_interruption_ends_with_the_same_weights(
        tmp_path: Path, warm_start_bert: Path, monkeypatch) -> None:
    straight = write_seq2seq_project(tmp_path / "straight", warm_start_bert)
    mtlora.train(straight, "triage", **QUIET)
    expected = final_adapter_state(straight, "triage")

    resumed = write_seq2seq_project(tmp_path / "resumed", warm_start_bert)
    with monkeypatch.context() as patch:
        patch.setattr(callbacks.StopOnSignal, "on_step_end", stop_at_step(4, None))
        with pytest.raises(TrainingInterrupted):
            mtlora.train(resumed, "triage", **QUIET)
    messages: list[str] = []
    mtlora.train(resumed, "triage", progress=False, log=messages.append)
    assert any("Resuming from" in m for m in messages), messages
    actual = final_adapter_state(resumed, "triage")
    assert expected.keys() == actual.keys() and expected
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-6, msg=key)


def test_checkpoints_keep_task_token_rows_not_the_whole_embedding(
        tmp_path: Path, warm_start_bert: Path, monkeypatch) -> None:
    project = write_seq2seq_project(tmp_path, warm_start_bert)
    with monkeypatch.context() as patch:
        patch.setattr(callbacks.StopOnSignal, "on_step_end", stop_at_step(4, None))
        with pytest.raises(TrainingInterrupted):
            mtlora.train(project, "summarize", **QUIET)
    checkpoints = list(load_config(project).registry.glob(".runs/summarize/lora/checkpoint-*"))
    assert checkpoints
    for checkpoint in checkpoints:
        keys = list(load_file(checkpoint / "adapter_model.safetensors").keys())
        assert any("trainable_tokens" in k for k in keys), keys
        assert not [k for k in keys if k.endswith(("embeddings.weight", "embed_tokens.weight"))], keys
    messages: list[str] = []
    mtlora.train(project, "summarize", progress=False, log=messages.append)
    assert any("Resuming from" in m for m in messages), messages


@pytest.fixture(scope="module")
def trained_t5_project(tmp_path_factory: pytest.TempPathFactory, tiny_t5: Path) -> Path:
    """T5 adapters save no whole modules, so PEFT runs their rows mixed in one batch."""
    path = write_seq2seq_project(tmp_path_factory.mktemp("t5"), tiny_t5)
    raw = yaml.safe_load(path.read_text())
    raw["defaults"]["training"]["epochs"] = 2
    for task in raw["tasks"]:
        task.pop("training", None)
    path.write_text(yaml.safe_dump(raw))
    mtlora.train(path, **QUIET)
    return path


@pytest.mark.parametrize("backbone", ["warm-started", "t5"])
def test_engine_mixed_adapters_answer_as_each_adapter_alone(request, backbone: str) -> None:
    project = request.getfixturevalue("trained_seq2seq_project" if backbone == "warm-started"
                                      else "trained_t5_project")
    engine = Engine.from_config(project, precision="fp32")
    tasks = ["triage", "summarize", "mcq"]
    inputs = [text for text in TEXTS for _ in tasks]
    names = [task for _ in TEXTS for task in tasks]
    mixed = engine.predict_batch(inputs, task=names)
    for task in tasks:
        alone = engine.predict_batch([t for t, n in zip(inputs, names, strict=True) if n == task], task=task)
        together = [p for p, n in zip(mixed, names, strict=True) if n == task]
        for a, b in zip(alone, together, strict=True):
            assert a.keys() == b.keys()
            if "probabilities" in a:
                assert a["label"] == b["label"]
                for label in a["probabilities"]:
                    assert a["probabilities"][label] == pytest.approx(b["probabilities"][label], abs=1e-5)
            else:
                assert a["text"] == b["text"]
    # ... and as the adapter loaded on its own, outside any engine.
    alone = mtlora.load_predictor(project, "summarize").predict_batch(TEXTS)
    assert [p["text"] for p in alone] == [p["text"] for p in engine.predict_batch(TEXTS, task="summarize")]


def test_engine_adds_and_removes_seq2seq_adapters(trained_seq2seq_project: Path) -> None:
    engine = Engine.from_config(trained_seq2seq_project, tasks=["summarize"], precision="fp32")
    before = engine.predict("great film", task="summarize")["text"]
    engine.add("mcq")
    engine.add("triage")
    assert engine.predict("where is my refund", task="triage")["label"] in ("refund", "login")
    engine.remove("mcq")
    assert engine.tasks == ["summarize", "triage"]
    assert engine.predict("great film", task="summarize")["text"] == before


def test_seq2seq_jobs_do_not_count_the_tokens_only_the_encoder_half_batches_by(
        trained_seq2seq_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every job counted its feature rows' tokens on creation; generation pads and batches its rows itself."""
    engine = Engine.from_config(trained_seq2seq_project, tasks=["summarize"], precision="fp32")
    ran: list[Job] = []
    run = Seq2SeqAdapters.run
    monkeypatch.setattr(Seq2SeqAdapters, "run", lambda self, jobs: (ran.extend(jobs), run(self, jobs))[1])
    assert engine.predict_batch(TEXTS, task="summarize")
    assert len(ran) == 1 and "lengths" not in vars(ran[0])
    assert ran[0].lengths == [len(ids) for ids in ran[0].encoded.features["input_ids"]]  # counted when asked


def test_the_only_seq2seq_adapter_reloads_and_comes_back_after_removal(trained_seq2seq_project: Path) -> None:
    """PEFT cannot lose its last adapter and take another; and each reload must give back its task-token rows."""
    from mtlora.engine.seq2seq import SPARE_TOKEN_ROWS

    engine = Engine.from_config(trained_seq2seq_project, tasks=["summarize"], precision="fp32")
    before = engine.predict("great film", task="summarize")["text"]
    for _ in range(SPARE_TOKEN_ROWS + 1):
        engine.reload("summarize")
    assert engine.predict("great film", task="summarize")["text"] == before
    model = weakref.ref(engine._seq2seq.model)
    engine.remove("summarize")
    assert engine.tasks == []
    gc.collect()
    assert model() is None  # the last removal lets the seq2seq model go; the next add loads it again
    engine.add("summarize")
    engine.add("mcq")
    engine.remove("summarize")
    engine.add("summarize")
    assert engine.predict("great film", task="summarize")["text"] == before


def test_a_failed_first_seq2seq_add_lets_the_model_go_and_can_be_tried_again(
        trained_seq2seq_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mtlora.engine.seq2seq import Seq2SeqAdapters
    from mtlora.errors import AdapterNotServableError

    def no_room(*args, **kwargs):
        raise AdapterNotServableError("no task-token rows free")

    engine = Engine.from_config(trained_seq2seq_project, tasks=[], precision="fp32")
    with monkeypatch.context() as patch:  # fails after the model is built, as a full task-token table would
        patch.setattr(Seq2SeqAdapters, "_place_tokens", no_room)
        with pytest.raises(AdapterNotServableError):
            engine.add("summarize")
    assert engine.tasks == [] and engine._seq2seq.model is None  # no model held for no adapter
    engine.add("summarize")
    alone = mtlora.load_predictor(trained_seq2seq_project, "summarize").predict_batch(TEXTS)
    assert [p["text"] for p in engine.predict_batch(TEXTS, task="summarize")] == [p["text"] for p in alone]


def test_a_merged_generation_adapter_writes_as_the_engine_does(trained_seq2seq_project: Path, tmp_path: Path) -> None:
    """The export carries the task's decoding settings, so a plain generate() is the engine's answer."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    folder = mtlora.merge(trained_seq2seq_project, "summarize", tmp_path / "merged")
    model, tokenizer = AutoModelForSeq2SeqLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    assert model.generation_config.max_new_tokens == 6  # the task's decoding, not transformers' 20 tokens
    encoded = tokenizer(["<summarize> great good movie"], return_tensors="pt", return_token_type_ids=False)
    with torch.inference_mode():
        written = tokenizer.decode(model.generate(**encoded)[0], skip_special_tokens=True).strip()
    engine = Engine.from_config(trained_seq2seq_project, tasks=["summarize"], precision="fp32")
    assert written == engine.predict("great good movie", task="summarize")["text"]


def test_evaluation_shows_the_prompt_only_base_beside_the_adapter(trained_seq2seq_project: Path) -> None:
    reports = {r.task: r for r in mtlora.evaluate(trained_seq2seq_project, write=False, log=lambda _: None)}
    assert set(reports["triage"].metrics) == {"base", "lora"}
    assert reports["triage"].metrics["lora"]["accuracy"] >= 0.75  # on its own training texts
    assert set(reports["summarize"].metrics["lora"]) >= {"rouge1", "rouge2", "rougeL", "empty_share", "copy_share"}
    assert set(reports["mcq"].metrics["lora"]) >= {"valid_mcq_share", "question_rougeL"}
    sample = reports["summarize"].samples[0]
    assert {"text", "expected", "base", "lora"} <= sample.keys()
    manifest = mtlora.show_adapter(trained_seq2seq_project, "triage")
    assert manifest.kind_options["prompt"] == "which team: {text}"
    assert "validation" in manifest.metrics


def test_mcq_format_round_trips_and_the_parser_rejects_what_is_not_an_mcq() -> None:
    mcq = MCQ("who sat on the mat?", ["the cat", "the dog", "a bird"], answer=1)
    assert parse_mcq(mcq.format(), 3) == mcq
    # WordPiece decoding spaces punctuation and lower-cases: still an MCQ.
    spaced = "question : who sat on the mat? options : ( a ) the cat ( b ) the dog ( c ) a bird answer : b"
    assert parse_mcq(spaced, 3) == mcq
    rejected = [
        "who sat on the mat?",  # no structure
        "question: who? options: (a) x (b) y answer: b",  # 2 options, 3 expected
        "question: who? options: (a) x (b) y (c) z answer: d",  # answer not among the options
        "question: who? options: (a) x (c) y (b) z answer: a",  # letters out of order
        "question: who? options: (a) x (b) (c) z answer: a",  # an empty option
        "question: who? options: (a) x (b) y (c) z",  # no answer
    ]
    for text in rejected:
        assert parse_mcq(text, 3) is None, text


def test_a_letter_in_parentheses_inside_an_option_stays_in_its_text() -> None:
    """Only the letter due next starts an option: DREAM has gold options like these."""
    mcq = MCQ("what did he do?", ["covered the plant(s) accidently", "watered it", "Both (A) and (B)"], answer=2)
    assert parse_mcq(mcq.format(), 3) == mcq
    assert parse_mcq("question: who? options: (a) x (b) y (c) z (d) w answer: a", 3) is None  # one option too many
    # The marker of its own letter or a later one in an option's text: where option (b) starts is a guess.
    assert parse_mcq("question: which plan? options: (a) plan (B) is better (b) plan A (c) neither answer: b", 3) \
        is None


def test_text_before_the_first_option_is_no_mcq() -> None:
    """Options start at "(a)": words between "options:" and it belong to no option, so where the options
    begin is a guess, and the output is malformed."""
    assert parse_mcq("question: who? options: (a) x (b) y answer: a", 2) is not None
    assert parse_mcq("question: who? options: maybe (a) x (b) y answer: a", 2) is None
    assert parse_mcq("question: who? options: x y answer: a", 2) is None  # no "(a)" at all


def test_question_rouge_scores_the_parsed_question_or_else_the_whole_output() -> None:
    kind = MCQGenerationTask(options={"num_options": 2})
    gold = MCQ("who sat on the mat?", ["the cat", "the dog"], answer=1)
    examples = [{"text": "the dog sat on the mat", "mcq": gold}]

    def question_rouge(text: str) -> float:
        predictions = kind.decode([{"text": text, "tokens": 10}], Encoded({}, [0], truncated=[False]), examples)
        return kind.metrics(predictions, examples)["question_rougeL"]

    # Other options and answer: the question alone is right, which the whole line would hide.
    assert question_rouge("question: who sat on the mat? options: (a) a bird (b) a fish answer: a") == 100.0
    assert question_rouge("who sat on the mat?") == 100.0  # a bare question: not an MCQ, but a question


def test_mcq_rouge_scores_the_content_not_the_scaffold(tmp_path: Path, warm_start_bert: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every output shares `question:`, `options:`, `(a)`, `answer:`: on those alone an empty MCQ scored 38.
    The metrics read the MCQ as `decode` parsed it, and parse no output again."""
    kind = MCQGenerationTask.from_config(load_config(write_seq2seq_project(tmp_path, warm_start_bert)).task("mcq"))
    gold = MCQ("who sat on the mat?", ["the cat", "the dog"], answer=1)
    examples = [{"text": "the dog sat on the mat", "mcq": gold}]

    def scored(text: str) -> dict[str, float]:
        predictions = kind.decode([{"text": text, "tokens": 10}], Encoded({}, [0], truncated=[False]), examples)
        with monkeypatch.context() as patch:
            patch.setattr(mcq_generation, "parse_mcq", lambda *args: pytest.fail("metrics parsed an output again"))
            return kind.metrics(predictions, examples)

    assert scored(gold.format())["rougeL"] == 100.0
    assert scored("question: options: (a) (b) answer: a")["rougeL"] == 0.0  # the scaffold alone: not an MCQ
    nonsense = scored("question: zzz? options: (a) qq (b) ww answer: a")  # well-formed: valid, but says nothing
    assert (nonsense["valid_mcq_share"], nonsense["rougeL"]) == (1.0, 0.0)


def test_dream_and_mcq_rows_are_read_and_bad_rows_are_named(tmp_path: Path, warm_start_bert: Path) -> None:
    project = write_seq2seq_project(tmp_path, warm_start_bert)
    dream = [[["M: where is the cat?", "W: on the mat."], [
        {"question": "where is the cat?", "choice": ["on the mat", "in paris", "at home"], "answer": "on the mat"},
        {"question": "who speaks first?", "choice": ["the man", "the woman", "a dog"], "answer": "the man"}], "d-1"]]
    (tmp_path / "data" / "dream.json").write_text(json.dumps(dream))
    raw = yaml.safe_load(project.read_text())
    raw["tasks"][2]["data"] = {"train": {"path": "dream.json", "format": "dream"}, "fields": {"text": "dialogue"}}
    raw["tasks"][2]["seq2seq"]["num_options"] = 3
    project.write_text(yaml.safe_dump(raw))
    data = mtlora.data.load_task_data(load_config(project), load_config(project).task("mcq"), ("train",))
    assert [e["mcq"].answer for e in data.train] == [0, 0]
    raw["tasks"][2]["data"]["train"] = "dream.json"  # read as plain JSON, it is a list of lists
    project.write_text(yaml.safe_dump(raw))
    with pytest.raises(DataError, match=r"item 0: expected a JSON object, got list \(a DREAM file\? set format: dream"):
        mtlora.data.load_task_data(load_config(project), load_config(project).task("mcq"), ("train",))
    raw["tasks"][2]["data"]["train"] = {"path": "dream.json", "format": "dream"}
    assert data.train[0]["text"] == "M: where is the cat?\nW: on the mat."

    raw["tasks"][2]["seq2seq"]["num_options"] = 4
    project.write_text(yaml.safe_dump(raw))
    with pytest.raises(DataError, match=r"question 0: field 'options' has 3 options, the task expects 4"):
        mtlora.data.load_task_data(load_config(project), load_config(project).task("mcq"), ("train",))
    raw["tasks"][2]["seq2seq"]["num_options"] = 3
    project.write_text(yaml.safe_dump(raw))

    (tmp_path / "data" / "dream.json").write_text(json.dumps([["turns only", "d-2"]]))
    with pytest.raises(DataError, match=r"dream.json: item 0: expected \[dialogue turns, questions, id\]"):
        mtlora.data.load_task_data(load_config(project), load_config(project).task("mcq"), ("train",))

    dream[0][1][1]["answer"] = "a cat"
    (tmp_path / "data" / "dream.json").write_text(json.dumps(dream))
    with pytest.raises(DataError, match=r"dream.json: item 0 \(d-1\) question 1: answer 'a cat'"):
        mtlora.data.load_task_data(load_config(project), load_config(project).task("mcq"), ("train",))
    dream[0][1][1]["answer"] = True  # a JSON boolean is a Python int: it would have read as option b
    (tmp_path / "data" / "dream.json").write_text(json.dumps(dream))
    with pytest.raises(DataError, match=r"question 1: answer True in field 'answer' is not a letter a-c, an index 0-2"):
        mtlora.data.load_task_data(load_config(project), load_config(project).task("mcq"), ("train",))


def test_a_stored_adapter_whose_prompt_this_version_refuses_is_named_with_the_fix() -> None:
    """An adapter trained before the prompt had to use {text} never saw its input: it fails to load with
    its name and what to do, not a bare ValueError from inside the kind."""
    from types import SimpleNamespace

    from mtlora.errors import RegistryError
    from mtlora.modeling import kind_from_manifest

    stored = SimpleNamespace(name="summarize", kind="generation", labels=None, fields={}, label_map={},
                             kind_options={"prompt": "Summarize this."})
    with pytest.raises(RegistryError, match=r"^adapter 'summarize' was trained with settings this version of mtlora "
                                            r"refuses: prompt template 'Summarize this.' leaves out \{text\}.*; "
                                            r"retrain it with the setting fixed \(`mtlora train PROJECT.yaml "
                                            r"--task summarize`\)$"):
        kind_from_manifest(stored)


def test_prompt_templates_are_checked(tmp_path: Path, warm_start_bert: Path) -> None:
    project = write_seq2seq_project(tmp_path, warm_start_bert)
    raw = yaml.safe_load(project.read_text())
    raw["tasks"][0]["seq2seq"]["prompt"] = "classify {message}"
    project.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"uses \['message'\]; it may use \{text\}"):
        load_config(project)

    # Without {text} every example reads the same instruction: the model would learn nothing of its input.
    raw["tasks"][0]["seq2seq"]["prompt"] = "Which team? "
    project.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"leaves out \{text\}, so the model would never see the input; put "
                                          r"\{text\} where the input goes, as in 'Which team\? \{text\}'"):
        load_config(project)

    raw["tasks"][0]["seq2seq"] = {"task_token": "<two words>"}
    project.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="must be one word without spaces"):
        load_config(project)

    (tmp_path / "prompt.txt").write_text("team for {ticket}?\n")
    raw["tasks"][0]["seq2seq"] = {"prompt_file": "prompt.txt"}
    project.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"(?s)prompt.txt.*uses \['ticket'\]"):
        load_config(project)

    (tmp_path / "prompt.txt").write_text("team for {text}?\n")
    assert load_config(project).task("triage").seq2seq.prompt == "team for {text}?"
    raw["tasks"][0]["seq2seq"] = {"prompt_file": "absent.txt"}
    project.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"(?s)absent\.txt.*cannot read it"):
        load_config(project)


def test_labels_that_would_train_and_score_alike_are_refused_before_training(
        tmp_path: Path, warm_start_bert: Path) -> None:
    project = write_seq2seq_project(tmp_path, warm_start_bert)
    raw = yaml.safe_load(project.read_text())
    raw["tasks"][0]["seq2seq"]["max_target_length"] = 2  # [CLS] refund [SEP] cut to [CLS] [SEP]: both alike
    project.write_text(yaml.safe_dump(raw))
    with pytest.raises(DataError, match=r"^tasks\.triage\.data\.labels: label 'refund' takes 3 target tokens, "
                                        r"more than seq2seq.max_target_length 2.*\(set seq2seq.max_target_length to 3"):
        mtlora.train(project, "triage", **QUIET)
    raw["tasks"][0]["seq2seq"]["max_target_length"] = 4
    raw["tasks"][0]["data"]["labels"] = ["refund", "REFUND"]  # an uncased tokenizer reads both alike
    raw["tasks"][0]["data"]["label_map"] = {"billing": "refund", "account": "REFUND"}
    project.write_text(yaml.safe_dump(raw))
    with pytest.raises(DataError, match=r"labels 'refund' and 'REFUND' are the same tokens to this tokenizer"):
        mtlora.train(project, "triage", **QUIET)
    assert "triage" not in Registry(load_config(project).registry)


def test_labels_too_long_for_their_targets_are_named_by_task_before_any_task_trains(
        tmp_path: Path, warm_start_bert: Path) -> None:
    """The check ran when the task's turn came (after every task before it had trained) and named no task:
    `data.labels: ...` in a project of several. A multitask adapter names the part whose labels they are."""
    project = write_seq2seq_project(tmp_path, warm_start_bert)
    raw = yaml.safe_load(project.read_text())
    triage = raw["tasks"].pop(0)
    triage["seq2seq"].update(max_target_length=2, task_token="<triage>")
    raw["tasks"].append(triage)
    raw["tasks"].append({"name": "writer", "kind": "multitask", "mixture": {"tasks": ["summarize", "triage"]}})
    project.write_text(yaml.safe_dump(raw))
    for task in (None, "writer"):
        with pytest.raises(DataError, match=r"^tasks\.triage\.data\.labels: label 'refund' takes 3 target tokens"):
            mtlora.train(project, task, **QUIET)
    assert Registry(load_config(project).registry).names() == []


def test_a_label_of_exactly_max_target_length_tokens_is_scored_whole(tiny_bert: Path) -> None:
    from mtlora.backbone import load_tokenizer
    from mtlora.tasks.instruction_classification import InstructionClassificationTask

    tokenizer = load_tokenizer(str(tiny_bert))
    kind = InstructionClassificationTask(labels=["refund", "login"], options={"max_target_length": 3})
    sep = tokenizer.sep_token_id  # [CLS] refund [SEP]: 3 tokens, the decoder starting from [CLS] itself
    assert kind.label_targets(tokenizer) == [[tokenizer.convert_tokens_to_ids(label), sep] for label in kind.labels]


def test_adapters_share_a_generation_pass_only_when_they_answer_alike() -> None:
    """Rows of one `generate` (or scoring pass) get one set of decoding settings and one label set: adapters
    that differ in either must not share one."""
    from mtlora.tasks.generation import GenerationTask
    from mtlora.tasks.instruction_classification import InstructionClassificationTask

    def triage(labels: list[str]) -> InstructionClassificationTask:
        return InstructionClassificationTask(labels=labels)

    assert triage(["refund", "login"]).batch_key() == triage(["refund", "login"]).batch_key()
    assert triage(["refund", "login"]).batch_key() != triage(["refund", "other"]).batch_key()
    greedy = GenerationTask(options={"decoding": {"max_new_tokens": 6}})
    beams = GenerationTask(options={"decoding": {"max_new_tokens": 6, "num_beams": 4, "length_penalty": 2.0,
                                                 "no_repeat_ngram_size": 3}})
    assert greedy.batch_key() != beams.batch_key() != GenerationTask().batch_key()
    assert greedy.generation_kwargs() == {"max_new_tokens": 6, "num_beams": 1, "do_sample": False}
    assert beams.generation_kwargs() == {"max_new_tokens": 6, "num_beams": 4, "do_sample": False,
                                         "no_repeat_ngram_size": 3, "length_penalty": 2.0, "early_stopping": True}


def test_each_generated_text_keeps_its_own_token_count_and_truncated_flag() -> None:
    from mtlora.tasks.generation import GenerationTask

    outputs = [{"text": "a short one", "tokens": 4}, {"text": "cut", "tokens": 2}]
    predictions = GenerationTask().decode(outputs, Encoded({}, [0, 1], truncated=[False, True]), [{}, {}])
    assert predictions == [{"text": "a short one", "generated_tokens": 4, "truncated": False},
                           {"text": "cut", "generated_tokens": 2, "truncated": True}]


def test_mean_primary_puts_each_part_s_main_metric_on_a_0_to_1_scale() -> None:
    """ROUGE-L runs to 100, valid_mcq_share to 1: averaged as they are, ROUGE would outweigh the MCQs."""
    from mtlora.tasks.generation import GenerationTask
    from mtlora.tasks.multitask import MultitaskTask

    kind = MultitaskTask.from_parts({"summarize": GenerationTask(options={"task_token": "<summarize>"}),
                                     "mcq": MCQGenerationTask(options={"task_token": "<mcq>", "num_options": 2})}, {})
    gold = MCQ("who sat on the mat?", ["the cat", "the dog"], answer=1)
    examples = [{"text": "a good film", "target": "great film", "task": "summarize"},
                {"text": "the dog sat on the mat", "mcq": gold, "task": "mcq"},
                {"text": "the dog sat on the mat", "mcq": gold, "task": "mcq"}]
    outputs = [{"text": "great film today", "tokens": 3}, {"text": gold.format(), "tokens": 9},
               {"text": "no mcq here", "tokens": 3}]
    metrics = kind.metrics(kind.decode(outputs, Encoded({}, [0, 1, 2], truncated=[False] * 3), examples), examples)
    assert metrics["summarize/rougeL"] == pytest.approx(80.0)  # P 2/3, R 1
    assert metrics["mcq/valid_mcq_share"] == 0.5
    assert metrics["mean_primary"] == pytest.approx((0.8 + 0.5) / 2)


def with_writer(project: Path, **mixture) -> Path:
    raw = yaml.safe_load(project.read_text())
    raw["tasks"].append({"name": "writer", "kind": "multitask",
                         "mixture": {"tasks": ["summarize", "mcq"], **mixture}, "training": {"epochs": 12}})
    project.write_text(yaml.safe_dump(raw))
    return project


def test_a_multitask_adapter_learns_a_mix_told_apart_by_task_tokens(tmp_path: Path, warm_start_bert: Path) -> None:
    project = with_writer(write_seq2seq_project(tmp_path, warm_start_bert), temperature=2.0)
    outcome = mtlora.train(project, "writer", **QUIET)[0]
    losses = [loss for _, loss in outcome.losses]
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3, losses

    manifest = mtlora.show_adapter(project, "writer")
    mix = manifest.kind_options["mix"]
    assert mix["temperature"] == 2.0 and set(mix["tasks"]) == {"summarize", "mcq"}
    # 32 summaries and 8 MCQs at T=2: shares sqrt(32) : sqrt(8) = 2 : 1 of the 40 examples drawn.
    assert mix["tasks"]["summarize"]["drawn"] == 27 and mix["tasks"]["mcq"]["drawn"] == 13
    assert manifest.kind_options["parts"]["mcq"]["options"]["task_token"] == "<mcq>"

    predictor = mtlora.load_predictor(project, "writer")
    summary, mcq = predictor.predict_batch(["<summarize> great good movie", "<mcq> the cat sat on the mat"])
    assert summary["part"] == "summarize" and "text" in summary
    assert mcq["part"] == "mcq" and "mcq" in mcq
    engine = Engine.from_config(project, ["writer"], precision="fp32")
    answer = engine.predict("<mcq> the cat sat", task="writer")
    assert answer["task"] == "writer" and answer["part"] == "mcq"
    routed = engine.predict("great good movie")  # routed, without a task token: nothing here can take it
    assert routed["task"] is None and routed["reason"] == "no loaded task takes a text", routed
    with pytest.raises(mtlora.errors.InputError, match=r"start the text with one of its task tokens: <summarize>"):
        predictor.predict("great good movie")

    report = mtlora.evaluate(project, "writer", write=False, log=lambda _: None)[0]
    assert {"summarize/rougeL", "mcq/valid_mcq_share", "mean_primary"} <= report.metrics["lora"].keys()
    assert {sample["lora"].split("]")[0] for sample in report.samples} == {"[summarize", "[mcq"}  # both parts shown
    engine = Engine.from_config(project, tasks=["writer"], precision="fp32")
    assert engine.predict("<summarize> great good movie", task="writer")["text"] == summary["text"]

    # Its export holds each part's decoding beside the one generation_config.json.
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig

    folder = mtlora.merge(project, "writer", tmp_path / "merged")
    decoding = {part: GenerationConfig.from_pretrained(folder, f"{part}_generation_config.json")
                for part in ("summarize", "mcq")}
    assert (decoding["summarize"].max_new_tokens, decoding["mcq"].max_new_tokens) == (6, 24)
    model, tokenizer = AutoModelForSeq2SeqLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    encoded = tokenizer(["<summarize> great good movie"], return_tensors="pt", return_token_type_ids=False)
    with torch.inference_mode():
        written = model.generate(**encoded, generation_config=decoding["summarize"])[0]
    assert tokenizer.decode(written, skip_special_tokens=True).strip() == summary["text"]

    # With the part's own adapter loaded too, <summarize> is also a task name: naming the multitask
    # adapter keeps it its task token; naming no task sends the text to the part's adapter, which reads
    # a task token written by the caller as if it had not been.
    mtlora.train(project, "summarize", **QUIET)
    alone_in_engine = Engine.from_config(project, tasks=["writer"], precision="fp32")
    assert alone_in_engine.predict("<summarize> great good movie")["task"] == "writer"  # its token, though trained
    engine = Engine.from_config(project, tasks=["writer", "summarize"], precision="fp32")
    answer = engine.predict("<summarize> great good movie", task="writer")
    assert (answer["task"], answer["part"], answer["text"]) == ("writer", "summarize", summary["text"])
    alone = engine.predict("great good movie", task="summarize")
    assert engine.predict("<summarize> great good movie")["task"] == "summarize"
    assert engine.predict("<summarize> great good movie", task="summarize")["text"] == alone["text"]


def test_the_routing_mix_leaves_a_multitask_task_to_its_parts(tmp_path: Path, warm_start_bert: Path) -> None:
    """No router can choose writer for its parts' inputs (they carry no task token): in the mix they would
    count twice, once as wrong by construction."""
    project = load_config(with_writer(write_seq2seq_project(tmp_path, warm_start_bert)))
    said: list[str] = []
    mix = routing_mix(project, log=said.append)
    assert collections.Counter(task for _, task in mix) == {"triage": 16, "summarize": 32, "mcq": 8}
    assert said == ["[routing] multitask writer left out of the mix: a router sends their inputs to their parts; "
                    "task tokens reach the multitask adapter"]


def test_the_learned_router_leaves_a_multitask_task_to_its_parts(tmp_path: Path, warm_start_bert: Path) -> None:
    """A class of its own for writer, on its parts' inputs, would take half their probability."""
    from mtlora.routing import train_router
    from mtlora.routing.token_head import TokenRouterHead

    project = load_config(with_writer(write_seq2seq_project(tmp_path, warm_start_bert)),
                          overrides={"router": {"features": "embeddings"}})
    said: list[str] = []
    train_router(project, progress=False, log=said.append)
    info = TokenRouterHead.saved_info(Registry(project.registry))
    assert info is not None and info.labels == ["mcq", "summarize", "triage"]
    assert said[0].startswith("[router] head over token embeddings fit on ") and " inputs from 3 tasks" in said[0]


@pytest.mark.parametrize("temperature", [2.0, 4.0])
def test_a_task_drawn_more_often_than_it_has_examples_repeats_each_alike(tmp_path: Path, warm_start_bert: Path,
                                                                          temperature: float) -> None:
    """Upsampled by the temperature, the small task's every example is drawn floor(k) or ceil(k) times:
    drawn one by one with replacement, some were never trained on while others came up many times."""
    from mtlora.data import load_task_data

    project = with_writer(write_seq2seq_project(tmp_path, warm_start_bert), temperature=temperature)
    config = load_config(project)
    mcq = load_task_data(config, config.task("mcq")).train
    writer = load_task_data(config, config.task("writer"))
    drawn = [e for e in writer.train if e["task"] == "mcq"]
    assert len(drawn) > len(mcq)  # upsampled

    def key(example: dict) -> str:
        return json.dumps({k: v for k, v in example.items() if k != "task"}, sort_keys=True, default=str)

    counts = collections.Counter(key(e) for e in drawn)
    assert set(counts) == {key(e) for e in mcq}
    whole = len(drawn) // len(mcq)
    assert set(counts.values()) <= {whole, whole + 1}, counts.values()


def test_a_task_drawn_less_often_than_it_has_examples_trains_on_others_in_each_epoch(
        tmp_path: Path, warm_start_bert: Path) -> None:
    """The mix is drawn for every epoch of the run at once and trained in one pass: over two epochs each
    example of a downsampled task trains once or twice, where one epoch's draw, repeated, left the same
    examples out of both. A run that stops at max_steps repeats one epoch's draw."""
    from mtlora.data import load_task_data

    project = load_config(with_writer(write_seq2seq_project(tmp_path, warm_start_bert), temperature=2.0))

    def writer(**training: float) -> TaskConfig:
        task = project.task("writer")
        return task.model_copy(update={"training": task.training.model_copy(update=training)})

    def key(example: dict) -> str:
        return json.dumps({k: v for k, v in example.items() if k != "task"}, sort_keys=True, default=str)

    pool = collections.Counter(key(e) for e in load_task_data(project, project.task("summarize")).train)
    data = load_task_data(project, writer(epochs=2.0))
    drawn = collections.Counter(key(e) for e in data.train if e["task"] == "summarize")
    assert data.epochs_drawn == 2.0 and drawn.total() == 2 * 27  # 27 of its 32 examples an epoch
    assert drawn.keys() == pool.keys() and all(pool[k] <= n <= 2 * pool[k] for k, n in drawn.items()), drawn
    once = load_task_data(project, writer(epochs=2.0, max_steps=5))
    assert once.epochs_drawn is None and len(once.train) == 27 + 13
    assert once.train == load_task_data(project, writer(epochs=1.0)).train

    outcome = train_task(project, writer(epochs=2.0, checkpoint_every=1000), "lora", progress=False,
                         log=lambda _: None)
    assert outcome.steps == len(data.train) // 4  # one pass over both epochs' draw, 4 rows a step


def test_mix_shares_follow_the_temperature() -> None:
    from mtlora.data.splits import mix_shares

    assert mix_shares({"a": 300, "b": 100}, 1.0) == pytest.approx({"a": 0.75, "b": 0.25})
    assert mix_shares({"a": 400, "b": 100}, 2.0) == pytest.approx({"a": 2 / 3, "b": 1 / 3})
    assert mix_shares({"a": 10**6, "b": 1}, 1000.0)["b"] > 0.49


def test_a_mixture_is_checked(tmp_path: Path, warm_start_bert: Path) -> None:
    project = with_writer(write_seq2seq_project(tmp_path, warm_start_bert))
    raw = yaml.safe_load(project.read_text())
    raw["tasks"][-1]["mixture"]["tasks"] = ["summarize", "triage"]
    project.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"task .triage. needs a seq2seq\.task_token"):
        load_config(project)
    raw["tasks"][-1]["mixture"]["tasks"] = ["summarize", "nope"]
    project.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="mixes 'nope', which is not a task"):
        load_config(project)
    raw["tasks"][-1]["mixture"]["tasks"] = ["summarize", "mcq"]
    raw["tasks"][-1]["data"] = {"train": "summarize.jsonl"}
    project.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="takes its tasks' data: remove 'data'"):
        load_config(project)


def test_routers_run_on_a_t5_backbone(tmp_path: Path, tiny_t5: Path) -> None:
    """T5Model needs a decoder input: routing read the encoder through it and crashed, and so did the learned
    router, a classification adapter that T5 decodes from the input shifted right."""
    path = trained_briefly(write_seq2seq_project(tmp_path, tiny_t5), ["triage", "summarize"], router=True)
    engine = Engine.from_config(path)
    for router in ("semantic", "learned"):
        route = engine.route([engine.request("where is my refund")], router)[0]
        assert route.router == router and set(route.scores) == {"triage", "summarize"}
        answer = engine.predict("where is my refund", router=router)
        assert answer["task"] in (None, "triage", "summarize")


def test_extractive_qa_on_t5_is_refused_with_the_reason(tmp_path: Path, tiny_t5: Path) -> None:
    """T5ForQuestionAnswering holds its encoder and decoder itself: PEFT was asked to train them in full as
    the 'head' and failed with 'All modules were excluded'."""
    from conftest import write_tiny_project

    config = load_config(write_tiny_project(tmp_path, tiny_t5))
    with pytest.raises(ConfigError, match="T5ForQuestionAnswering has no backbone module"):
        train_task(config, config.task("qa"), "lora", **QUIET)


@pytest.mark.parametrize("mixed_batches", [True, False])
def test_encoder_kinds_on_t5_answer_in_the_engine_as_alone(tmp_path: Path, tiny_t5: Path,
                                                            mixed_batches: bool) -> None:
    """T5ForSequenceClassification decodes the input shifted right: the engine's shared pass must too."""
    from conftest import write_tiny_project
    from test_engine import assert_answers_as_alone

    items, tasks = ["loved this great movie", ("the dog sat", "a dog sat")], ["sentiment", "similarity"]
    path = trained_briefly(write_tiny_project(tmp_path, tiny_t5), tasks)
    engine = Engine.from_config(path, precision="fp32", mixed_batches=mixed_batches)
    assert_answers_as_alone(engine, path, items, tasks)


def test_task_tokens_may_take_the_last_free_rows_and_one_more_is_refused_with_nothing_written() -> None:
    """Every engine holds SPARE_TOKEN_ROWS rows for all its adapters' task tokens together: an adapter that
    needs exactly the rows left is served, one that needs more is refused before any row is overwritten."""
    from types import SimpleNamespace

    from mtlora.errors import AdapterNotServableError

    embedding = torch.nn.Embedding(10, 2)
    original = embedding.weight.detach().clone()
    engine = SimpleNamespace(model=SimpleNamespace(get_input_embeddings=lambda: embedding), _free_rows=[7, 8, 9])
    with pytest.raises(AdapterNotServableError, match="needs 4 task-token rows and 3 of the engine's 64 are free"):
        Seq2SeqAdapters._place_tokens(engine, "wide", [1, 2, 3, 4], torch.ones(4, 2))  # type: ignore[arg-type]
    assert engine._free_rows == [7, 8, 9] and torch.equal(embedding.weight, original)
    rows = Seq2SeqAdapters._place_tokens(engine, "fits", [1, 2, 3], torch.arange(6.0).view(3, 2))  # type: ignore[arg-type]
    assert sorted(rows.values()) == [7, 8, 9] and engine._free_rows == []
    assert [embedding.weight[rows[token]].tolist() for token in (1, 2, 3)] == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]


def test_a_text_starting_with_a_task_token_goes_to_the_adapter_it_belongs_to() -> None:
    """`<q>` is the token of task `quiz`, not a task's name: routed as text, a router sent "<q> passage"
    to another task, which read the token as a word. The task's own adapter comes before a multitask
    adapter that also reads the token; where two of the same standing read it, the router judges."""
    from types import SimpleNamespace

    from mtlora.tasks import get_task_kind
    from mtlora.tasks.multitask import MultitaskTask

    quiz = get_task_kind("generation")(options={"task_token": "<q>"})
    kinds = {"support": get_task_kind("classification")(labels=["a", "b"]), "quiz": quiz,
             "writer": MultitaskTask.from_parts({"quiz": quiz}, {}),
             "quiz2": get_task_kind("generation")(options={"task_token": "<q>"})}
    engine = SimpleNamespace(_tasks={name: SimpleNamespace(kind=kind) for name, kind in kinds.items()})

    def marked(text: str, candidates: list[str]) -> str | None:
        route = Engine._marked_by_token(engine, text, candidates)  # type: ignore[arg-type]
        return route and f"{route.task} ({route.router}: {route.reason})"

    assert marked("<q> a passage", ["support", "quiz", "writer"]) == \
        "quiz (explicit: the text starts with its task token)"
    assert marked("<q> a passage", ["support", "writer"]) == "writer (explicit: the text starts with its task token)"
    assert marked("a passage <q>", ["support", "quiz", "writer"]) is None
    assert marked("<q> a passage", ["support", "quiz", "quiz2"]) is None


def test_a_loaded_adapters_task_token_is_not_refused_as_a_typo_of_another_tasks_name() -> None:
    """`<quiz>` is trivia's token, a letter off task quiz2's name: refused as a misspelt `<quiz2>`, the text
    never reached the adapter whose token it is."""
    from mtlora.engine.inputs import KnownTasks, engine_request
    from mtlora.errors import UnknownTaskError
    from mtlora.tasks import get_task_kind

    quiz2 = get_task_kind("classification")(labels=["a", "b"])
    trivia = get_task_kind("generation")(options={"task_token": "<quiz>"})
    request = engine_request("<quiz> a passage", None, KnownTasks({"quiz2": quiz2, "trivia": trivia}, [], []))
    assert (request.task, request.text) == (None, "<quiz> a passage")  # left whole, for the token's route
    with pytest.raises(UnknownTaskError, match="Did you mean 'quiz2'"):  # with no adapter of that token, a typo
        engine_request("<quiz> a passage", None, KnownTasks({"quiz2": quiz2}, [], []))
