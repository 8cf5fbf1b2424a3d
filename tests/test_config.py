"""The project file: defaults, path resolution, and one error listing every problem."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from mtlora import ConfigError, UnknownTaskError, load_config


def write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "mtlora.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def task(name: str = "sentiment", **extra) -> dict:
    return {"name": name, "kind": "classification",
            "data": {"train": "train.jsonl", "validation": "dev.jsonl", "labels": ["neg", "pos"]}, **extra}


def test_defaults_apply_and_task_values_win(tmp_path: Path) -> None:
    path = write(tmp_path, {"defaults": {"training": {"epochs": 7, "lr": 0.5}},
                            "tasks": [task(training={"lr": 0.1})]})
    config = load_config(path)
    assert config.tasks[0].training.epochs == 7
    assert config.tasks[0].training.lr == 0.1


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, {"registry": "out/adapters", "data_dir": "data", "tasks": [task()]}))
    assert config.registry == (tmp_path / "out" / "adapters").resolve()
    assert config.data_dir == (tmp_path / "data").resolve()
    assert config.backbone == "embedded"


def test_data_dir_environment_variable_overrides_the_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MTLORA_DATA_DIR", str(tmp_path / "elsewhere"))
    config = load_config(write(tmp_path, {"data_dir": "data", "tasks": [task()]}))
    assert config.data_dir == (tmp_path / "elsewhere").resolve()


def test_every_problem_is_listed_at_once_with_its_task(tmp_path: Path) -> None:
    bad = [task("sentiment", lora={"r": 0}), {"name": "topics", "kind": "clasification", "data": {"train": "x"}},
           task("news", training={"epoch": 3})]
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, {"tasks": bad}))
    text = str(caught.value)
    assert len(caught.value.problems) == 3, text
    assert "tasks[0] (sentiment).lora.r" in text
    assert "tasks[1] (topics).kind: unknown task kind 'clasification'; valid kinds: classification," in text
    assert "tasks[2] (news).training.epoch: unknown setting (check the spelling; valid here: epochs, max_steps," in text


def test_doc_stride_must_leave_a_window_room(tmp_path: Path) -> None:
    qa = {"name": "qa", "kind": "extractive_qa", "data": {"train": "qa.jsonl"}}
    with pytest.raises(ConfigError, match=r"tasks\[0\] \(qa\): .*doc_stride \(65\) must be at most half of "
                                          r"training.max_length \(128\): lower doc_stride or raise max_length"):
        load_config(write(tmp_path, {"tasks": [{**qa, "training": {"doc_stride": 65}}]}))
    config = load_config(write(tmp_path, {"tasks": [{**qa, "training": {"doc_stride": 64}}]}))
    assert config.tasks[0].training.doc_stride == 64
    # Only a QA task reads doc_stride: another kind's short max_length leaves the default stride alone.
    load_config(write(tmp_path, {"tasks": [task(training={"max_length": 32})]}))


@pytest.mark.parametrize("value", [1.5, "automatic", True])
def test_semantic_threshold_is_a_cosine_or_auto(tmp_path: Path, value: object) -> None:
    config = load_config(write(tmp_path, {"tasks": [task()], "router": {"min_similarity": 0.4}}))
    assert config.router.min_similarity == 0.4
    with pytest.raises(ConfigError, match=r"router\.min_similarity: should be a cosine similarity") as caught:
        load_config(write(tmp_path, {"tasks": [task()], "router": {"min_similarity": value}}))
    assert len(caught.value.problems) == 1, caught.value  # one problem, not one per branch of the union


@pytest.mark.parametrize("value", [0, "four", 2.5, True])
def test_saved_rank_is_a_positive_rank_auto_or_null(tmp_path: Path, value: object) -> None:
    for good in (2, "auto", None):
        config = load_config(write(tmp_path, {"tasks": [task(lora={"saved_rank": good})]}))
        assert config.tasks[0].lora.saved_rank == good
    with pytest.raises(ConfigError, match=r"lora\.saved_rank: should be a positive rank, null .* or 'auto'") as caught:
        load_config(write(tmp_path, {"tasks": [task(lora={"saved_rank": value})]}))
    assert len(caught.value.problems) == 1, caught.value


@pytest.mark.parametrize("value", [1, "yes please", None])
def test_mixed_batches_is_true_false_or_auto(tmp_path: Path, value: object) -> None:
    for good in (True, False, "auto"):
        config = load_config(write(tmp_path, {"tasks": [task()], "inference": {"mixed_batches": good}}))
        assert config.inference.mixed_batches == good
    with pytest.raises(ConfigError, match=r"inference\.mixed_batches: should be true, false or 'auto'") as caught:
        load_config(write(tmp_path, {"tasks": [task()], "inference": {"mixed_batches": value}}))
    assert len(caught.value.problems) == 1, caught.value


def test_router_settings_change_in_code_as_in_the_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, {"tasks": [task()], "router": {"min_confidence": 0.7}}))
    changed = config.with_router(features="embeddings")
    assert (changed.router.features, changed.router.min_confidence) == ("embeddings", 0.7)
    assert config.router.features == "cascade"  # a new project: the first is unchanged
    with pytest.raises(ConfigError, match=r"router\.features: Input should be 'cascade', 'encoder' or 'embeddings'"):
        config.with_router(features="tokens")
    with pytest.raises(ConfigError) as caught:  # a bar of 0 would never send an input to the encoder
        config.with_router(cascade_confidence=0, cascade_margin=-0.1)
    assert {problem.split(":")[0] for problem in caught.value.problems} == {"router.cascade_confidence",
                                                                             "router.cascade_margin"}
    with pytest.raises(ConfigError, match=r"router\.featurs: unknown setting \(check the spelling; valid here: "
                                          r"strategy, "):  # the router's settings, not the project's sections
        config.with_router(featurs="embeddings")


def test_the_router_strategy_is_checked_against_the_routers_there_are(tmp_path: Path, monkeypatch) -> None:
    from mtlora.routing import ROUTERS, KeywordRouter

    config = load_config(write(tmp_path, {"tasks": [task()]}))
    with pytest.raises(ConfigError, match=r"router\.strategy: unknown router 'telepathy'; valid routers: "
                                          r"explicit, keywords, semantic, learned$"):
        config.with_router(strategy="telepathy")
    monkeypatch.setitem(ROUTERS, "mine", KeywordRouter)  # a router added in one place is valid in the file
    assert config.with_router(strategy="mine").router.strategy == "mine"


def test_the_project_files_schema_lists_the_routers_there_are(monkeypatch) -> None:
    """Editors complete and check `router.strategy` from the schema: it lost its names when the hand-kept
    Literal went, and must not bring the hand-kept list back."""
    from mtlora.config import ProjectConfig
    from mtlora.routing import ROUTERS, KeywordRouter

    def strategy() -> dict:
        return ProjectConfig.model_json_schema()["$defs"]["RouterSettings"]["properties"]["strategy"]

    assert strategy() == {"default": "semantic", "enum": ["explicit", "keywords", "semantic", "learned"],
                          "title": "Strategy", "type": "string"}
    monkeypatch.setitem(ROUTERS, "mine", KeywordRouter)
    assert strategy()["enum"] == ["explicit", "keywords", "semantic", "learned", "mine"]



def test_the_project_files_schema_lists_the_task_kinds_there_are() -> None:
    from mtlora.config import ProjectConfig
    from mtlora.tasks import task_kind_names

    kind = ProjectConfig.model_json_schema()["$defs"]["TaskConfig"]["properties"]["kind"]
    assert kind["enum"] == task_kind_names() and "classification" in kind["enum"]
    assert "kind" in ProjectConfig.model_json_schema()["$defs"]["TaskConfig"]["required"]

@pytest.mark.parametrize("name", ["../escape", "a/b", "a\\b", "..", "", "a..b"])
def test_task_names_that_could_escape_the_registry_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="not allowed"):
        load_config(write(tmp_path, {"tasks": [task(name)]}))


def test_repeated_task_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="repeated: sentiment"):
        load_config(write(tmp_path, {"tasks": [task(), task()]}))


def test_a_misspelt_default_task_is_told_the_one_meant(tmp_path: Path) -> None:
    """A check of the whole project names its setting itself, without a location before it."""
    config = {"tasks": [task(), task("support")], "router": {"default_task": "suport"}}
    with pytest.raises(ConfigError, match=r"mtlora.yaml: router.default_task 'suport' is not a task. Did you mean "
                                          r"'support'\? Tasks: sentiment, support$"):
        load_config(write(tmp_path, config))


def test_kind_specific_settings_are_checked(tmp_path: Path) -> None:
    regression = {"name": "sts", "kind": "regression",
                  "data": {"train": "t.jsonl", "labels": ["a", "b"]}}
    with pytest.raises(ConfigError, match="a regression task has no label set"):
        load_config(write(tmp_path, {"tasks": [regression]}))
    generation = {"name": "summaries", "kind": "generation", "data": {"train": "t.jsonl", "labels": ["a", "b"]}}
    with pytest.raises(ConfigError, match="a generation task has no label set"):
        load_config(write(tmp_path, {"tasks": [generation]}))
    # Settings a kind would ignore are refused, not silently dropped.
    del generation["data"]["labels"]
    generation["seq2seq"] = {"num_options": 3}
    with pytest.raises(ConfigError, match=r"seq2seq.num_options does not apply to generation \(that is mcq_gene"):
        load_config(write(tmp_path, {"tasks": [generation]}))
    labels = {"name": "support", "kind": "instruction_classification", "seq2seq": {"num_options": 3},
              "data": {"train": "t.jsonl", "labels": ["billing", "account"]}}
    with pytest.raises(ConfigError, match=r"seq2seq.num_options does not apply to instruction_classification \(that"):
        load_config(write(tmp_path, {"tasks": [labels]}))
    labels["seq2seq"] = {"decoding": {"num_beams": 4}}
    with pytest.raises(ConfigError, match=r"seq2seq.decoding does not apply to instruction_classification \(it "
                                          r"scores each label"):
        load_config(write(tmp_path, {"tasks": [labels]}))


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as missing:
        load_config(tmp_path / "nope.yaml")
    assert str(missing.value) == f"{tmp_path / 'nope.yaml'}: file not found"  # one problem is no list
    path = tmp_path / "bad.yaml"
    path.write_text("tasks: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML") as bad:
        load_config(path)
    assert f'in "{path}", line 1' in str(bad.value) and "<unicode string>" not in str(bad.value)
    # PyYAML keeps the last of two same keys in silence: a task's second training: block dropped its first.
    path.write_text("tasks:\n  - name: a\n    kind: classification\n    training: {epochs: 2}\n"
                    "    data: {train: t.jsonl}\n    training: {lr: 0.1}\n")
    with pytest.raises(ConfigError, match=r"(?s)not valid YAML: the key 'training' is given twice in one mapping "
                                          r"\(only one of them would count\).*line 6"):
        load_config(path)
    # A merge key's values may be overridden: that is what it is for (examples/glue/local.yaml does it).
    path.write_text("tasks:\n  - name: a\n    kind: classification\n    data:\n"
                    "      train: &train {path: a.tsv, quoting: none}\n"
                    "      validation: {<<: *train, path: b.tsv}\n      labels: [x, y]\n")
    validation = load_config(path).tasks[0].data.validation
    assert (Path(validation.path).name, validation.quoting) == ("b.tsv", "none")


def test_yes_and_no_are_text_as_in_yaml_1_2_and_a_boolean_setting_still_takes_them(tmp_path: Path) -> None:
    path = tmp_path / "mtlora.yaml"
    path.write_text("tasks:\n  - name: a\n    kind: classification\n    training: {baseline: no}\n"
                    "    routing: {keywords: [on, off]}\n"
                    "    data: {train: t.jsonl, labels: [yes, no], label_map: {Y: yes, N: no, on: yes}}\n")
    task = load_config(path).tasks[0]
    assert task.data.labels == ["yes", "no"]
    assert task.data.label_map == {"Y": "yes", "N": "no", "on": "yes"}
    assert task.routing.keywords == ["on", "off"]
    assert task.training.baseline is False
    path.write_text(path.read_text().replace("baseline: no", "baseline: false"))
    assert load_config(path).tasks[0].training.baseline is False
    tasks = path.read_text()
    for word, value in (("off", False), ("Yes", True), ("auto", "auto")):  # a boolean-or-auto setting too
        path.write_text(f"inference: {{mixed_batches: {word}}}\n{tasks}")
        assert load_config(path).inference.mixed_batches == value


def test_a_multitask_adapter_mixes_seq2seq_tasks_only(tmp_path: Path) -> None:
    summaries = {"name": "summaries", "kind": "generation", "data": {"train": "t.jsonl"},
                 "seq2seq": {"task_token": "<summarize>"}}
    writer = {"name": "writer", "kind": "multitask", "mixture": {"tasks": ["summaries", "sentiment"]}}
    with pytest.raises(ConfigError, match=r"multitask 'writer' can only mix seq2seq tasks; 'sentiment' is "
                                          r"classification"):
        load_config(write(tmp_path, {"tasks": [summaries, task(), writer]}))
    headlines = {**summaries, "name": "headlines", "seq2seq": {"task_token": "<headline>"}}
    writer["mixture"]["tasks"] = ["summaries", "headlines"]
    both = {"name": "both", "kind": "multitask", "mixture": {"tasks": ["summaries", "writer"]}}
    with pytest.raises(ConfigError, match=r"multitask 'both' can only mix seq2seq tasks; 'writer' is multitask"):
        load_config(write(tmp_path, {"tasks": [summaries, headlines, writer, both]}))
    with pytest.raises(ConfigError, match=r"'mixture' \(the tasks to train on\) goes with kind multitask, and only "
                                          r"with it"):
        load_config(write(tmp_path, {"tasks": [{**task(), "mixture": {"tasks": ["a", "b"]}}]}))


def test_unknown_task_lists_the_ones_there_are(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, {"tasks": [task("sentiment"), task("topics")]}))
    with pytest.raises(UnknownTaskError, match=r"No task 'x' in the project config\. Available: sentiment, topics"):
        config.task("x")


def test_squad_articles_start_at_zero_or_later(tmp_path: Path) -> None:
    """A negative start counted from the end: train and validation could share articles, silently."""
    qa = {"name": "qa", "kind": "extractive_qa", "data": {"train": {"path": "dev.json", "articles": [-1, 2]}}}
    with pytest.raises(ConfigError, match=r"tasks\[0\] \(qa\)\.data\.train: articles \[-1, 2\]: start must be 0 "
                                          r"or more"):
        load_config(write(tmp_path, {"tasks": [qa]}))


@pytest.mark.parametrize(("source", "ignored", "expected"), [
    ({"hub": "glue", "subset": "sst2", "columns": ["text", "label"], "encoding": "latin-1"}, ["columns", "encoding"],
     r"columns, encoding cannot apply to a hub source \(path sources only\); remove them"),
    ({"path": "train.csv", "split": "validation"}, ["split"],
     r"split cannot apply to a file \(hub sources only\); remove it"),
])
def test_a_setting_the_source_would_ignore_is_refused(tmp_path: Path, source: dict, ignored: list[str],
                                                      expected: str) -> None:
    """A split on a file, or columns on a hub source, was accepted and never read."""
    config = task()
    config["data"]["train"] = source
    with pytest.raises(ConfigError, match=rf"tasks\[0\] \(sentiment\)\.data\.train: {expected}"):
        load_config(write(tmp_path, {"tasks": [config]}))
    config["data"]["train"] = {key: value for key, value in source.items() if key not in ignored}
    load_config(write(tmp_path, {"tasks": [config]}))


@pytest.mark.parametrize("encoding", ["bogus-enc", "base64"])
def test_an_encoding_python_cannot_read_text_with_is_refused(tmp_path: Path, encoding: str) -> None:
    """It passed the config and crashed reading the file with a LookupError traceback."""
    broken = task()
    broken["data"]["train"] = {"path": "train.csv", "encoding": encoding}
    with pytest.raises(ConfigError, match=rf"tasks\[0\] \(sentiment\)\.data\.train\.encoding: '{encoding}' is not "
                                          r"a text encoding Python knows \(e\.g\. utf-8, latin-1, cp1252"):
        load_config(write(tmp_path, {"tasks": [broken]}))


def test_a_project_file_that_is_a_folder_or_not_utf_8_is_named(tmp_path: Path) -> None:
    """Both were tracebacks (IsADirectoryError, UnicodeDecodeError) with exit status 1."""
    (tmp_path / "folder.yaml").mkdir()
    with pytest.raises(ConfigError, match=r"(?s)folder.yaml: .*is a directory, not a file"):
        load_config(tmp_path / "folder.yaml")
    path = tmp_path / "latin.yaml"
    path.write_bytes("tasks: []\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"(?s)latin.yaml: .*not UTF-8 text: line 2 holds byte 0xe9 \(save the file "
                                          r"as UTF-8"):
        load_config(path)


@pytest.mark.parametrize("defaults", [[1], "oops", False])
def test_defaults_that_are_not_a_mapping_are_refused(tmp_path: Path, defaults: object) -> None:
    """They crashed merging into the tasks (TypeError), a traceback instead of a config error."""
    with pytest.raises(ConfigError, match=r"defaults: must be a mapping of settings every task shares, e\.g\. "
                                          rf"{{training: {{epochs: 3}}}}; got {type(defaults).__name__}") as caught:
        load_config(write(tmp_path, {"defaults": defaults, "tasks": [task(lora={"r": 0})]}))
    assert len(caught.value.problems) == 2, caught.value  # with the tasks' own problems, as ever


def test_a_dumped_config_reads_back_and_an_unhashable_yaml_key_is_a_config_error(tmp_path: Path) -> None:
    """A dump spells out `split: null` on a file source, which is no setting given; a list as a key is
    PyYAML's to refuse, not a TypeError."""
    config = load_config(write(tmp_path, {"tasks": [task()]}))
    dumped = tmp_path / "dumped.yaml"
    dumped.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert load_config(dumped).tasks[0].data == config.tasks[0].data
    dumped.write_text("? [a, b]\n: 1\ntasks: []\n")
    with pytest.raises(ConfigError, match=r"(?s)not valid YAML: .*unhashable key"):
        load_config(dumped)
    assert "No task '5'" in str(UnknownTaskError("task", 5, ["a"]))  # type: ignore[arg-type]


