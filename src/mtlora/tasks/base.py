"""What every task kind provides: parsing rows into examples, the model head, encoding, decoding, metrics.

A task kind is one subclass of `TaskKind` in its own module, registered with `register_task_kind`.
The rest of mtlora (training, registry, evaluation, inference) talks to this interface; the engine tells
the seq2seq kinds apart, since they run on a backbone of their own.
"""

from __future__ import annotations

import re
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn
from transformers import DataCollatorWithPadding

from mtlora.batching import forward_features
from mtlora.errors import DataError, EmptyTextError, InputError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from mtlora.config import TaskConfig
    from mtlora.data.readers import Row

Example = dict[str, Any]
Prediction = dict[str, Any]


@dataclass
class Encoded:
    """Tokenised examples. One example may become several features (QA windows a long context)."""

    features: dict[str, list[Any]]
    example_index: list[int]
    extras: list[dict[str, Any]] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)  # per example
    targets_cut: list[bool] = field(default_factory=list)  # per example, for kinds whose targets are text

    def __len__(self) -> int:
        return len(self.example_index)


class TaskKind(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    roles: ClassVar[tuple[str, ...]]
    # The shape of input the task answers: routing uses it to narrow the candidates.
    input_shape: ClassVar[str]
    auto_class: ClassVar[Any]
    peft_task_type: ClassVar[str | None]  # None: the generic PeftModel
    primary_metric: ClassVar[str]
    # Metrics reported in percent, from 0 to 100 (ROUGE, SQuAD's EM and F1); the others run to 1.
    percent_metrics: ClassVar[frozenset[str]] = frozenset()
    categorical: ClassVar[bool] = False
    # Model outputs the task reads (in this order) after a forward pass.
    output_names: ClassVar[tuple[str, ...]] = ("logits",)
    token_level: ClassVar[bool] = False  # outputs have one value per token, not per sequence
    # A head-only baseline (frozen backbone, trained head) means something for kinds with a task head.
    has_head: ClassVar[bool] = True
    # The rank `lora.saved_rank: auto` saves an adapter of this kind at (training/saved_rank.py): for the
    # encoder kinds rank 4 of an r=8 adapter scored as the whole (bench/lora_settings.py --full).
    saved_rank: ClassVar[int | None] = 4
    # A kind trained on the data of other tasks of the project (`mixture:`), not on data of its own.
    mixes_tasks: ClassVar[bool] = False
    # Whether a kind that mixes tasks can take this kind's task as one of them.
    mixable: ClassVar[bool] = False

    @classmethod
    def metric_scale(cls, metric: str) -> float:
        """Where `metric`'s best score lies: 100 for a metric in percent, else 1."""
        return 100.0 if metric in cls.percent_metrics else 1.0

    @classmethod
    def metric_label(cls, metric: str) -> str:
        """`metric` as a table shows it: marked where it runs to 100, since beside accuracies a ROUGE-L of
        0.8 (near nothing) reads as 80%."""
        return metric + (" (0-100)" if cls.metric_scale(metric) == 100 else "")

    def __init__(
        self,
        labels: Sequence[str] | None = None,
        fields: dict[str, str] | None = None,
        label_map: dict[str, str] | None = None,
        options: dict[str, Any] | None = None,
    ):
        self.labels: list[str] | None = list(labels) if labels is not None else None
        self.labels_given = labels is not None  # else the training data fixes them (classification.labels_seen)
        self.fields = dict(fields or {})
        self.label_map = dict(label_map or {})
        self.options = dict(options or {})

    @classmethod
    def from_config(cls, config: TaskConfig) -> TaskKind:
        assert config.data is not None, "validated: only a multitask adapter has no data of its own"
        return cls(labels=config.data.labels, fields=config.data.fields, label_map=config.data.label_map,
                   options=cls.options_from_config(config))

    @classmethod
    def options_from_config(cls, config: TaskConfig) -> dict[str, Any]:
        """Kind-specific settings, stored in the manifest so inference needs no project file."""
        return {}

    @classmethod
    def check_config(cls, config: TaskConfig) -> None:
        """Raise ValueError for settings this kind cannot use (called while the config is validated)."""
        if config.seq2seq is not None:
            raise ValueError(f"'seq2seq' settings apply to the seq2seq kinds only, not to {cls.name}")
        cls.check_label_settings(config)

    @classmethod
    def check_label_settings(cls, config: TaskConfig) -> None:
        labelled = config.data is not None and (config.data.labels is not None or config.data.label_map)
        if not cls.categorical and labelled:
            raise ValueError(f"a {cls.name} task has no label set ({cls.description}): "
                             "remove data.labels and data.label_map")

    # ---- data -------------------------------------------------------------------------------------

    @abstractmethod
    def parse(self, rows: Sequence[Row]) -> list[Example]:
        """Validate raw rows and turn them into examples; raise DataError naming the row and field."""

    @abstractmethod
    def input_example(self, text: str, text_pair: str | None = None) -> Example:
        """Build an example from a user's input; raise InputError for the wrong shape."""

    def routable(self, text: str) -> bool:
        """Whether a router may send this input text here (its shape already fits)."""
        return True

    def starts_with_own_token(self, text: str) -> bool:
        """Whether `text` starts with one of this kind's task tokens (seq2seq kinds may have them)."""
        return False

    def reads_its_own_prefix(self, text: str) -> bool:
        """Whether a `<name>` at the start of `text` is this kind's own input (a multitask adapter's task
        token), where the engine would read it as the name of another task."""
        return False

    def prepare_export(self, model: nn.Module) -> None:  # noqa: B027 - optional: most kinds need nothing
        """Give a merged export what a plain transformers user of it needs besides the weights."""

    def export_files(self, model: nn.Module) -> dict[str, str]:
        """Files, by name, that a merged export holds beside the model's own (most kinds need none)."""
        return {}

    def fit(self, train: Sequence[Example]) -> None:  # noqa: B027 - optional: most kinds take nothing
        """Fix what the kind takes from the training examples (a regression's target scale), once they
        are split from any holdout."""

    def stratify_key(self, example: Example) -> Any:
        return example.get("label") if self.categorical else None

    def column(self, role: str) -> str:
        return self.fields.get(role, role)

    def value(self, row: Row, role: str) -> Any:
        column = self.column(role)
        if column in row.values and row.values[column] is None:
            raise DataError(row.where, f"field '{column}' (the {self.name} role '{role}') is null", "give it a value")
        if column not in row.values:
            raise row.missing_field(column, f"(the {self.name} role '{role}')",
                                    f"map the role to a column with data.fields.{role}")
        return row.values[column]

    def text_value(self, row: Row, role: str) -> str:
        value = self.value(row, role)
        if not isinstance(value, str):
            raise DataError(row.where, f"field '{self.column(role)}' must be text, got {type(value).__name__}",
                            f"write it in quotes, or map the role to a text field with data.fields.{role}")
        if not has_text(value):
            raise DataError(row.where, f"field '{self.column(role)}' is empty{no_text_in(value)}",
                            "give the row its text, or drop it")
        return value

    # ---- model ------------------------------------------------------------------------------------

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `auto_class.from_pretrained` that shape the head."""
        return {}

    @abstractmethod
    def encode(
        self,
        tokenizer: PreTrainedTokenizerBase,
        examples: Sequence[Example],
        max_length: int,
        doc_stride: int,
        with_targets: bool,
    ) -> Encoded:
        """Tokenise without padding (batches are padded to their own longest row)."""

    @abstractmethod
    def decode(self, outputs: list[dict[str, np.ndarray]], encoded: Encoded,
               examples: Sequence[Example]) -> list[Prediction]:
        """Turn per-feature model outputs into one prediction per example."""

    @abstractmethod
    def metrics(self, predictions: Sequence[Prediction], examples: Sequence[Example]) -> dict[str, float]:
        """Compare predictions with the examples' targets."""

    def check_tokenizer(self, tokenizer: PreTrainedTokenizerBase, where: str) -> None:
        """Refuse a tokenizer (as `prepare_tokenizer` makes it) that this kind would train or answer wrongly
        with, or that makes its settings unusable (labels longer than their targets' limit): before any task
        trains, and when an adapter loads rather than at its first input. `where` names the task's place in
        the project file (`tasks.NAME`), which the kind itself does not know."""
        del tokenizer, where  # any will do, unless a kind says otherwise

    def caveats(self, predictions: Sequence[Prediction], examples: Sequence[Example]) -> list[str]:
        """What `metrics` reports for these predictions without having measured it (a correlation of constant
        scores), for the evaluation log and report to say beside the numbers."""
        return []

    def confusion(self, predictions: Sequence[Prediction], examples: Sequence[Example]) -> list[list[int]] | None:
        """Gold x predicted counts, for kinds with a fixed label set."""
        return None

    def outputs_of(self, model_output: Any) -> dict[str, torch.Tensor]:
        return {name: getattr(model_output, name) for name in self.output_names}

    def run(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, encoded: Encoded, batch_size: int,
            bf16: bool) -> list[dict[str, Any]]:
        """Every feature through `model`: one forward pass per batch (seq2seq kinds generate instead)."""
        return forward_features(model, self, tokenizer, encoded, batch_size, bf16)

    def collator(self, tokenizer: PreTrainedTokenizerBase, model: nn.Module) -> Callable[[list[dict[str, Any]]], Any]:
        """Pads a training batch to its longest row."""
        return DataCollatorWithPadding(tokenizer)

    def loss_func(self) -> Callable[..., torch.Tensor] | None:
        """How training reduces a batch's loss (the Trainer's `compute_loss_func`). None keeps the model's
        own: a mean over the batch's rows, which is right where each row has one target."""
        return None

    def prepare_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
        """The tokenizer this kind encodes with (seq2seq kinds add their task token)."""
        return tokenizer

    # ---- for people reading reports --------------------------------------------------------------

    # Plain forms, so that a kind of a user's own needs none to be complete; the built-in kinds say more.
    def expected_text(self, example: Example) -> str:
        """The example's target, as a person reads it."""
        return str(example.get("label", ""))

    def answer_text(self, prediction: Prediction) -> str:
        """A prediction, as a person reads it."""
        return ", ".join(f"{key} {value}" for key, value in prediction.items())


def truncated_rows(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], pairs: Sequence[str] | None,
                   input_ids: Sequence[Sequence[int]], max_length: int, **kwargs: Any) -> list[bool]:
    """Which rows truncation cut to `max_length`. A row of exactly `max_length` tokens may be a text that fits
    them exactly, so those rows are tokenised again to one token more: only a cut one grows past it."""
    full = [i for i, ids in enumerate(input_ids) if len(ids) >= max_length]
    cut = [False] * len(input_ids)
    if full:
        again = tokenizer([texts[i] for i in full], [pairs[i] for i in full] if pairs is not None else None,
                          truncation=True, max_length=max_length + 1, **kwargs)["input_ids"]
        for i, ids in zip(full, again, strict=True):
            cut[i] = len(ids) > max_length
    return cut


