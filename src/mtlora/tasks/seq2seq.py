"""Shared parts of the seq2seq kinds: an instruction built from a prompt template goes in, text comes out.

The template (`seq2seq.prompt` or `seq2seq.prompt_file`) is stored in the manifest, so training,
evaluation and inference build the instruction the same way. A task token (`seq2seq.task_token`,
e.g. `<summarize>`) is added to the tokenizer and put before every instruction; its embedding row is
trained with the adapter (PEFT `trainable_token_indices`) and the base model's files stay untouched.
"""

from __future__ import annotations

import copy
import json
import string
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
from peft import TaskType
from torch import nn
from torch.nn import functional
from transformers import AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq

from mtlora.batching import padded_batches
from mtlora.config import Seq2SeqSettings
from mtlora.errors import InputError
from mtlora.tasks.base import Encoded, Example, Prediction, TaskKind, require_text, truncated_rows

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from mtlora.config import TaskConfig

IGNORED_LABEL = -100  # the loss skips target positions with this id (padding)


class Seq2SeqTask(TaskKind):
    auto_class = AutoModelForSeq2SeqLM
    peft_task_type = TaskType.SEQ_2_SEQ_LM
    input_shape = "text"
    has_head = False
    # Generation keeps its trained rank: a DREAM question writer trained at r=16 and saved at rank 4 wrote
    # 5.5% of its questions in a shape that no longer parses (bench/saved_rank.py).
    saved_rank = None
    mixable = True  # one seq2seq adapter can learn several, each read from its task token
    # The example fields a prompt template may use, and the one a user's input text fills.
    prompt_roles: ClassVar[tuple[str, ...]] = ("text",)
    # Seq2seq settings the kind has no use for, each with the reason: refused, not ignored.
    unused_settings: ClassVar[dict[str, str]] = {"num_options": "that is mcq_generation's"}

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.settings = self.settings_from(self.options)

    @classmethod
    def settings_from(cls, options: dict[str, Any]) -> Seq2SeqSettings:
        """The kind's prompt and decoding, from its options (checked against the roles it fills)."""
        settings = Seq2SeqSettings.model_validate(options)
        check_template(settings.prompt, cls.prompt_roles)
        return settings

    @classmethod
    def options_from_config(cls, config: TaskConfig) -> dict[str, Any]:
        return (config.seq2seq or Seq2SeqSettings()).kind_options()

    @classmethod
    def check_config(cls, config: TaskConfig) -> None:
        cls.check_label_settings(config)
        settings = config.seq2seq or Seq2SeqSettings()
        ignored = sorted(settings.model_fields_set & set(cls.unused_settings))
        if ignored:  # a setting that would change nothing is a mistake the user should hear about
            raise ValueError(f"seq2seq.{ignored[0]} does not apply to {cls.name} ({cls.unused_settings[ignored[0]]}); "
                             "remove it")
        # A prompt_file's template is checked here again once the file is read (`config.load_config`).
        check_template(settings.prompt, cls.prompt_roles)

    # ---- text in, text out ------------------------------------------------------------------------

    def source(self, example: Example) -> str:
        """The instruction the model reads for `example`."""
        text = self.settings.prompt.format(**{role: example[role] for role in self.prompt_roles})
        token = self.settings.task_token
        return f"{token} {text}" if token else text

    @abstractmethod
    def target(self, example: Example) -> str:
        """The text the model learns to write for `example`."""

    def input_example(self, text: str, text_pair: str | None = None) -> Example:
        if text_pair is not None:
            raise InputError(f"a {self.name} task takes one text, but a text pair was given")
        text = require_text(text, "text")
        # A caller may write the task token the kind puts in front itself: it is not read twice.
        return {"text": require_text(rest, "text") if (rest := self.after_task_token(text)) is not None else text}

    def starts_with_own_token(self, text: str) -> bool:
        return self.after_task_token(text) is not None

    def after_task_token(self, text: str) -> str | None:
        """`text` after this task's token, or None when it does not start with it."""
        token = self.settings.task_token
        if token is None or not text.lstrip().startswith(token):
            return None
        return text.lstrip()[len(token):].strip()

    def expected_text(self, example: Example) -> str:
        return self.target(example)

    def answer_text(self, prediction: Prediction) -> str:
        return str(prediction["text"])

    # ---- model --------------------------------------------------------------------------------------

    def prepare_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
        token = self.settings.task_token
        if token is None or token in tokenizer.get_vocab():
            return tokenizer
        tokenizer = copy.deepcopy(tokenizer)  # the backbone's tokenizer is shared (and cached)
        tokenizer.add_tokens([token], special_tokens=True)  # special: never lower-cased or split
        return tokenizer

    def encode(
        self,
        tokenizer: PreTrainedTokenizerBase,
        examples: Sequence[Example],
        max_length: int,
        doc_stride: int,
        with_targets: bool,
    ) -> Encoded:
        sources = [self.source(e) for e in examples]
        tokens = tokenizer(sources, truncation=True, max_length=max_length, return_token_type_ids=False)
        features: dict[str, list[Any]] = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
        targets_cut: list[bool] = []
        if with_targets:
            targets = [self.target(e) for e in examples]
            features["labels"], targets_cut = target_ids(tokenizer, targets, self.settings.max_target_length)
        truncated = truncated_rows(tokenizer, sources, None, tokens["input_ids"], max_length,
                                   return_token_type_ids=False)
        return Encoded(features=features, example_index=list(range(len(examples))), truncated=truncated,
                       targets_cut=targets_cut)

    def collator(self, tokenizer: PreTrainedTokenizerBase, model: nn.Module) -> Callable[[list[dict[str, Any]]], Any]:
        # The batch carries the decoder's inputs: with a `loss_func` the Trainer keeps the labels from the model.
        return DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=IGNORED_LABEL)

    def loss_func(self) -> Callable[..., torch.Tensor] | None:
        return token_mean_loss

    def run(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, encoded: Encoded, batch_size: int,
            bf16: bool, **model_kwargs: Any) -> list[dict[str, Any]]:
        """Generate each feature's text; `model_kwargs` go to `generate`, a value per row (PEFT's `adapter_names`)."""
        results: list[dict[str, Any]] = [{} for _ in range(len(encoded))]
        for index, batch, rows_kwargs in padded_batches(model, tokenizer, encoded.features, batch_size, bf16,
                                                        **model_kwargs):
            # A transformers model (or PEFT's), typed as the nn.Module it is: its methods are not known to mypy.
            generated = model.generate(**batch, **self.generation_kwargs(), **rows_kwargs)  # type: ignore[operator]
            for row, ids in zip(index, generated, strict=True):
                results[row] = {"text": decode_text(tokenizer, ids), "tokens": _generated_tokens(tokenizer, ids)}
        return results

    def prepare_export(self, model: nn.Module) -> None:
        # A plain `generate()` then decodes as the engine does, not with transformers' 20-token default.
        model.generation_config.update(**self.generation_kwargs())  # type: ignore[union-attr,operator]

    def batch_key(self) -> str:
        """Adapters whose rows can share a pass have equal keys: same kind, labels to score and decoding."""
        return json.dumps([self.name, self.labels, self.generation_kwargs()], sort_keys=True)

    def generation_kwargs(self) -> dict[str, Any]:
        decoding = self.settings.decoding
        kwargs: dict[str, Any] = {"max_new_tokens": decoding.max_new_tokens, "num_beams": decoding.num_beams,
                                  "do_sample": False}
        if decoding.no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = decoding.no_repeat_ngram_size
        if decoding.num_beams > 1:
            kwargs["length_penalty"] = decoding.length_penalty
            kwargs["early_stopping"] = True
        return kwargs