def test_a_mistake_under_defaults_is_named_there_once(tmp_path: Path) -> None:
    """Merged into every task first, it was reported in each, at places the file does not have."""
    defaults = {"training": {"epoch": 3, "lr": 0.001}, "lora": {"r": 0}, "routng": {}}
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, {"defaults": defaults, "tasks": [task("a"), task("b"), task("c")]}))
    problems = caught.value.problems
    expected = ["defaults.lora.r: Input should be greater than 0",
                "defaults.routng: unknown setting (check the spelling; valid here: name, kind,",
                "defaults.training.epoch: unknown setting (check the spelling; valid here: epochs,"]
    assert len(problems) == 3 and all(p.startswith(e) for p, e in zip(sorted(problems), expected, strict=True)), \
        problems
    # In a section each task completes (data: its train file), a misspelt key is named under defaults too.
    typo = {"data": {"lables": ["neg", "pos"]}, "training": [1]}
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, {"defaults": typo, "tasks": [task("a"), task("b")]}))
    assert sorted(p.split(":")[0] for p in caught.value.problems) == ["defaults.data.lables", "defaults.training"]
    # A section a task completes is merged as before.
    shared = {"data": {"labels": ["neg", "pos"]}}
    config = load_config(write(tmp_path, {"defaults": shared, "tasks": [{"name": "a", "kind": "classification",
                                                                           "data": {"train": "t.jsonl"}}]}))
    assert config.tasks[0].data.labels == ["neg", "pos"]


