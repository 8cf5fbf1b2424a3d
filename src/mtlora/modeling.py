"""Building a task model for each training method, loading trained adapters and baselines back, and exporting
an adapter merged into its base model."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils.error import NoMatchingPeftModuleError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mtlora import atomic
from mtlora.backbone import (
    check_trained_on,
    load_task_model,
    load_tokenizer,
    no_save_progress_bars,
    open_tokenizer,
    resize_input_embeddings,
)
from mtlora.config import LoraSettings
from mtlora.errors import BaseModelMismatchError, ConfigError, InputError, RegistryError, train_hint
from mtlora.registry import Manifest, Registry
from mtlora.tasks import TaskKind, get_task_kind

# peft 0.21 still calls the transformers 5 name this warns about; the user can do nothing about it.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
# Trainer checkpoints of a model with task tokens save the resized embedding in full (PEFT decides and warns);
# only checkpoints do: the adapter itself is saved with its token rows alone (`training/trainer.py`).
warnings.filterwarnings("ignore", message="Setting `save_embedding_layers` to `True`", category=UserWarning)
# EncoderDecoderModel warns on every training step that its loss changed in v4.12 (2021): nothing to act on.
warnings.filterwarnings("ignore", message="Version v4.12.0 introduces a better way", category=FutureWarning)

Method = Literal["lora", "head_only", "full"]
BASELINE_FILE = "head.safetensors"
BASELINE_RECORD = "baseline.json"  # beside it: how it was trained
TOKENIZER_FILE = "tokenizer_config.json"  # present in an adapter folder that carries its own tokenizer


@dataclass
class TaskModel:
    model: nn.Module
    kind: TaskKind
    fingerprint: str
    head_modules: list[str]  # trained alongside LoRA and saved with the adapter
    base_parameters: int  # of the task model before any adapter: what full fine-tuning would train


def build_task_model(backbone: str, kind: TaskKind, method: Method, lora: LoraSettings, seed: int,
                     tokenizer: PreTrainedTokenizerBase | None = None) -> TaskModel:
    """The model to train: LoRA on the backbone, the head alone, or every weight.

    `tokenizer` is the kind's tokenizer when it added tokens to the backbone's (task tokens): their
    embedding rows are made and trained, and saved with the adapter.
    """
    loaded = load_task_model(backbone, kind.auto_class, seed, **kind.model_kwargs())
    model: PreTrainedModel | PeftModel = loaded.model
    if kind.has_head and not isinstance(getattr(model, model.base_model_prefix, None), nn.Module):
        # T5ForQuestionAnswering holds the encoder and decoder itself: nothing tells head from backbone.
        raise ConfigError(f"backbone '{backbone}'", [
            f"{type(model).__name__} has no backbone module ('{model.base_model_prefix}') apart from its head, so "
            f"mtlora cannot put LoRA on the one and train the other; give {kind.name} tasks an encoder backbone "
            "(BERT, RoBERTa...)"])
    # Seq2seq kinds have no head of their own: what they train in full is what the checkpoint lacks.
    head = sorted(set(head_module_names(model) if kind.has_head else []) | set(loaded.fresh_modules))
    added = added_token_ids(load_tokenizer(backbone), tokenizer)
    if added:
        resize_input_embeddings(model, len(tokenizer))  # type: ignore[arg-type]
    base_parameters = sum(p.numel() for p in model.parameters())
    if method == "lora":
        config = LoraConfig(
            task_type=kind.peft_task_type,
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            modules_to_save=list(head) or None,  # a copy: PEFT extends the list in place (with its defaults)
            trainable_token_indices=added or None,
        )
        try:
            model = get_peft_model(model, config)
        except NoMatchingPeftModuleError:
            linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                             if isinstance(module, nn.Linear) and not _in_modules(f"{name}.weight", head)})
            raise ConfigError(f"lora.target_modules {lora.target_modules}", [
                f"no layer of backbone '{backbone}' has such a name; its linear layers are named "
                f"{', '.join(linear)}: name some of them, or give all-linear"]) from None
    elif method == "head_only":
        for name, parameter in model.named_parameters():
            parameter.requires_grad = _in_modules(name, head)
    return TaskModel(model=model, kind=kind, fingerprint=loaded.fingerprint, head_modules=head,
                     base_parameters=base_parameters)


def added_token_ids(base: PreTrainedTokenizerBase, tokenizer: PreTrainedTokenizerBase | None) -> list[int]:
    """Ids of the tokens `tokenizer` has that the backbone's own tokenizer does not."""
    if tokenizer is None:
        return []
    known = base.get_vocab()
    return sorted(i for token, i in tokenizer.get_vocab().items() if token not in known)


def adapter_tokenizer(registry: Registry, name: str, backbone: str) -> PreTrainedTokenizerBase:
    """The tokenizer saved with an adapter (it has task tokens), else the backbone's."""
    folder = registry.path(name)
    if (folder / TOKENIZER_FILE).is_file():
        return open_tokenizer(str(folder))
    return load_tokenizer(backbone)