def check_template(template: str, roles: Sequence[str]) -> None:
    """A template names each of the kind's input fields, `{text}` (and `{question}`... where a kind has
    them), and nothing else."""
    literal_brace = "write a literal brace as {{ or }}"
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ValueError(f"prompt template {template!r} is malformed: {exc} ({literal_brace})") from None
    fields = ", ".join("{" + r + "}" for r in roles)
    unknown = sorted(names - set(roles))
    if unknown or "" in names:
        raise ValueError(f"prompt template {template!r} uses {unknown or ['{}']}; it may use {fields} "
                         f"({literal_brace})")
    if missing := [role for role in roles if role not in names]:
        # Every example would then read the same instruction, and the model learn nothing of its input.
        raise ValueError(f"prompt template {template!r} leaves out {{{missing[0]}}}, so the model would never see "
                         f"the input; put {fields} where the input goes, as in "
                         f"{' '.join([template.strip(), *('{' + role + '}' for role in missing)])!r}")


def target_ids(tokenizer: PreTrainedTokenizerBase, targets: Sequence[str],
               max_length: int) -> tuple[list[list[int]], list[bool]]:
    """Target token ids ending in the end-of-sequence token, and which targets `max_length` cut.

    A BERT-style tokenizer also puts [CLS] first; the decoder starts from [CLS] already (it is the
    decoder start token of a warm-started encoder-decoder), so the target does not repeat it.
    """
    ids = tokenizer(list(targets), truncation=True, max_length=max_length)["input_ids"]
    cut = truncated_rows(tokenizer, targets, None, ids, max_length)
    start = tokenizer.cls_token_id if tokenizer.bos_token_id is None else None
    return [row[1:] if start is not None and row and row[0] == start else row for row in ids], cut


def token_mean_loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
                    ) -> torch.Tensor:
    """Cross-entropy summed over the target tokens and divided by the target tokens of the whole optimizer
    step: every accumulated micro-batch and every process (the Trainer's `num_items_in_batch`). The models'
    own loss is a mean per micro-batch, so with grad_accum the tokens of a micro-batch of short targets
    weighed more than those of long ones, and a step's gradient was not the one the same rows give as one batch."""
    logits = outputs["logits"]
    labels = labels.to(logits.device)
    total = functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORED_LABEL,
                                     reduction="sum")
    return total / (labels.ne(IGNORED_LABEL).sum() if num_items_in_batch is None else num_items_in_batch)


def decode_text(tokenizer: PreTrainedTokenizerBase, ids: torch.Tensor) -> str:
    # One sequence's ids decode to one str; transformers types a batch's list[str] too.
    return cast(str, tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)).strip()


def _generated_tokens(tokenizer: PreTrainedTokenizerBase, ids: torch.Tensor) -> int:
    """Tokens the model wrote, its end token included: the sequence after the decoder's start token (T5's
    is the pad token, a warm-started encoder-decoder's [CLS]), padding left out."""
    return int((ids[1:] != tokenizer.pad_token_id).sum())
