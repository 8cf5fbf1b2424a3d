"""`multitask`: one seq2seq adapter trained on a mixture of the project's seq2seq tasks.

Each part keeps its own kind, prompt and task token (`<summarize>`, `<mcq>`): the token in front of an
input tells the adapter which task to do, in training and when it answers. Examples carry the name of
their part (`example["task"]`); encoding, answering, decoding and scoring go to that part's kind. The
parts and the mix they were drawn in are stored in the manifest.

A user's input names its part by starting with the part's task token: `"<summarize> The article ..."`.
"""

from __future__ import annotations

import copy
import json
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from torch import nn

from mtlora.config import Seq2SeqSettings
from mtlora.errors import InputError
from mtlora.tasks.base import Encoded, Example, Prediction, require_text
from mtlora.tasks.seq2seq import Seq2SeqTask

if TYPE_CHECKING:
    from transformers import GenerationConfig, PreTrainedTokenizerBase

    from mtlora.config import TaskConfig
    from mtlora.data.readers import Row


class MultitaskTask(Seq2SeqTask):
    name = "multitask"
    description = "one seq2seq adapter for several tasks, told apart by task tokens"
    roles = ()
    primary_metric = "mean_primary"
    mixes_tasks = True
    mixable = False

    @classmethod
    def metric_scale(cls, metric: str) -> float:
        """A part's metric, `part/metric`, is on its kind's scale. The kinds a multitask adapter can mix name
        their metrics apart, so the name alone says which runs to 100."""
        from mtlora.tasks import get_task_kind, task_kind_names

        part, _, name = metric.rpartition("/")
        mixable = [get_task_kind(kind) for kind in task_kind_names() if get_task_kind(kind).mixable]
        return max((kind.metric_scale(name) for kind in mixable), default=1.0) if part else 1.0

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        from mtlora.tasks import get_task_kind

        self.parts: dict[str, Seq2SeqTask] = {}
        for name, spec in self.options.get("parts", {}).items():
            kind = get_task_kind(spec["kind"])(labels=spec.get("labels"), fields=spec.get("fields"),
                                               label_map=spec.get("label_map"), options=spec.get("options"))
            assert isinstance(kind, Seq2SeqTask)
            self.parts[name] = kind

    @classmethod
    def from_parts(cls, parts: dict[str, Seq2SeqTask], mix: dict[str, Any]) -> MultitaskTask:
        specs = {name: {"kind": k.name, "labels": k.labels, "fields": k.fields, "label_map": k.label_map,
                        "options": k.options} for name, k in parts.items()}
        return cls(options={"parts": specs, "mix": mix})

    @classmethod
    def settings_from(cls, options: dict[str, Any]) -> Seq2SeqSettings:
        return Seq2SeqSettings()  # its options are its parts', each with its own prompt and decoding

    @classmethod
    def options_from_config(cls, config: TaskConfig) -> dict[str, Any]:
        return {}  # the parts are known once their data is read (labels come from it): see `from_parts`

    @classmethod
    def check_config(cls, config: TaskConfig) -> None:
        if config.seq2seq is not None:
            raise ValueError("a multitask adapter uses its tasks' seq2seq settings: remove 'seq2seq'")

    def part(self, name: str) -> Seq2SeqTask:
        if name not in self.parts:
            raise InputError(f"this multitask adapter has no task '{name}'; its tasks: {', '.join(self.parts)}")
        return self.parts[name]

    # ---- data and inputs ------------------------------------------------------------------------------

    def parse(self, rows: Sequence[Row]) -> list[Example]:
        raise NotImplementedError("a multitask adapter reads its tasks' data through their own kinds")

    def target(self, example: Example) -> str:
        return self.part(example["task"]).target(example)

    def input_example(self, text: str, text_pair: str | None = None) -> Example:
        text = require_text(text, "text")
        if (named := self._part_named_by(text)) is None:
            tokens = ", ".join(f"{k.settings.task_token} ({name})" for name, k in self.parts.items())
            raise InputError(f"a multitask adapter does several tasks: start the text with one of its task tokens: "
                             f"{tokens}")
        return {**self.parts[named].input_example(text, text_pair), "task": named}

    def routable(self, text: str) -> bool:
        # Without one of its task tokens the adapter cannot tell which of its tasks to do.
        return self.starts_with_own_token(text)

    def reads_its_own_prefix(self, text: str) -> bool:
        return self.starts_with_own_token(text)

    def starts_with_own_token(self, text: str) -> bool:
        return self._part_named_by(text) is not None

    def _part_named_by(self, text: str) -> str | None:
        """The part whose task token starts `text`."""
        return next((name for name, kind in self.parts.items() if kind.after_task_token(text) is not None), None)

    def expected_text(self, example: Example) -> str:
        return self.part(example["task"]).expected_text(example)

    def answer_text(self, prediction: Prediction) -> str:
        return f"[{prediction['part']}] {self.part(prediction['part']).answer_text(prediction)}"

    # ---- model --------------------------------------------------------------------------------------

    def prepare_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
        for kind in self.parts.values():
            tokenizer = kind.prepare_tokenizer(tokenizer)
        return tokenizer

    def export_files(self, model: nn.Module) -> dict[str, str]:
        """Each part's decoding (a summary's beams, an MCQ's length), which the one generation_config.json
        cannot hold, beside it: `GenerationConfig.from_pretrained(folder, "summarize_generation_config.json")`."""
        files = {}
        for name, kind in self.parts.items():
            config = cast("GenerationConfig", copy.deepcopy(model.generation_config))  # a transformers model's
            config.update(**kind.generation_kwargs())
            files[f"{name}_generation_config.json"] = config.to_json_string(use_diff=True)
        return files

    def check_tokenizer(self, tokenizer: PreTrainedTokenizerBase, where: str) -> None:
        for name, kind in self.parts.items():  # each part is a task of the project, with its own settings
            kind.check_tokenizer(tokenizer, f"tasks.{name}")

    def encode(self, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], max_length: int,
               doc_stride: int, with_targets: bool) -> Encoded:
        """Each part encodes its own examples; features keep the examples' order and remember their part."""
        rows = _rows_by_part(examples)
        features: dict[str, list[Any]] = defaultdict(lambda: [None] * len(examples))
        truncated, targets_cut = [False] * len(examples), [False] * len(examples) if with_targets else []
        for name, index in rows.items():
            encoded = self.part(name).encode(tokenizer, [examples[i] for i in index], max_length, doc_stride,
                                             with_targets)
            for feature, values in encoded.features.items():
                for position, value in zip(index, values, strict=True):
                    features[feature][position] = value
            for position, flag in zip(index, encoded.truncated, strict=True):
                truncated[position] = flag
            if with_targets:
                for position, flag in zip(index, encoded.targets_cut, strict=True):
                    targets_cut[position] = flag
        return Encoded(features=dict(features), example_index=list(range(len(examples))),
                       extras=[{"task": e["task"]} for e in examples], truncated=truncated, targets_cut=targets_cut)

    def run(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, encoded: Encoded, batch_size: int,
            bf16: bool, **model_kwargs: Any) -> list[dict[str, Any]]:
        """Each part answers its rows its own way (label scoring or generation)."""
        results: list[dict[str, Any]] = [{} for _ in range(len(encoded))]
        for name, index in _rows_by_part(encoded.extras).items():
            part = Encoded(features={k: [v[i] for i in index] for k, v in encoded.features.items()},
                           example_index=list(range(len(index))), truncated=[encoded.truncated[i] for i in index])
            kwargs = {k: [v[i] for i in index] for k, v in model_kwargs.items()}
            for position, result in zip(index, self.part(name).run(model, tokenizer, part, batch_size, bf16, **kwargs),
                                      strict=True):
                results[position] = result
        return results

    def decode(self, outputs: list[dict[str, Any]], encoded: Encoded,
               examples: Sequence[Example]) -> list[Prediction]:
        predictions: list[Prediction] = [{} for _ in examples]
        for name, index in _rows_by_part(examples).items():
            part = Encoded(features={}, example_index=list(range(len(index))),
                           truncated=[encoded.truncated[i] for i in index])
            decoded = self.part(name).decode([outputs[i] for i in index], part, [examples[i] for i in index])
            for position, prediction in zip(index, decoded, strict=True):
                predictions[position] = {"part": name, **prediction}  # "task" names the adapter that answered
        return predictions

    def metrics(self, predictions: Sequence[Prediction], examples: Sequence[Example]) -> dict[str, float]:
        """Each part's metrics as `part/metric`, and the mean of the parts' main metrics on a 0-1 scale."""
        metrics: dict[str, float] = {}
        mains = []
        for name, index in _rows_by_part(examples).items():
            kind = self.part(name)
            scores = kind.metrics([predictions[i] for i in index], [examples[i] for i in index])
            metrics.update({f"{name}/{metric}": value for metric, value in scores.items()})
            main = scores[kind.primary_metric]
            mains.append(main / kind.metric_scale(kind.primary_metric))
        metrics["mean_primary"] = sum(mains) / len(mains) if mains else 0.0
        return metrics

    def batch_key(self) -> str:
        return json.dumps([self.name, id(self)])  # its rows are split by part inside `run`, never merged


def _rows_by_part(items: Sequence[dict[str, Any]]) -> dict[str, list[int]]:
    rows: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        rows[item["task"]].append(i)
    return dict(rows)