@pytest.mark.parametrize(("data", "expected"), [
    ({"label_map": {"a": None}}, r"data\.label_map: 'a' maps to null \(give the label name it stands for"),
    ({"labels": ["", "b"]}, r"data\.labels: label 0 is an empty name \(every label needs a name"),
    ({"label_map": {1: "a", "1": "b"}}, r"data\.label_map: '1' given twice \(as a number and as text\); keep one"),
    ({"train": {"path": "t.csv", "limit": True}}, r"data\.train\.limit: limit is a number of rows, not true"),
    ({"labels": ["a", "  "]}, r"data\.labels: label 1 is an empty name"),
    ({"train": {"path": "t.csv", "recode": {"label": {1: None}}}},
     r"data\.train\.recode: '1' of column 'label' maps to null \(give the value it is read as"),
])
def test_a_null_mapping_or_an_empty_label_name_is_refused(tmp_path: Path, data: dict, expected: str) -> None:
    """null became the class 'None', and '' a class of its own, with no warning."""
    broken = task()
    broken["data"].update(data)
    with pytest.raises(ConfigError, match=rf"tasks\[0\] \(sentiment\)\.{expected}"):
        load_config(write(tmp_path, {"tasks": [broken]}))


def test_a_hub_id_that_cannot_be_loaded_is_one_problem_with_its_fix() -> None:
    from mtlora.backbone import resolve_backbone

    with pytest.raises(ConfigError, match=r"^backbone 'nobody/no-such-model': cannot be loaded: .+ \(a hub id needs "
                                          r"the network or a copy in the hub cache; else give a model folder"):
        resolve_backbone("nobody/no-such-model")
    # A path (or more slashes than `owner/name`) is no hub id: asking the hub would blame the network.
    for folder in ("./models/bert", "/models/bert", "~/bert", "models/bert/v2"):
        with pytest.raises(ConfigError, match=rf"^backbone '{re.escape(folder)}': no such folder; give a model folder"):
            resolve_backbone(folder)


