"""Saving an adapter at a lower rank than it trained at: the best approximation, a plain PEFT adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import layer as lora
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from typer.testing import CliRunner

import mtlora
from mtlora import load_config
from mtlora.cli import app
from mtlora.errors import ConfigError
from mtlora.training import train_task
from mtlora.training.saved_rank import check_truncatable, truncate_rank

TEXTS = ["loved this great movie", "terrible boring film", "the cat sat on the mat"]


def lora_model(backbone: Path, rank_of_update: int | None = None) -> PeftModel:
    """A rank-4 LoRA model with random factors (B starts at zero in PEFT, which would make every test pass);
    with `rank_of_update`, each layer's B·A has that rank."""
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=2)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", modules_to_save=["classifier"])
    model = get_peft_model(base, config)
    for layer in model.modules():
        if type(layer) is lora.Linear:
            b = layer.lora_B["default"].weight
            with torch.no_grad():
                b.normal_(std=0.5)
                if rank_of_update is not None:
                    b[:, rank_of_update:] = 0
    return model.eval()


def deltas(model: PeftModel) -> dict[str, torch.Tensor]:
    return {name: layer.get_delta_weight("default") for name, layer in model.named_modules()
            if type(layer) is lora.Linear}


def logits(model: torch.nn.Module, backbone: Path) -> torch.Tensor:
    batch = AutoTokenizer.from_pretrained(backbone)(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return model(**batch).logits


def test_each_update_becomes_its_best_lower_rank_approximation(tiny_bert: Path) -> None:
    model = lora_model(tiny_bert)
    before = deltas(model)
    truncation = truncate_rank(model, 2)
    assert truncation is not None and truncation.saved_rank == 2 and truncation.trained_rank == 4
    # Every layer has the same scaling: the energy shares of the deltas are those of the factors.
    spectra = [torch.linalg.svdvals(delta.double()) ** 2 for delta in before.values()]
    assert truncation.energy_kept == pytest.approx(
        sum(s[:2].sum().item() for s in spectra) / sum(s.sum().item() for s in spectra), rel=1e-6)
    assert truncation.lowest_layer_energy_kept == pytest.approx(
        min(s[:2].sum().item() / s.sum().item() for s in spectra), rel=1e-6)
    for name, delta in deltas(model).items():
        u, s, vh = torch.linalg.svd(before[name].double())
        best = (u[:, :2] * s[:2]) @ vh[:2]
        torch.testing.assert_close(delta.double(), best, rtol=0, atol=1e-5)
    assert (model.peft_config["default"].r, model.peft_config["default"].lora_alpha) == (2, 4)


def test_an_update_already_of_the_saved_rank_is_saved_exactly_as_a_plain_peft_adapter(
        tiny_bert: Path, tmp_path: Path) -> None:
    model = lora_model(tiny_bert, rank_of_update=2)
    expected = logits(model, tiny_bert)
    truncation = truncate_rank(model, 2)
    assert truncation is not None and truncation.energy_kept == pytest.approx(1.0)
    torch.testing.assert_close(logits(model, tiny_bert), expected, rtol=0, atol=1e-5)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["r"] == 2
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    loaded = PeftModel.from_pretrained(base, tmp_path).eval()
    torch.testing.assert_close(logits(loaded, tiny_bert), expected, rtol=0, atol=1e-5)


def test_nothing_changes_unless_the_saved_rank_is_lower(tiny_bert: Path) -> None:
    model = lora_model(tiny_bert)
    before = deltas(model)
    assert truncate_rank(model, None) is None and truncate_rank(model, 4) is None
    for name, delta in deltas(model).items():
        assert torch.equal(delta, before[name])


def test_an_adapter_that_learned_nothing_reports_all_of_its_energy_kept(tiny_bert: Path) -> None:
    """PEFT starts B at zero, so an adapter trained at a tiny rate is near it: cutting it loses nothing,
    and the manifest must not say it lost everything (nor divide by zero)."""
    model = lora_model(tiny_bert)
    for layer in model.modules():
        if type(layer) is lora.Linear:
            torch.nn.init.zeros_(layer.lora_B["default"].weight)
    truncation = truncate_rank(model, 2)
    assert truncation is not None
    assert (truncation.energy_kept, truncation.lowest_layer_energy_kept) == (1.0, 1.0)
    assert "kept 100.0% of the update's energy (lowest layer 100.0%)" in truncation.describe()

def test_training_saves_at_the_saved_rank_and_serves_what_it_saved(tiny_project: Path) -> None:
    config = load_config(tiny_project, overrides={"defaults": {"lora": {"saved_rank": 2}}})
    messages: list[str] = []
    outcome = train_task(config, config.task("sentiment"), "lora", progress=False, log=messages.append)
    assert any("saved at rank 2 of 4" in m for m in messages), messages
    folder = config.registry / "sentiment"
    assert json.loads((folder / "adapter_config.json").read_text())["r"] == 2
    manifest = mtlora.show_adapter(config, "sentiment")
    record = manifest.training["saved_rank"]
    assert (record["trained_rank"], record["saved_rank"]) == (4, 2)
    saved = load_file(folder / "adapter_model.safetensors")
    stored = manifest.parameters.stored
    assert stored == sum(t.numel() for t in saved.values()) < manifest.parameters.trainable
    listed = CliRunner().invoke(app, ["adapters", "list", str(tiny_project)], catch_exceptions=False)
    assert f"{stored:,}" in next(line for line in listed.output.splitlines() if line.startswith("│ sentiment"))
    report = mtlora.evaluate(config, "sentiment", log=lambda _: None)[0]
    assert report.parameters["lora"]["stored"] == stored
    assert f"| {stored:,} |" in (config.reports / "summary.md").read_text()
    in_memory = outcome.model
    assert in_memory is not None
    served = mtlora.Engine.from_config(config, ["sentiment"], precision="fp32").predict_batch(TEXTS, task="sentiment")
    predictor = mtlora.load_predictor(config, "sentiment")
    batch = predictor.tokenizer(TEXTS, padding=True, return_tensors="pt").to(predictor.device)
    with torch.inference_mode():
        torch.testing.assert_close(predictor.model(**batch).logits, in_memory.to(predictor.device)(**batch).logits,
                                   rtol=0, atol=1e-5)
    for ours, theirs in zip(served, predictor.predict_batch(TEXTS), strict=True):
        assert ours["confidence"] == pytest.approx(theirs["confidence"], abs=1e-5)


def test_auto_saves_encoder_kinds_at_rank_4_and_keeps_seq2seq_at_the_trained_rank(
        tmp_path: Path, tiny_bert: Path, warm_start_bert: Path) -> None:
    from conftest import write_seq2seq_project, write_tiny_project

    r8 = {"defaults": {"lora": {"r": 8, "alpha": 16}, "training": {"epochs": 1}}}
    for project, task, saved in ((write_tiny_project(tmp_path / "encoder", tiny_bert), "sentiment", 4),
                                 (write_seq2seq_project(tmp_path / "seq2seq", warm_start_bert), "summarize", 8)):
        config = load_config(project, overrides=r8)
        assert config.task(task).lora.saved_rank == "auto"
        train_task(config, config.task(task), "lora", progress=False, log=lambda _: None)
        assert json.loads((config.registry / task / "adapter_config.json").read_text())["r"] == saved


def test_what_cannot_be_cut_is_refused_before_training(tiny_project: Path, tiny_bert: Path) -> None:
    config = load_config(tiny_project, overrides={"defaults": {"lora": {
        "saved_rank": 2, "target_modules": ["query", "value", "word_embeddings"]}}})
    messages: list[str] = []
    with pytest.raises(ConfigError, match=r"not .*word_embeddings.*set lora.saved_rank: null"):
        train_task(config, config.task("sentiment"), "lora", progress=False, log=messages.append)
    assert not any("training lora" in m for m in messages)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    dora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["query"], use_dora=True))
    with pytest.raises(ConfigError, match="LoRA variant"):
        truncate_rank(dora, 2)
    # Saved at the rank it trains at, nothing is cut: such an adapter trains (r: 4 meets saved_rank auto's 4).
    check_truncatable(dora, 4)
    embedded = get_peft_model(AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2),
                              LoraConfig(r=4, lora_alpha=8, target_modules=["query", "word_embeddings"]))
    check_truncatable(embedded, 4)
    assert truncate_rank(embedded, 4) is None