# What a sample table shows of an input (a QA context is too long to read there).
SHOWN_ROLES = ("text", "text_pair", "question")


def shown_input(example: Example) -> str:
    """An example's input as one line for a person: its texts, or its question, joined by " / "."""
    return " / ".join(str(example[role]) for role in SHOWN_ROLES if role in example)


# What an example is asked, as against what it should answer.
INPUT_ROLES = ("text", "text_pair", "question", "context")


def input_key(example: Example) -> tuple[str | None, ...]:
    """An example's input, to tell whether two examples ask the same thing (RACE asks several questions
    of one article; a sample may repeat a row). A multitask example's part is part of what it asks."""
    return tuple(None if example.get(role) is None else str(example[role]) for role in ("task", *INPUT_ROLES))


def routing_text(example: Example) -> str:
    """The text a router reads of an example: its text (a pair's first), or its question."""
    return str(example.get("text") or example.get("question") or "")


def integer_text(value: str) -> bool:
    """Whether `value` is an integer as data writes one ("12", "-1"): str.isdigit also takes "²", which
    int() refuses."""
    return re.fullmatch(r"-?[0-9]+", value.strip()) is not None


def require_text(text: Any, what: str) -> str:
    if not isinstance(text, str):
        raise InputError(f"{what} must be a string, got {type(text).__name__}")
    if not has_text(text):
        raise EmptyTextError(f"{what} is empty{no_text_in(text)}: give some text to predict on")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:  # JSON may escape one ("\ud800"); tokenizers fail on it
        raise InputError(f"{what} holds {text[error.start]!r} at character {error.start}, half of a UTF-16 "
                         "surrogate pair, which is not text on its own: send valid Unicode") from None
    return text


# Spaces, line and paragraph separators, control and format (zero-width) characters, and combining marks,
# which mark no letter on their own (BERT's uncased tokenizer drops them).
_NOT_TEXT = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Mn", "Me"})
REPLACEMENT_CHARACTER = "\ufffd"  # what a decoder writes for bytes it could not read; BERT's tokenizer drops it


def no_text_in(text: str) -> str:
    """What a text without text holds, for an error message: nothing to say of one blank to the eye."""
    return ", holding only control or format characters, lone combining marks or U+FFFD" if text.strip() else ""


def has_text(text: str) -> bool:
    """Whether `text` holds more than spaces, control or format characters, lone combining marks and
    U+FFFD, which would leave a model nothing but its special tokens to answer from. Unassigned and
    private-use characters count as text: a tokenizer keeps them (as its unknown token), and an emoji newer
    than this Python's Unicode tables is unassigned here."""
    return any(unicodedata.category(char) not in _NOT_TEXT and char != REPLACEMENT_CHARACTER for char in text)