def test_a_backbone_folder_without_a_model_says_what_is_missing(tmp_path: Path, tiny_bert: Path) -> None:
    """transformers failed on such folders with a traceback that advised installing sentencepiece."""
    import shutil

    from mtlora.backbone import resolve_backbone

    parent = tmp_path / "models"
    shutil.copytree(tiny_bert, parent / "bert")
    with pytest.raises(ConfigError, match=rf"no config.json in this folder.*the model may be in {parent / 'bert'}"):
        resolve_backbone(str(parent))
    for weights in (parent / "bert").glob("model*.safetensors*"):
        weights.unlink()
    with pytest.raises(ConfigError, match=r"no model weights in this folder \(none of model.safetensors"):
        resolve_backbone(str(parent / "bert"))


def test_the_project_files_the_readme_shows_load(tmp_path: Path) -> None:
    """The README's examples are what a new user copies first: each whole project file in it must load."""
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    projects = [block for block in re.findall(r"```yaml\n(.*?)```", readme, re.S) if block.startswith("backbone:")]
    assert len(projects) >= 2  # the smallest project and the fuller one
    for number, block in enumerate(projects):
        path = tmp_path / f"project{number}.yaml"
        path.write_text(block, encoding="utf-8")
        assert load_config(path).tasks, block


def _qa(articles: list[int]) -> dict:
    return {"name": "qa", "kind": "extractive_qa", "data": {"train": {"path": "dev.json", "articles": articles}}}