def head_module_names(model: nn.Module) -> list[str]:
    """The task head: children with weights outside the backbone (`classifier`, `qa_outputs`, ...)."""
    prefix = getattr(model, "base_model_prefix", "")
    return [name for name, child in model.named_children()
            if name != prefix and any(True for _ in child.parameters())]


def _in_modules(parameter_name: str, modules: list[str]) -> bool:
    parts = parameter_name.split(".")
    return any(m in parts[:-1] for m in modules)


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def kind_from_manifest(manifest: Manifest) -> TaskKind:
    try:
        return get_task_kind(manifest.kind)(labels=manifest.labels, fields=manifest.fields,
                                            label_map=manifest.label_map, options=manifest.kind_options)
    except ValueError as error:  # a setting an older version stored, which this one refuses
        raise RegistryError(f"adapter '{manifest.name}' was trained with settings this version of mtlora refuses: "
                            f"{error}; retrain it with the setting fixed (`{train_hint(manifest.name)}`)") from None


def check_base(manifest: Manifest, backbone: str) -> None:
    check_trained_on(f"adapter '{manifest.name}'", manifest.base_model, manifest.base_fingerprint, backbone)


def load_adapter_model(registry: Registry, name: str, backbone: str) -> tuple[PeftModel, TaskKind, Manifest]:
    """Base model + head shape from the manifest, then the adapter through plain `PeftModel.from_pretrained`."""
    manifest = registry.verified(name)
    check_base(manifest, backbone)
    kind = kind_from_manifest(manifest)
    loaded = load_task_model(backbone, kind.auto_class, seed=0, **manifest.head_kwargs())
    resize_input_embeddings(loaded.model, len(adapter_tokenizer(registry, name, backbone)))
    model = PeftModel.from_pretrained(loaded.model, registry.path(name))
    model.eval()
    return model, kind, manifest


def export_merged(registry: Registry, backbone: str, name: str, folder: str | Path, overwrite: bool = False) -> Path:
    """Write adapter `name` as a plain transformers model with its LoRA merged in (plus the tokenizer).
    It needs no engine, so an adapter no engine can serve (a LoRA variant such as DoRA) exports too.

    The folder is written whole or not at all. An existing folder with files in it is replaced only
    with `overwrite`, and only when it holds a saved model (`config.json`): never someone's other files.
    """
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        if not overwrite:
            raise InputError(f"{folder} already exists and is not empty; give a new folder, or overwrite "
                             "an earlier export (overwrite=True; CLI: --overwrite)")
        if not (folder / "config.json").is_file():
            raise InputError(f"{folder} holds no saved model (no config.json), so it is not replaced; "
                             "give a new folder")
    model, kind, manifest = load_adapter_model(registry, name, backbone)
    merged = model.merge_and_unload()
    kind.prepare_export(merged)
    tokenizer = copy.copy(adapter_tokenizer(registry, name, backbone))  # a shared, cached one
    # Plain `tokenizer(text, truncation=True)` then cuts where the adapter was trained to read up to.
    tokenizer.model_max_length = manifest.max_length
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic.staged_folder(folder, folder.parent / ".mtlora-staging") as staging, no_save_progress_bars():
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        for name, text in kind.export_files(merged).items():
            (staging / name).write_text(text)
    return folder


def save_baseline(model: nn.Module, head: list[str], folder: Path) -> None:
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if _in_modules(k, head)}
    save_file(state, str(folder / BASELINE_FILE))


def load_baseline_model(registry: Registry, name: str, backbone: str) -> nn.Module | None:
    """The head-only baseline of `name`, or None when it was not trained."""
    folder = registry.baseline_path(name)
    if not (folder / BASELINE_FILE).is_file():
        return None
    manifest = registry.manifest(name)
    kind = kind_from_manifest(manifest)
    loaded = load_task_model(backbone, kind.auto_class, seed=0, **manifest.head_kwargs())
    _, unexpected = loaded.model.load_state_dict(load_file(str(folder / BASELINE_FILE)), strict=False)
    if unexpected:
        raise BaseModelMismatchError(f"baseline {folder} does not fit the model: unexpected {unexpected[:3]}")
    loaded.model.eval()
    return loaded.model


def load_untrained_model(backbone: str, kind: TaskKind, seed: int, tokens: int = 0) -> nn.Module:
    """The base model with the head as initialised before training: the floor LoRA is measured from.

    For seq2seq kinds this is the prompt-only base: the same instruction, no adapter. `tokens` makes
    room for task tokens the adapter's tokenizer added (their rows are untrained here).
    """
    with torch.random.fork_rng():
        loaded = load_task_model(backbone, kind.auto_class, seed, **kind.model_kwargs())
    resize_input_embeddings(loaded.model, tokens)
    loaded.model.eval()
    return loaded.model
