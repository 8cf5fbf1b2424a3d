"""The project file: one YAML document describing a backbone, a registry and the tasks trained on it.

Every section is a typed model with `extra="forbid"`, so a misspelt key is reported instead of ignored.
All problems of a file are gathered into one `ConfigError` so a user fixes them in one pass.

Example::

    backbone: embedded            # or a hub id / local folder: bert-base-uncased, ./my-bert
    registry: adapters            # relative to this file
    defaults:
      training: {epochs: 3}
    tasks:
      - name: sentiment
        kind: classification
        data:
          train: data/sentiment_train.jsonl
          validation: data/sentiment_dev.jsonl
          labels: [negative, positive]
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Annotated, Any, Literal, cast, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    field_validator,
    model_validator,
)

from mtlora.errors import ConfigError, InputError, UnknownTaskError, did_you_mean

EMBEDDED_BACKBONE = "embedded"
TASK_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DATA_DIR_ENV = "MTLORA_DATA_DIR"
ROUTER_ADAPTER = "router"  # the registry name of the learned router
Precision = Literal["auto", "fp32", "bf16"]
AUTO_PRECISION = ("'auto' uses bf16 on CUDA and on CPUs with native bf16, else fp32 (and for DeBERTa v1, which "
                  "transformers cannot run in bf16)")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


_FILE_SETTINGS = ("format", "columns", "extra_fields", "quoting", "encoding", "articles")
_HUB_SETTINGS = ("subset", "split")


class SourceConfig(_Strict):
    """Where one split of a task's data comes from: a local file or a `datasets` hub name."""

    path: str | None = None
    hub: str | None = Field(None, description="`datasets` name, e.g. 'glue' or 'SetFit/sst2'")
    subset: str | None = Field(None, description="hub configuration, e.g. 'sst2'")
    split: str | None = Field(
        None, description="hub split, e.g. 'train' or 'validation'; by default the split of the role read"
    )
    format: Literal["jsonl", "json", "csv", "tsv", "squad", "dream"] | None = Field(
        None, description="file format; guessed from the suffix when absent"
    )
    columns: list[str] | None = Field(None, description="column names of a headerless CSV/TSV, in order")
    extra_fields: Literal["error", "ignore"] = Field(
        "error", description="a CSV/TSV row with more fields than columns: an error, or its extra fields dropped"
    )
    quoting: Literal["minimal", "none", "multiline"] = Field(
        "minimal", description="'none' for GLUE TSVs whose text contains bare quote characters; 'multiline' for "
                               "TSVs that quote fields holding tabs or line breaks (pandas, Excel)"
    )
    encoding: str = "utf-8"
    articles: tuple[int, int] | None = Field(
        None, description="SQuAD only: keep articles [start, end), to split one file by article"
    )
    limit: int | None = Field(None, gt=0, description="keep a seeded random sample of this many rows")
    join: dict[str, list[str]] = Field(
        default_factory=dict, description="new column -> columns joined with a space, e.g. {text: [title, description]}"
    )
    recode: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="column -> {value read: value used}; a value not listed is an error"
    )

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value

    @field_validator("encoding")
    @classmethod
    def _text_encoding(cls, encoding: str) -> str:
        try:
            "".encode(encoding)  # unlike codecs.lookup, also refuses bytes codecs such as base64
        except LookupError:
            raise ValueError(f"{encoding!r} is not a text encoding Python knows (e.g. utf-8, latin-1, cp1252; "
                             "Python's codecs documentation lists them)") from None
        return encoding

    @field_validator("limit", mode="before")
    @classmethod
    def _rows_not_yes(cls, value: Any) -> Any:
        if isinstance(value, bool):  # pydantic reads true as 1: a sample of one row
            raise ValueError(f"limit is a number of rows, not {str(value).lower()}")
        return value

    @field_validator("recode", mode="before")
    @classmethod
    def _codes_as_strings(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return {column: _strings(codes, f"of column {column!r} maps to null (give the value it is read as)")
                if isinstance(codes, dict) else codes for column, codes in value.items()}

    @model_validator(mode="after")
    def _one_origin(self) -> SourceConfig:
        if (self.path is None) == (self.hub is None):
            raise ValueError("give exactly one of 'path' (a local file) or 'hub' (a datasets name)")
        # Read by the other origin only: set here, they would be ignored in silence.
        other, origin = (_FILE_SETTINGS, "a hub source") if self.hub is not None else (_HUB_SETTINGS, "a file")
        # Given, not just written out: a dumped config spells out `split: null` on a file.
        ignored = [name for name in other if getattr(self, name) != type(self).model_fields[name].default]
        if ignored:
            raise ValueError(f"{', '.join(ignored)} cannot apply to {origin} ({'path' if self.hub else 'hub'} "
                             f"sources only); remove {'it' if len(ignored) == 1 else 'them'}")
        if self.articles is not None and self.articles[0] < 0:
            # Python would count a negative start from the end, so train and validation could overlap.
            raise ValueError(f"articles {list(self.articles)}: start must be 0 or more (the first article is 0)")
        if self.articles is not None and self.articles[0] >= self.articles[1]:
            raise ValueError(f"articles {list(self.articles)}: start must be below end")
        return self

    def hub_split(self, role: str) -> str:
        """The hub split read for a role (train, validation, test): its own, unless `split` names another."""
        return self.split or role

    def describe(self, role: str) -> str:
        if self.path is not None:
            return self.path
        return ":".join(p for p in (self.hub, self.subset, self.hub_split(role)) if p)


class DataConfig(_Strict):
    train: SourceConfig
    validation: SourceConfig | None = None
    test: SourceConfig | None = None
    holdout: float | None = Field(
        None, gt=0, lt=0.5,
        description="share of the training inputs kept as validation (seeded, stratified by label)",
    )
    fields: dict[str, str] = Field(
        default_factory=dict, description="task role -> column name, e.g. {text: sentence}"
    )
    labels: list[str] | None = Field(None, description="label names, in the order of their ids")
    label_map: dict[str, str] = Field(
        default_factory=dict, description="raw label value -> label name, e.g. {'0': negative}"
    )

    @field_validator("label_map", mode="before")
    @classmethod
    def _keys_as_strings(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return _strings(value, "maps to null (give the label name it stands for; quote a value such as 'null')")

    @field_validator("labels")
    @classmethod
    def _named(cls, labels: list[str] | None) -> list[str] | None:
        for i, name in enumerate(labels or []):
            if not name.strip():  # it would be a class of its own, matched by empty label cells
                raise ValueError(f"label {i} is an empty name (every label needs a name)")
        return labels

    @model_validator(mode="after")
    def _holdout_xor_validation(self) -> DataConfig:
        if self.holdout is not None and self.validation is not None:
            raise ValueError("give either 'validation' or 'holdout', not both")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels repeat a name: {self.labels}")
        return self


def _strings(mapping: dict[Any, Any], null_problem: str) -> dict[str, str]:
    """A mapping read from YAML with its keys and values as the strings data holds; a null value would
    become the string 'None'."""
    for key, value in mapping.items():
        if value is None:
            raise ValueError(f"{str(key)!r} {null_problem}")
    keys = [str(key) for key in mapping]
    if repeated := sorted({key for key in keys if keys.count(key) > 1}):  # 1 and '1': data holds one '1'
        raise ValueError(f"{', '.join(map(repr, repeated))} given twice (as a number and as text); keep one")
    return {str(k): str(v) for k, v in mapping.items()}


def _value_or_auto(valid: Callable[[Any], bool], expected: str) -> BeforeValidator:
    """One clear problem for a setting that takes a value or 'auto', where pydantic reports one per branch.
    `valid` sees every value but strings; YAML's true and false are ints to Python, so numeric settings
    check the type exactly."""
    def check(value: Any) -> Any:
        if value == "auto" or (not isinstance(value, str) and _safe(valid, value)):
            return value
        raise ValueError(f"should be {expected} or 'auto'; got {value!r}")
    return BeforeValidator(check)


def _registered(what: str, plural: str, names: Callable[[], list[str]]) -> Any:
    """A name checked against a registry (routers, task kinds) rather than a Literal, so that an entry is
    added in one place; the names still reach the JSON schema, for editors that complete and check the
    project file. `names` is called late: the registries import this module."""
    def check(name: str) -> str:
        if name not in (known := names()):
            raise ValueError(f"unknown {what} '{name}'; valid {plural}: {', '.join(known)}")
        return name
    # JsonDict's values are JsonValue, whose list is invariant: list[str] is not a list[JsonValue] to mypy.
    return Annotated[str, AfterValidator(check),
                     Field(json_schema_extra=lambda schema: schema.update(enum=cast(JsonValue, names())))]


# The words pydantic reads as a boolean setting's value (the project file leaves yes/no/on/off as text).
_BOOLEAN_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _bool_or_auto() -> BeforeValidator:
    """A boolean or 'auto', which takes yes/no/on/off as a plain boolean setting does."""
    # BeforeValidator.func is typed as any of pydantic's validator signatures; _value_or_auto's takes the value only.
    check = cast(Callable[[Any], Any], _value_or_auto(lambda v: isinstance(v, bool), "true, false").func)
    return BeforeValidator(lambda value: check(_BOOLEAN_WORDS.get(value.lower(), value)
                                               if isinstance(value, str) else value))


def _safe(valid: Callable[[Any], bool], value: Any) -> bool:
    try:
        return bool(valid(value))
    except TypeError:
        return False


class LoraSettings(_Strict):
    # Measured in bench/lora_settings.py: r=8 scores as r=16 at half the parameters (under 2% of the
    # backbone), and dropout costs a third of CPU training speed for no accuracy at these data sizes.
    # r=2 would be within a point on classification and regression, but loses 5.5 F1 on SQuAD (--full).
    r: int = Field(8, gt=0)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names to adapt; 'all-linear' adapts every linear layer but the head"
    )
    # r=8 learns better than r=4 (SQuAD 63.3 against 61.5 F1), but what it learns is nearly rank 4: its top
    # four directions per layer score as the whole on SST-2, MRPC, STS-B and SQuAD (bench/lora_settings.py
    # --full), and half the rank is half the memory an adapter costs the engine (training/saved_rank.py).
    saved_rank: Annotated[int | Literal["auto"] | None, _value_or_auto(
        lambda v: v is None or (type(v) is int and v > 0), "a positive rank, null (as trained)")] = Field(
        "auto", description="store each layer's update truncated to this rank by SVD; null: as trained; auto: "
                            "the kind's choice (4 for the encoder kinds, as trained for seq2seq). No effect when "
                            "r is not above it"
    )


# Training settings that change no training step: how evaluation batches, whether a baseline follows, and
# how often a run checkpoints and logs. Two results trained with the rest alike trained alike.
NOT_TRAINING_SETTINGS = frozenset({"eval_batch_size", "baseline", "checkpoint_every", "log_every"})
# Each method reads one of these (`TrainSettings.lr_for`): a LoRA run is the same run whatever the
# baseline's rate, and the baseline the same whatever LoRA's.
LEARNING_RATES = frozenset({"lr", "baseline_lr"})


class TrainSettings(_Strict):
    epochs: float = Field(3.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="stop after this many steps (overrides epochs)")
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(32, gt=0)
    eval_batch_size: int = Field(64, gt=0)
    max_length: int = Field(128, ge=8)
    doc_stride: int = Field(32, gt=0, description="extractive QA: tokens of overlap between context windows")
    seed: int = 42
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    grad_accum: int = Field(1, gt=0)
    checkpoint_every: int = Field(200, gt=0, description="steps between resumable checkpoints")
    log_every: int = Field(50, gt=0, description="steps between training-loss records (the training curves); "
                                                 "the last step is recorded too")
    precision: Precision = Field("auto", description=AUTO_PRECISION)
    baseline: bool = Field(True, description="also train the head-only baseline for evaluation")
    # A lone head on frozen features needs a far higher rate than LoRA to converge in the same epochs: at
    # 1e-3 a classifier on the MiniLM's pooled output barely moves (support tickets 0.26, 0.97 at 1e-1).
    baseline_lr: float = Field(1e-1, gt=0, description="learning rate of the head-only baseline")

    def lr_for(self, method: str) -> float:
        """The learning rate `method` trains at: the baseline's own for head-only, else `lr`."""
        return self.baseline_lr if method == "head_only" else self.lr


class DecodingSettings(_Strict):
    """How a generation task decodes: greedy with `num_beams: 1`, beam search above."""

    num_beams: int = Field(1, gt=0)
    max_new_tokens: int = Field(64, gt=0)
    no_repeat_ngram_size: int = Field(0, ge=0, description="0 allows repeats; 3 is usual for summaries")
    length_penalty: float = Field(1.0, description="beam search: >1 favours longer outputs")


class Seq2SeqSettings(_Strict):
    """Settings of the seq2seq kinds: how an input becomes the model's instruction, and how it answers."""

    prompt: str = Field("{text}", description="template; {role} fields take the example's inputs")
    prompt_file: Path | None = Field(None, description="read the template from this file (relative to the config)")
    task_token: str | None = Field(None, description="e.g. '<summarize>': added to the tokenizer, put before the input")
    max_target_length: int = Field(64, ge=2, description="target tokens kept in training")
    decoding: DecodingSettings = Field(default_factory=DecodingSettings)
    num_options: int = Field(4, ge=2, le=26, description="mcq_generation: options per question")

    @field_validator("task_token")
    @classmethod
    def _one_word(cls, token: str | None) -> str | None:
        if token is not None and (not token.strip() or any(c.isspace() for c in token)):
            raise ValueError(f"task_token {token!r} must be one word without spaces, e.g. '<summarize>'")
        return token

    @model_validator(mode="after")
    def _one_prompt(self) -> Seq2SeqSettings:
        if self.prompt_file is not None and "prompt" in self.model_fields_set:
            raise ValueError("give either 'prompt' (the template) or 'prompt_file', not both")
        return self

    def kind_options(self) -> dict[str, Any]:
        """What the task kind needs at inference, stored in the manifest (the template text, not its path)."""
        return self.model_dump(mode="json", exclude={"prompt_file"})


class MixtureSettings(_Strict):
    """A `multitask` adapter: one seq2seq adapter trained on the data of several tasks of the project."""

    tasks: list[str] = Field(min_length=2, description="seq2seq tasks of this project, each with a task_token")
    temperature: float = Field(
        1.0, ge=1.0, description="1 samples each task by its size; larger values flatten the mix toward equal "
                                 "shares (T5's temperature-scaled mixing)")


class RoutingHints(_Strict):
    """How routers find a task's inputs; read from the project file when the engine is built from it."""

    description: str = Field("", description="for people reading the file; no router reads it")
    keywords: list[str] = Field(default_factory=list, description="whole words, any case")
    patterns: list[str] = Field(default_factory=list, description="regular expressions, any case")
    examples: list[str] = Field(default_factory=list, description="inputs typical of this task (semantic router)")
    priority: int = Field(0, description="keywords: breaks a tie between tasks with as many matches")

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {exc}") from exc
        return patterns


def _kind_names() -> list[str]:
    from mtlora.tasks import task_kind_names

    return task_kind_names()


class TaskConfig(_Strict):
    name: str
    kind: _registered("task kind", "kinds", _kind_names)  # type: ignore[valid-type]
    data: DataConfig | None = Field(None, description="required, except for a multitask adapter")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    training: TrainSettings = Field(default_factory=TrainSettings)
    routing: RoutingHints = Field(default_factory=RoutingHints)
    seq2seq: Seq2SeqSettings | None = Field(None, description="prompt and decoding of the seq2seq kinds")
    mixture: MixtureSettings | None = Field(None, description="multitask only: the tasks it is trained on")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        return validate_task_name(name)

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> TaskConfig:
        from mtlora.tasks import get_task_kind, task_kind_names

        kind = get_task_kind(self.kind)
        if (self.mixture is None) == kind.mixes_tasks:
            mixing = [name for name in task_kind_names() if get_task_kind(name).mixes_tasks]
            raise ValueError(f"'mixture' (the tasks to train on) goes with kind {' or '.join(mixing)}, and only "
                             "with it")
        if (self.data is None) != kind.mixes_tasks:
            raise ValueError(f"a {self.kind} adapter takes its tasks' data: remove 'data'" if self.data is not None
                             else "'data' is required: give at least data.train")
        # Both told at once: a wrong role met only once the prompt is mended costs the user another run.
        problems = []
        try:
            kind.check_config(self)
        except ValueError as problem:
            problems.append(str(problem))
        if self.data is not None and (unknown := sorted(set(self.data.fields) - set(kind.roles))):
            problems.append(f"data.fields has role(s) {unknown} that kind {self.kind} does not use; "
                            f"its roles: {', '.join(kind.roles)}")
        if problems:
            raise ValueError("; and ".join(problems))
        return self


def _router_names() -> list[str]:
    from mtlora.routing import ROUTERS

    return list(ROUTERS)


class RouterSettings(_Strict):
    """How the engine picks an adapter when the caller does not name one."""

    strategy: _registered("router", "routers", _router_names) = "semantic"  # type: ignore[valid-type]
    default_task: str | None = Field(None, description="answers inputs no router can place; else 'unroutable'")
    min_similarity: Annotated[float | Literal["auto"], _value_or_auto(
        lambda v: type(v) in (int, float) and -1 <= v <= 1, "a cosine similarity from -1 to 1")] = Field(
        "auto", description="semantic: cosine similarity needed to route; 'auto' calibrates one per task (and per "
                            "reading, whose similarities differ in scale) from its example inputs (about 98% of a "
                            "task's own inputs clear it); a number applies to both readings of a cascade")
    features: Literal["cascade", "encoder", "embeddings"] = Field(
        "cascade", description="what the semantic and learned routers read: 'encoder', the backbone's last layer "
                               "(an encoder pass over each routed text; the learned router is an adapter); "
                               "'embeddings', its mean token embeddings (no pass; the learned router is a linear "
                               "head); 'cascade', the token embeddings first and the encoder for the inputs they "
                               "leave unsure (see cascade_margin, cascade_confidence). `mtlora train-router` "
                               "trains what it reads (cascade: the head and the adapter)")
    cascade_margin: float = Field(
        0.01, ge=0, le=2, description="semantic, features cascade: the lead in similarity the best task needs over "
                                      "the next on token embeddings; with less, or none clearing its threshold, the "
                                      "encoder decides")
    cascade_confidence: float = Field(
        0.7, gt=0, le=1, description="learned, features cascade: the probability the head over token embeddings "
                                     "needs for its choice among the loaded tasks that fit; with less, or none "
                                     "clearing min_confidence, the router adapter decides")
    min_confidence: float = Field(0.5, ge=0, le=1, description="learned: probability needed to route")
    examples_per_task: int = Field(1000, gt=0, description="learned: training inputs sampled per task")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    training: TrainSettings = Field(default_factory=lambda: TrainSettings(epochs=2, baseline=False))


class InferenceSettings(_Strict):
    """How the engine (Python, CLI and server) runs the adapters."""

    precision: Precision = Field("auto", description=AUTO_PRECISION)
    batch_size: int = Field(32, gt=0, description="feature rows per encoder pass")
    mixed_batches: Annotated[bool | Literal["auto"], _bool_or_auto()] = Field(
        "auto", description="true: the rows of every adapter in a call share each pass, each row with its own "
                            "LoRA; false: one pass per adapter with its LoRA folded into the weights; auto: "
                            "shared passes unless fold_cache is set (measured faster on CPU and CUDA)")
    fold_cache: int = Field(
        0, ge=0, description="adapters whose folded weights stay in memory between calls. Each "
                             "costs one copy of the adapted weights and saves folding them on every call")
    cuda_graphs: bool = Field(
        True, description="on CUDA, an encoder's shared passes run as CUDA graphs, which replay a pass's "
                          "kernels in one launch (a graph per padded length, which holds GPU memory; off: every "
                          "pass launches eagerly)")


def checked_inference(**settings: Any) -> InferenceSettings:
    """Inference settings given in code, checked as the project file's `inference` section is, with its
    messages (an `InputError` naming each wrong argument)."""
    try:
        return InferenceSettings.model_validate(settings)
    except ValidationError as exc:
        problems = [_describe(error, settings, InferenceSettings) for error in exc.errors()]
        raise InputError("; ".join(problems)) from None


class ProjectConfig(_Strict):
    backbone: str = Field(EMBEDDED_BACKBONE, description="hub id, local folder, or 'embedded' (MiniLM)")
    registry: Path = Path("adapters")
    reports: Path = Path("reports")
    data_dir: Path = Field(Path("."), description=f"base of relative data paths; ${DATA_DIR_ENV} overrides it")
    router: RouterSettings = Field(default_factory=RouterSettings)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    tasks: list[TaskConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> ProjectConfig:
        names = [t.name for t in self.tasks]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"task names must be unique; repeated: {', '.join(repeated)}")
        if ROUTER_ADAPTER in names:
            raise ValueError(f"'{ROUTER_ADAPTER}' is the learned router's adapter name; rename that task")
        for task in self.tasks:
            if task.mixture is not None:
                _check_mixture(task.name, task.mixture, {t.name: t for t in self.tasks})
        default = self.router.default_task
        if default is not None and default not in names:
            raise ValueError(f"router.default_task '{default}' is not a task.{did_you_mean(default, names)} "
                             f"Tasks: {', '.join(names)}")
        return self

    def task(self, name: str) -> TaskConfig:
        for task in self.tasks:
            if task.name == name:
                return task
        raise UnknownTaskError("task", name, [t.name for t in self.tasks], where=" in the project config")

    def select(self, name: str | None) -> list[TaskConfig]:
        return self.tasks if name is None else [self.task(name)]

    def has_split(self, task: TaskConfig, split: str) -> bool:
        """Whether `task` has `split` data: its own, or a multitask adapter's parts'."""
        if task.mixture is not None:
            return any(self.has_split(self.task(part), split) for part in task.mixture.tasks)
        assert task.data is not None, "validated: a task without a mixture has data"
        declared = {"train": task.data.train, "validation": task.data.validation or task.data.holdout,
                    "test": task.data.test}
        return declared.get(split) is not None

    def with_router(self, **settings: Any) -> ProjectConfig:
        """This project with some router settings changed (`features="embeddings"`, say), checked as in a file."""
        changed = {**self.router.model_dump(), **settings}
        try:
            router = RouterSettings.model_validate(changed)
        except ValidationError as exc:
            problems = [_describe(error, changed, RouterSettings, "router") for error in exc.errors()]
            raise ConfigError("ProjectConfig.with_router", problems) from None
        return self.model_copy(update={"router": router})


def _check_mixture(name: str, mixture: MixtureSettings, tasks: dict[str, TaskConfig]) -> None:
    """Each task of a mixture is a seq2seq task of the project with its own task token: the token is how
    the one adapter tells its tasks apart, in training and when it answers."""
    from mtlora.tasks import get_task_kind

    tokens: dict[str, str] = {}
    for part in mixture.tasks:
        task = tasks.get(part)
        if task is None:
            raise ValueError(f"multitask '{name}' mixes '{part}', which is not a task; tasks: {', '.join(tasks)}")
        if not get_task_kind(task.kind).mixable:
            raise ValueError(f"multitask '{name}' can only mix seq2seq tasks; '{part}' is {task.kind}")
        token = task.seq2seq.task_token if task.seq2seq else None
        if token is None:
            raise ValueError(f"multitask '{name}': task '{part}' needs a seq2seq.task_token to be told apart")
        if token in tokens:
            raise ValueError(f"multitask '{name}': '{part}' and '{tokens[token]}' share the task token {token}")
        tokens[token] = part


def validate_task_name(name: str) -> str:
    """A task name becomes a folder name: refuse anything that could escape the registry."""
    if not TASK_NAME_PATTERN.match(name) or ".." in name:
        raise ValueError(
            f"task name {name!r} is not allowed: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit, without '..' or path separators"
        )
    return name


def load_config(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> ProjectConfig:
    """Read and validate a project file; relative paths are resolved against the file's folder.

    Raises:
        ConfigError: the file is missing, is not YAML, or has invalid settings (all listed at once).
    """
    path = Path(path)
    try:
        raw = yaml.load(_project_text(path), Loader=_UniqueKeyLoader)  # a SafeLoader: no Python objects
    except yaml.YAMLError as exc:  # read from a string, its marks name "<unicode string>", not the file
        raise ConfigError(str(path), [f"not valid YAML: {str(exc).replace('<unicode string>', str(path))}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError(str(path), ["the file must hold a mapping with at least a 'tasks' list"])
    raw = _deep_merge(raw, overrides or {})
    config = parse_config(raw, source=str(path))
    return resolve_paths(config, path.parent)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping: PyYAML keeps the last in silence, so
    a second `training:` block of a task would drop the first without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`, whose keys the mapping may override
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):  # a list as a key: PyYAML's own error says so
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice in one mapping "
                                                                    "(only one of them would count)",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1, which PyYAML reads, takes yes/no/on/off for booleans: `label_map: {yes: positive}` would map
# the label True, and `labels: [yes, no]` be refused as not text. Only true and false are booleans in
# YAML 1.2, and so here; `baseline: no` still reads as false, which pydantic reads from text.
_BOOLEAN = "tag:yaml.org,2002:bool"
_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != _BOOLEAN]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_UniqueKeyLoader.add_implicit_resolver(_BOOLEAN, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _project_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except IsADirectoryError:
        raise ConfigError(str(path), ["is a directory, not a file (name the project's YAML file)"]) from None
    except UnicodeDecodeError as exc:
        line = exc.object[:exc.start].count(b"\n") + 1
        raise ConfigError(str(path), [f"not UTF-8 text: line {line} holds byte 0x{exc.object[exc.start]:02x} "
                                      "(save the file as UTF-8)"]) from None
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read it: {exc.strerror}"]) from None


def parse_config(raw: dict[str, Any], source: str = "<config>") -> ProjectConfig:
    raw = copy.deepcopy(raw)
    problems = _apply_defaults(raw)
    try:
        config = ProjectConfig.model_validate(raw)
    except ValidationError as exc:
        problems += [_describe(error, raw) for error in exc.errors()]
    if problems:
        raise ConfigError(source, problems)
    return config


def resolve_paths(config: ProjectConfig, base: Path) -> ProjectConfig:
    data_dir = Path(os.environ.get(DATA_DIR_ENV) or base / config.data_dir)
    update: dict[str, Any] = {
        "registry": (base / config.registry).resolve(),
        "reports": (base / config.reports).resolve(),
        "data_dir": data_dir.resolve(),
    }
    if config.backbone != EMBEDDED_BACKBONE and (base / config.backbone).exists():
        update["backbone"] = str((base / config.backbone).resolve())
    update["tasks"] = [_read_prompt_file(task, base) for task in config.tasks]
    return config.model_copy(update=update)


def _read_prompt_file(task: TaskConfig, base: Path) -> TaskConfig:
    """The template's text goes into the settings, so training, evaluation and the manifest use the same one."""
    settings = task.seq2seq
    if settings is None or settings.prompt_file is None:
        return task
    path = (base / settings.prompt_file).resolve()
    try:
        template = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(str(path), [f"tasks ({task.name}).seq2seq.prompt_file: cannot read it: {exc.strerror}"]) \
            from None
    with_template = settings.model_copy(update={"prompt": template, "prompt_file": path})
    task = task.model_copy(update={"seq2seq": with_template})
    from mtlora.tasks import get_task_kind

    try:
        get_task_kind(task.kind).check_config(task)
    except ValueError as exc:
        raise ConfigError(str(path), [f"tasks ({task.name}).seq2seq.prompt_file: {exc}"]) from None
    return task


def _apply_defaults(raw: dict[str, Any]) -> list[str]:
    """`defaults:` holds lora/training/routing settings shared by every task; a task's own value wins.
    Merges them into `raw`'s tasks; returns the problems of `defaults:` itself."""
    defaults = raw.pop("defaults", None)
    if defaults is None:  # absent, or `defaults:` with nothing under it
        defaults = {}
    if not isinstance(defaults, dict):
        return [f"defaults: must be a mapping of settings every task shares, e.g. {{training: {{epochs: 3}}}}; "
                f"got {type(defaults).__name__}"]
    shared, problems = _checked_defaults(defaults)
    tasks = raw.get("tasks")
    if isinstance(tasks, list):
        raw["tasks"] = [_deep_merge(shared, t) if isinstance(t, dict) else t for t in tasks]
    return problems


def _checked_defaults(defaults: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The sections of `defaults:` fit to merge into every task, and the problems of the others: checked
    on their own, a mistake is named where it is, once, not in each task it would be merged into."""
    shared, problems = {}, []
    for key, value in defaults.items():
        field = TaskConfig.model_fields.get(str(key))
        if field is None:
            problems.append(f"defaults.{key}: unknown setting (check the spelling; valid here: "
                            f"{', '.join(TaskConfig.model_fields)})")
            continue
        section = _settings_class(field.annotation)
        # A section left empty (`training:` with nothing under it) is null: checked here too, unless the
        # task may take null (seq2seq), so that it is named once under defaults rather than in every task.
        if section is not None and (value is not None or type(None) not in get_args(field.annotation)):
            try:
                section.model_validate(value)
            except ValidationError as exc:
                # A setting missing here (data: its train) is each task's to give.
                wrong = [error for error in exc.errors() if error["type"] != "missing"]
                problems += [_describe(error, value, section, f"defaults.{key}") for error in wrong]
                if wrong:
                    continue
        shared[key] = value
    return shared, problems


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _describe(error: Any, raw: dict[str, Any], root: type[BaseModel] | None = None, at: str = "") -> str:
    """One pydantic error in the project file's terms; `root` is the settings class validated (the project
    by default), read from the file's section `at`."""
    loc = list(error["loc"])
    parts: list[str] = [at] if at else []
    for i, item in enumerate(loc):
        if isinstance(item, int):
            parts[-1] += f"[{item}]"
            if loc[:i] == ["tasks"]:
                name = _task_name(raw, item)
                if name:
                    parts[-1] += f" ({name})"
        elif item not in ("function-after", "function-before") and not str(item).startswith("function-"):
            parts.append(str(item))
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        section = _section_at(loc[:-1], root or ProjectConfig)
        valid = f"valid here: {', '.join(section.model_fields)}" if section is not None else "see the README"
        message = f"unknown setting (check the spelling; {valid})"
    elif error["type"] in ("model_type", "dict_type") and error.get("input") is None:
        # YAML reads a section with nothing under it as null; pydantic would say "not a valid dictionary".
        message = "is empty: put its settings under it, indented, or delete the line"
    # A check of the whole project names the settings it is about itself.
    return f"{'.'.join(parts)}: {message}" if parts else message


def _section_at(loc: list[Any], root: type[BaseModel]) -> type[BaseModel] | None:
    """The settings class that the section at `loc` of one read into `root` is read into."""
    section: type[BaseModel] | None = root
    for item in loc:
        if isinstance(item, int) or str(item).startswith("function-"):
            continue
        field = section.model_fields.get(str(item)) if section is not None else None
        section = _settings_class(field.annotation) if field is not None else None
    return section


def _settings_class(annotation: Any) -> type[BaseModel] | None:
    """The settings class in a field's type (`X`, `X | None`, `list[X]`), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((found for arg in get_args(annotation) if (found := _settings_class(arg)) is not None), None)


def _task_name(raw: dict[str, Any], index: int) -> str | None:
    tasks = raw.get("tasks")
    if isinstance(tasks, list) and index < len(tasks) and isinstance(tasks[index], dict):
        name = tasks[index].get("name")
        return str(name) if name is not None else None
    return None