@pytest.mark.parametrize(("good", "bad", "problem"), [
    (task(training={"max_length": 8}), task(training={"max_length": 7}),
     r"training\.max_length: Input should be greater than or equal to 8"),
    # transformers reads a warmup of 1 or more as a number of steps: 1.0 would warm up for one step, silently.
    (task(training={"warmup_ratio": 0.99}), task(training={"warmup_ratio": 1.0}),
     r"training\.warmup_ratio: Input should be less than 1"),
    ({**task(), "data": {"train": "t.jsonl", "holdout": 0.49}},
     {**task(), "data": {"train": "t.jsonl", "holdout": 0.5}},
     r"data\.holdout: Input should be less than 0\.5"),
    # [2, 2) keeps no article: a split that reads as given and trains or scores on nothing.
    (_qa([1, 2]), _qa([2, 2]), r"data\.train: articles \[2, 2\]: start must be below end"),
    (task("a" * 64), task("a" * 65), "is not allowed: use 1-64 letters"),
])
def test_a_setting_at_its_bound_is_taken_and_one_past_it_refused(tmp_path: Path, good: dict, bad: dict,
                                                                 problem: str) -> None:
    load_config(write(tmp_path, {"tasks": [good]}))
    with pytest.raises(ConfigError, match=problem):
        load_config(write(tmp_path, {"tasks": [bad]}))


@pytest.mark.parametrize(("changes", "problem"), [
    # Two classes of one name: ids would no longer map back to the label a user wrote.
    ({"data": {"train": "t.jsonl", "labels": ["neg", "pos", "neg"]}}, r"labels repeat a name: \['neg', 'pos', 'neg'\]"),
    ({"data": {"train": "t.jsonl", "fields": {"question": "q"}}},
     r"data\.fields has role\(s\) \['question'\] that kind classification does not use; its roles: text"),
    ({"data": None}, r"'data' is required: give at least data\.train"),
    # Both at once: the role used to be told only once the prompt was mended.
    ({"kind": "instruction_classification", "data": {"train": "t.jsonl", "fields": {"ticket": "utterance"}},
      "seq2seq": {"prompt": "team for {ticket}?"}},
     r"prompt template 'team for \{ticket\}\?' uses \['ticket'\].*; and data\.fields has role\(s\) \['ticket'\] "
     r"that kind instruction_classification does not use; its roles: text"),
    ({"name": "router"}, r"'router' is the learned router's adapter name; rename that task"),
])
def test_a_task_that_could_not_train_as_written_is_refused(tmp_path: Path, changes: dict, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_config(write(tmp_path, {"tasks": [{**task(), **changes}]}))


def test_a_mixture_whose_parts_share_a_task_token_or_that_samples_below_size_is_refused(tmp_path: Path) -> None:
    def part(name: str, token: str) -> dict:
        return {"name": name, "kind": "generation", "data": {"train": "t.jsonl"}, "seq2seq": {"task_token": token}}

    writer = {"name": "writer", "kind": "multitask", "mixture": {"tasks": ["summaries", "headlines"]}}
    # The token is how the one adapter tells its tasks apart: shared, the two would be one task to it.
    with pytest.raises(ConfigError, match=r"multitask 'writer': 'headlines' and 'summaries' share the task token <s>"):
        load_config(write(tmp_path, {"tasks": [part("summaries", "<s>"), part("headlines", "<s>"), writer]}))
    tasks = [part("summaries", "<s>"), part("headlines", "<h>"), writer]
    load_config(write(tmp_path, {"tasks": tasks}))
    writer["mixture"]["temperature"] = 0.5
    with pytest.raises(ConfigError, match=r"mixture\.temperature: Input should be greater than or equal to 1"):
        load_config(write(tmp_path, {"tasks": tasks}))


def test_a_prompt_given_twice_as_text_and_as_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "prompt.txt").write_text("summarize: {text}")
    summaries = {"name": "summaries", "kind": "generation", "data": {"train": "t.jsonl"},
                 "seq2seq": {"prompt": "short: {text}", "prompt_file": "prompt.txt"}}
    with pytest.raises(ConfigError, match=r"give either 'prompt' \(the template\) or 'prompt_file', not both"):
        load_config(write(tmp_path, {"tasks": [summaries]}))


def test_a_hub_id_stays_a_hub_id_and_a_folder_beside_the_file_becomes_its_path(tmp_path: Path) -> None:
    """Only a backbone that names an existing folder is a path: a hub id made absolute would be looked for on disk."""
    assert load_config(write(tmp_path, {"backbone": "org/model", "tasks": [task()]})).backbone == "org/model"
    (tmp_path / "org" / "model").mkdir(parents=True)
    config = load_config(write(tmp_path, {"backbone": "org/model", "tasks": [task()]}))
    assert config.backbone == str((tmp_path / "org" / "model").resolve())


def test_a_section_left_empty_under_defaults_is_named_there_once(tmp_path: Path) -> None:
    """`training:` with nothing under it was merged into every task as null and reported in each, at
    places the file does not have; a section that may be null (seq2seq) is still taken as null."""
    path = tmp_path / "mtlora.yaml"
    path.write_text("defaults:\n  training:\n  seq2seq:\ntasks:\n"
                    + "".join(f"  - {{name: {name}, kind: classification, data: {{train: t.jsonl}}}}\n"
                              for name in ("a", "b")))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == ["defaults.training: is empty: put its settings under it, indented, or delete "
                                     "the line"]
    path.write_text(path.read_text().replace("  training:\n", ""))
    assert load_config(path).tasks[1].seq2seq is None


def test_a_task_section_left_empty_says_so_instead_of_asking_for_a_dictionary(tmp_path: Path) -> None:
    path = tmp_path / "mtlora.yaml"
    path.write_text("tasks:\n  - name: a\n    kind: classification\n    data: {train: t.jsonl}\n    lora:\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == ["tasks[0] (a).lora: is empty: put its settings under it, indented, or delete "
                                     "the line"]


def test_the_head_only_baseline_has_a_learning_rate_of_its_own_and_a_bad_one_is_named(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, {"tasks": [task("a", training={"lr": 2e-3})]}))
    settings = config.tasks[0].training
    assert (settings.lr_for("lora"), settings.lr_for("head_only"), settings.lr_for("full")) == (2e-3, 0.1, 2e-3)
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, {"tasks": [task("a", training={"baseline_lr": 0})]}))
    (problem,) = caught.value.problems
    assert problem.startswith("tasks[0] (a).training.baseline_lr: Input should be greater than 0"), problem
