"""Data loading: every format, and an error naming file, line and field for each kind of bad row."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from mtlora import DataError, load_config
from mtlora.data import load_task_data


def project(tmp_path: Path, kind: str, train: dict | str, **data) -> tuple:
    config = {"tasks": [{"name": "t", "kind": kind, "data": {"train": train, **data}}]}
    path = tmp_path / "mtlora.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = load_config(path)
    return loaded, loaded.tasks[0]


def jsonl(tmp_path: Path, rows: list[dict], name: str = "train.jsonl") -> str:
    (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return name


def load(tmp_path: Path, kind: str, train: dict | str, **data):
    config, task = project(tmp_path, kind, train, **data)
    return load_task_data(config, task, splits=("train",))


def without_where(examples: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "where"} for e in examples]


LABELS = {"labels": ["neg", "pos"]}


def test_jsonl_csv_and_tsv_give_the_same_examples(tmp_path: Path) -> None:
    rows = [{"sentence": "good film", "label": 1}, {"sentence": "bad film", "label": 0}]
    (tmp_path / "train.csv").write_text('sentence,label\n"good film",1\nbad film,0\n')
    (tmp_path / "train.tsv").write_text("sentence\tlabel\ngood film\t1\nbad film\t0\n")
    fields = {"fields": {"text": "sentence"}, **LABELS}
    results = [without_where(load(tmp_path, "classification", name, **fields).train)
               for name in (jsonl(tmp_path, rows), "train.csv", "train.tsv")]
    assert results[0] == results[1] == results[2]
    assert results[0][0] == {"text": "good film", "label": 1}


def test_glue_tsv_with_bare_quotes_needs_quoting_none(tmp_path: Path) -> None:
    (tmp_path / "train.tsv").write_text('sentence\tlabel\n"a film\t1\nfine" again\t0\nok\t1\n')
    # The tab the csv module names is written \t, not as blank space.
    expected = r"train.tsv:2: a quoted field goes on past its closing quote \('\\t' expected after '\"'\) .*none"
    with pytest.raises(DataError, match=expected):
        load(tmp_path, "classification", "train.tsv", fields={"text": "sentence"}, **LABELS)
    (tmp_path / "late.tsv").write_text('sentence\tlabel\n"a film\t1\nfine"\t0\nok\t1\n')  # closes at a tab
    with pytest.raises(DataError, match=r"late.tsv:2: a quoted field spans tabs or lines \(set quoting: none"):
        load(tmp_path, "classification", "late.tsv", fields={"text": "sentence"}, **LABELS)
    data = load(tmp_path, "classification", {"path": "train.tsv", "quoting": "none"},
                fields={"text": "sentence"}, **LABELS)
    assert [e["text"] for e in data.train] == ['"a film', 'fine" again', "ok"]


def test_a_stray_quote_in_a_csv_does_not_swallow_rows(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text('text,label\n"stray start,pos\nrow two,neg\nrow three " ok,pos\nfour,neg\n')
    with pytest.raises(DataError, match=r"train.csv:2: a quoted field goes on past its closing quote .*twice"):
        load(tmp_path, "classification", "train.csv", **LABELS)
    (tmp_path / "header.csv").write_text('"text" x,label\nfine,pos\n')
    with pytest.raises(DataError, match=r"header.csv:1: a quoted field goes on past its closing quote"):
        load(tmp_path, "classification", "header.csv", **LABELS)


def test_an_error_after_a_quoted_field_of_two_lines_names_its_own_line(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text('text,label\n"a review\non two lines",pos\nfine,maybe\n')
    with pytest.raises(DataError, match=r"train.csv:4"):
        load(tmp_path, "classification", "train.csv", **LABELS)


def test_headerless_tsv_with_named_columns_and_byte_order_mark(tmp_path: Path) -> None:
    (tmp_path / "train.tsv").write_bytes("\ufeffgood film\t1\r\nbad film\t0\r\n".encode())
    data = load(tmp_path, "classification", {"path": "train.tsv", "columns": ["text", "label"]}, **LABELS)
    assert without_where(data.train)[0] == {"text": "good film", "label": 1}


def test_fields_past_the_named_columns_are_refused_unless_dropping_them_was_asked(tmp_path: Path) -> None:
    """An unquoted comma in the last text splits it: dropping what follows would train on half a text."""
    (tmp_path / "train.csv").write_text("1,good film\n0,bad, really bad film\n")
    source = {"path": "train.csv", "columns": ["label", "text"]}
    with pytest.raises(DataError, match=r"train.csv:2: expected 2 CSV fields \(label, text\), found 3 "
                                        r"\(.*delimiter unquoted.*extra_fields: ignore"):
        load(tmp_path, "classification", source, **LABELS)
    data = load(tmp_path, "classification", {**source, "extra_fields": "ignore"}, **LABELS)
    assert [e["text"] for e in data.train] == ["good film", "bad"]


def squad_file(tmp_path: Path, *titles: str) -> str:
    def article(title: str) -> dict:
        context = f"{title} is a city."
        return {"title": title, "paragraphs": [{"context": context, "qas": [
            {"id": title, "question": f"what is {title}?",
             "answers": [{"text": "a city", "answer_start": len(title) + 4}]}
        ]}]}
    (tmp_path / "dev.json").write_text(json.dumps({"data": [article(title) for title in titles]}))
    return "dev.json"


def test_squad_json_is_flattened_and_split_by_article(tmp_path: Path) -> None:
    data = load(tmp_path, "extractive_qa", {"path": squad_file(tmp_path, "paris", "rome", "oslo"), "articles": [1, 3]})
    assert [e["question"] for e in data.train] == ["what is rome?", "what is oslo?"]
    assert data.train[0]["answers"] == [{"text": "a city", "answer_start": 8}]


def test_articles_past_the_end_of_the_file_say_how_many_it_has(tmp_path: Path) -> None:
    """Not an IndexError from inside the reader: the user set the range, and needs the file's count to fix it."""
    with pytest.raises(DataError, match=r"dev.json: articles \[1, 5\) asked for, but the file has 3$"):
        load(tmp_path, "extractive_qa", {"path": squad_file(tmp_path, "paris", "rome", "oslo"), "articles": [1, 5]})


def test_articles_on_a_file_that_is_not_squad_is_refused(tmp_path: Path) -> None:
    """Ignored, it would train on every row where the user meant a slice (or validate on training rows)."""
    rows = [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}]
    (tmp_path / "train.csv").write_text("text,label\ngood,pos\nbad,neg\n")
    (tmp_path / "records.json").write_text(json.dumps(rows))
    for name in (jsonl(tmp_path, rows), "train.csv", "records.json"):
        with pytest.raises(DataError, match=rf"{name}: 'articles' only applies to SQuAD JSON files"):
            load(tmp_path, "classification", {"path": name, "articles": [0, 1]}, **LABELS)
    # format: json says a SQuAD-shaped file holds plain records: articles cannot apply to those either.
    with pytest.raises(DataError, match=r"dev.json: 'articles' only applies to SQuAD JSON files"):
        load(tmp_path, "extractive_qa", {"path": squad_file(tmp_path, "paris"), "format": "json", "articles": [0, 1]})


def test_missing_field_names_file_line_and_the_fields_present(tmp_path: Path) -> None:
    name = jsonl(tmp_path, [{"text": "good", "label": "pos"}, {"txt": "bad", "label": "neg"}])
    with pytest.raises(DataError) as caught:
        load(tmp_path, "classification", name, **LABELS)
    message = str(caught.value)
    assert f"{tmp_path / name}:2" in message
    assert "missing field 'text'" in message and "fields present: txt, label" in message


def test_a_column_no_row_of_a_csv_has_is_told_at_its_header(tmp_path: Path) -> None:
    """It was told at the first row parsed: with `limit`, a sampled row's line (`train.csv:439`), and the
    header, where the fix goes, went unnamed."""
    (tmp_path / "train.csv").write_text("\nutterance,label\n" + "".join(f"text {i},pos\n" for i in range(50)))
    with pytest.raises(DataError, match=rf"^{re.escape(str(tmp_path / 'train.csv'))}:2: no column 'text' \(the "
                                        r"classification role 'text'\); columns: utterance, label \(map the role "
                                        r"to a column with data\.fields\.text\)$"):
        load(tmp_path, "classification", {"path": "train.csv", "limit": 5}, **LABELS)
    # Columns named in the project file, for a file without a header, are the whole file's too.
    with pytest.raises(DataError, match=rf"^{re.escape(str(tmp_path / 'train.csv'))}: no column 'text'"):
        load(tmp_path, "classification", {"path": "train.csv", "columns": ["utterance", "label"]}, **LABELS)


def test_spaces_around_a_label_or_a_header_name_are_not_part_of_it(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("text, label\ngood film, pos\nbad film, neg\ngreat,pos\nawful,neg\n")
    learned = load(tmp_path, "classification", "train.csv")
    assert learned.kind.labels == ["neg", "pos"]  # not four classes: " neg", " pos", "neg", "pos"
    assert [e["label"] for e in learned.train] == [1, 0, 1, 0]
    given = load(tmp_path, "classification", "train.csv", labels=["neg", "pos"])
    assert [e["label"] for e in given.train] == [1, 0, 1, 0]


def test_unknown_label_lists_the_valid_ones(tmp_path: Path) -> None:
    name = jsonl(tmp_path, [{"text": "good", "label": "pos"}, {"text": "meh", "label": "neutral"}])
    expected = r"train.jsonl:2: unknown label 'neutral' in field 'label'; valid labels: neg, pos"
    with pytest.raises(DataError, match=expected):
        load(tmp_path, "classification", name, **LABELS)


@pytest.mark.parametrize(("text", "holding"), [("   ", ""), ("\x00\u200b", ", holding only control"),
                                              ("\ufffd\u0301", ", holding only control")])
def test_empty_text_is_refused(tmp_path: Path, text: str, holding: str) -> None:
    name = jsonl(tmp_path, [{"text": "good", "label": "pos"}, {"text": text, "label": "neg"}])
    expected = rf"train.jsonl:2: field 'text' is empty{holding}.* \(give the row its text, or drop it\)"
    with pytest.raises(DataError, match=expected):
        load(tmp_path, "classification", name, **LABELS)


def test_a_number_where_text_belongs_is_refused_with_the_fix(tmp_path: Path) -> None:
    name = jsonl(tmp_path, [{"text": "good", "label": "pos"}, {"text": 5, "label": "neg"}])
    with pytest.raises(DataError, match=r"train.jsonl:2: field 'text' must be text, got int \(write it in quotes, or "
                                        r"map the role to a text field with data.fields.text\)"):
        load(tmp_path, "classification", name, **LABELS)


def test_non_numeric_score_is_refused(tmp_path: Path) -> None:
    name = jsonl(tmp_path, [{"text": "a", "text_pair": "b", "label": "4.2"},
                            {"text": "a", "text_pair": "b", "label": "high"}])
    with pytest.raises(DataError, match=r"train.jsonl:2: score 'high' in field 'label' is not a number"):
        load(tmp_path, "regression", name)


@pytest.mark.parametrize(("cell", "json_value"), [("nan", "NaN"), ("inf", "Infinity"), ("-Infinity", "-Infinity"),
                                                  ("1e999", "1e999")])
def test_a_score_that_is_not_finite_is_refused_at_its_line(tmp_path: Path, cell: str, json_value: str) -> None:
    """float() and Python's json read all of these: one NaN target makes every loss after it NaN."""
    (tmp_path / "train.csv").write_text(f"text,text_pair,label\na,b,4.2\na,b,{cell}\n")
    with pytest.raises(DataError, match=rf"train.csv:3: score '{cell}' in field 'label' is not finite"):
        load(tmp_path, "regression", "train.csv")
    (tmp_path / "train.jsonl").write_text(f'{{"text": "a", "text_pair": "b", "label": {json_value}}}\n')
    with pytest.raises(DataError, match=r"train.jsonl:1: score -?(nan|inf) in field 'label' is not finite"):
        load(tmp_path, "regression", "train.jsonl")


def test_answer_not_in_its_context_is_refused(tmp_path: Path) -> None:
    name = jsonl(tmp_path, [{"question": "who?", "context": "the cat sat",
                             "answers": [{"text": "the dog", "answer_start": 0}]}])
    with pytest.raises(DataError, match=r"train.jsonl:1: answers\[0\] 'the dog' is not found in its context"):
        load(tmp_path, "extractive_qa", name)
    name = jsonl(tmp_path, [{"question": "who?", "context": "the cat sat", "answers": ["the dog"]}])
    with pytest.raises(DataError, match=r"train.jsonl:1: answers\[0\] 'the dog' does not occur in its context "
                                        r"\(an answer must be a span"):
        load(tmp_path, "extractive_qa", name)


def test_a_missing_file_read_from_mtlora_data_dir_names_that_to_set(tmp_path: Path, monkeypatch) -> None:
    """$MTLORA_DATA_DIR overrides the project file's data_dir: the hint names only what decides."""
    monkeypatch.setenv("MTLORA_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match=r"absent.jsonl: file not found \(paths are relative to data_dir .+; set "
                                        r"\$MTLORA_DATA_DIR to the folder that holds the data\)$"):
        load(tmp_path, "classification", "absent.jsonl", **LABELS)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=rf"absent.jsonl: file not found \(paths are relative to data_dir {tmp_path}; "
                                        r"set data_dir in the project file, or \$MTLORA_DATA_DIR, to the folder"):
        load(tmp_path, "classification", "absent.jsonl", **LABELS)
    with pytest.raises(DataError, match=r"absent.jsonl: file not found$"):  # no data_dir to blame
        load(tmp_path, "classification", str(tmp_path / "absent.jsonl"), **LABELS)
    (tmp_path / "broken.jsonl").write_text('{"text": "a", "label": "pos"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"broken.jsonl:2: not valid JSON: Expecting value at column 10$"):
        load(tmp_path, "classification", "broken.jsonl", **LABELS)
    (tmp_path / "tab.jsonl").write_text('{"text": "a\tb", "label": "pos"}\n')  # a raw tab inside a string
    with pytest.raises(DataError, match=r"tab.jsonl:1: not valid JSON: Invalid control character at column 12$"):
        load(tmp_path, "classification", "tab.jsonl", **LABELS)
    (tmp_path / "lines.json").write_text('{"text": "a", "label": "pos"}\n{"text": "b", "label": "neg"}\n')
    with pytest.raises(DataError, match=r"lines.json:2: not valid JSON: Extra data at column 1 \(.*set format: jsonl"):
        load(tmp_path, "classification", "lines.json", **LABELS)
    (tmp_path / "latin.jsonl").write_bytes(b'{"text": "caf\xe9", "label": "pos"}\n')
    with pytest.raises(DataError, match=r"latin\.jsonl"):
        load(tmp_path, "classification", "latin.jsonl", **LABELS)


def test_label_map_and_integer_labels(tmp_path: Path) -> None:
    name = jsonl(tmp_path, [{"text": "a", "label": 1}, {"text": "b", "label": "0"}])
    assert [e["label"] for e in load(tmp_path, "classification", name, **LABELS).train] == [1, 0]
    name = jsonl(tmp_path, [{"text": "a", "label": "+"}, {"text": "b", "label": "-"}], "mapped.jsonl")
    data = load(tmp_path, "classification", name, label_map={"+": "pos", "-": "neg"}, **LABELS)
    assert [e["label"] for e in data.train] == [1, 0]


def test_a_json_boolean_is_not_taken_for_a_label_id(tmp_path: Path) -> None:
    name = jsonl(tmp_path, [{"text": "a", "label": True}, {"text": "b", "label": False}])
    with pytest.raises(DataError, match=r"train.jsonl:1: unknown label True .*data.label_map"):
        load(tmp_path, "classification", name, **LABELS)
    data = load(tmp_path, "classification", name, label_map={"True": "pos", "False": "neg"}, **LABELS)
    assert [e["label"] for e in data.train] == [1, 0]


def test_a_short_row_and_a_null_label_are_named_for_what_they_are(tmp_path: Path) -> None:
    (tmp_path / "short.csv").write_text("text,label\ngood,pos\nbad\n")
    with pytest.raises(DataError, match=r"short.csv:3: expected 2 CSV fields .*found 1 \(a field is missing"):
        load(tmp_path, "classification", "short.csv", **LABELS)
    name = jsonl(tmp_path, [{"text": "a", "label": "pos"}, {"text": "b", "label": None}])
    with pytest.raises(DataError, match=r"train.jsonl:2: field 'label' \(the classification role 'label'\) is null"):
        load(tmp_path, "classification", name, **LABELS)


def test_a_file_of_another_delimiter_says_which_format_to_set(tmp_path: Path) -> None:
    """A TSV read as CSV was "a field is missing on this line" at line 1, its tabs never mentioned."""
    (tmp_path / "tabs.csv").write_text("text\tlabel\ngood\tpos\n")
    with pytest.raises(DataError, match=r"tabs.csv:1: the header line reads as one CSV field \(the file looks "
                                        r"tab-separated: set format: tsv\)"):
        load(tmp_path, "classification", "tabs.csv", **LABELS)
    (tmp_path / "commas.tsv").write_text("good,pos\nbad,neg\n")
    with pytest.raises(DataError, match=r"commas.tsv:1: expected 2 TSV fields .*found 1 \(the file looks "
                                        r"comma-separated: set format: csv\)"):
        load(tmp_path, "classification", {"path": "commas.tsv", "columns": ["text", "label"]}, **LABELS)
    (tmp_path / "semicolons.csv").write_text("text;label\ngood;pos\n")
    with pytest.raises(DataError, match=r"semicolon-separated, which mtlora does not read"):
        load(tmp_path, "classification", "semicolons.csv", **LABELS)
    (tmp_path / "late.tsv").write_text("text\tlabel\ngood\tpos\nbad, so bad\n")  # one row, not the file
    with pytest.raises(DataError, match=r"late.tsv:3: expected 2 TSV fields .*found 1 \(a field is missing"):
        load(tmp_path, "classification", "late.tsv", **LABELS)


def test_a_repeated_column_name_is_refused(tmp_path: Path) -> None:
    """A row read as a dict keeps only the last of two same-named columns: the first would vanish."""
    (tmp_path / "train.csv").write_text("text,text,label\na,b,pos\nc,d,neg\n")
    with pytest.raises(DataError, match=r"train.csv:1: column names repeat: text"):
        load(tmp_path, "classification", "train.csv", **LABELS)


def test_holdout_is_stratified_and_seeded(tmp_path: Path) -> None:
    rows = [{"text": f"text {i}", "label": "pos" if i % 4 else "neg"} for i in range(40)]
    name = jsonl(tmp_path, rows)
    first = load(tmp_path, "classification", name, holdout=0.25, **LABELS)
    second = load(tmp_path, "classification", name, holdout=0.25, **LABELS)
    assert first.validation == second.validation and len(first.validation) == 10
    assert sum(e["label"] == 0 for e in first.validation) in (2, 3)
    assert not {e["text"] for e in first.validation} & {e["text"] for e in first.train}


def test_holdout_keeps_a_rare_label_in_its_share_whatever_the_seed_and_a_single_row_in_training() -> None:
    from mtlora.data.splits import _holdout
    from mtlora.tasks.classification import ClassificationTask

    kind = ClassificationTask(labels=["neg", "pos"])
    examples = [{"text": f"text {i}", "label": int(i % 25 != 0)} for i in range(100)]  # 4 of 100 negative
    # A random split of 25 holds exactly one of the four with probability 0.42: ten seeds in a row, 2e-4.
    for seed in range(10):
        _, held = _holdout(kind, examples, 0.25, seed, "train.jsonl")
        assert sum(e["label"] == 0 for e in held) == 1
    # A third label with a single row stays in training, and the other two keep their shares.
    kind = ClassificationTask(labels=["neg", "pos", "odd"])
    for seed in range(10):
        train, held = _holdout(kind, [*examples, {"text": "odd one", "label": 2}], 0.25, seed, "train.jsonl")
        assert sum(e["label"] == 0 for e in held) == 1 and {"text": "odd one", "label": 2} in train
        assert len(train) + len(held) == 101
    # Where the other labels are too few to stratify, the split goes unstratified, as where no label has two
    # inputs, rather than refusing a holdout that a label of one row alone made too small.
    five = ClassificationTask(labels=[f"L{i}" for i in range(6)])
    examples = [{"text": f"text {i}", "label": i // 5} for i in range(25)] + [{"text": "rare", "label": 5}]
    train, held = _holdout(five, examples, 0.1, 0, "train.jsonl")
    assert (len(train), len(held)) == (23, 3)


def test_holdout_keeps_the_examples_of_one_input_on_one_side(tmp_path: Path) -> None:
    """RACE asks several questions of one article: a split by row scored validation on trained articles."""
    rows = [{"text": f"article {i // 3}", "target": f"question {i}"} for i in range(60)]
    data = load(tmp_path, "generation", jsonl(tmp_path, rows), holdout=0.2)
    assert len(data.validation) == 12 and len(data.train) == 48
    assert not {e["text"] for e in data.validation} & {e["text"] for e in data.train}
    assert data.inputs_seen_in_training("validation") == 0
    data.validation.append(data.train[0])
    assert data.inputs_seen_in_training("validation") == 1
    # The share is of inputs, and a split that cannot leave one for training says how many there are.
    rows = [{"text": "the one prompt", "target": f"answer {i}"} for i in range(40)]
    with pytest.raises(DataError, match=r"holdout 0.2 of 40 training rows \(1 distinct input\) leaves 0 for "
                                        r"training \(give a validation file instead of holdout\)"):
        load(tmp_path, "generation", jsonl(tmp_path, rows), holdout=0.2)


def test_a_regression_scale_comes_from_the_training_rows_only(tmp_path: Path) -> None:
    rows = [{"text": f"a {i}", "text_pair": f"b {i}", "label": float(i)} for i in range(20)]
    config, task = project(tmp_path, "regression", jsonl(tmp_path, rows), holdout=0.4)
    data = load_task_data(config, task)
    scores = [e["label"] for e in data.train]
    assert data.kind.options["target_mean"] == pytest.approx(sum(scores) / len(scores))


def test_scores_that_never_vary_scale_by_one_and_score_a_defined_zero(tmp_path: Path) -> None:
    """Their spread is 0 (in floats, 3.7's mean is off by its last bit, a spread of 4e-16): standardising by it
    would divide by zero or blow float noise up to whole targets. Pearson is undefined, reported as 0."""
    rows = [{"text": f"a {i}", "text_pair": f"b {i}", "label": 3.7} for i in range(7)]
    data = load(tmp_path, "regression", jsonl(tmp_path, rows))
    assert data.kind.options["target_std"] == 1.0
    assert [data.kind.target(e) for e in data.train] == pytest.approx([0.0] * 7, abs=1e-9)
    predictions = [{"score": 3.0 + i / 10} for i in range(7)]
    assert data.kind.metrics(predictions, data.train)["pearson"] == 0.0
    assert data.kind.caveats(predictions, data.train) == [
        "pearson and spearman are undefined (every gold score is 3.7); reported as 0"]


def test_joined_columns_are_stripped_before_the_space_between_them(tmp_path: Path) -> None:
    (tmp_path / "test.csv").write_text('"3"," Stocks up ","Markets rallied\t"\n')
    source = {"path": "test.csv", "columns": ["label", "title", "description"],
              "join": {"text": ["title", "description"]}}
    data = load(tmp_path, "classification", source, labels=["1", "3"])
    assert data.train[0]["text"] == "Stocks up Markets rallied"  # not " Stocks up  Markets rallied\t"


def test_a_limit_keeps_a_seeded_sample_in_file_order(tmp_path: Path) -> None:
    """The same seed reads the same rows (a rerun compares like with like), another seed others."""
    from mtlora.config import SourceConfig
    from mtlora.data.readers import read_rows

    source = SourceConfig(path=jsonl(tmp_path, [{"n": n} for n in range(20)]), limit=6)

    def kept(seed: int) -> list[int]:
        return [row.values["n"] for row in read_rows(source, tmp_path, seed)]

    assert kept(0) == sorted(kept(0)) and len(set(kept(0))) == 6
    assert kept(0) == kept(0) and kept(1) == sorted(kept(1))
    assert kept(1) != kept(0)


def test_a_source_joins_columns_and_recodes_values_strictly(tmp_path: Path) -> None:
    """AG News' official test file: `class (1-4), title, description`, where the train samples are `text, 0-3`."""
    (tmp_path / "test.csv").write_text('"3","Stocks up","Markets rallied"\n"1","Vote held","Polls closed"\n')
    source = {"path": "test.csv", "columns": ["label", "title", "description"],
              "join": {"text": ["title", "description"]}, "recode": {"label": {1: 0, 2: 1, 3: 2, 4: 3}}}
    data = load(tmp_path, "classification", source, labels=["World", "Sports", "Business", "Sci/Tech"])
    assert [(e["text"], e["label"]) for e in data.train] == [("Stocks up Markets rallied", 2),
                                                           ("Vote held Polls closed", 0)]

    (tmp_path / "test.csv").write_text('"3","Stocks up","Markets rallied"\n"5","Vote held","Polls closed"\n')
    with pytest.raises(DataError, match=r"test.csv:2: recode: value '5' of field 'label' is not one of 1, 2, 3, 4"):
        load(tmp_path, "classification", source, labels=["World", "Sports", "Business", "Sci/Tech"])
    with pytest.raises(DataError, match=r"test.csv:1: join: no field 'headline' to build 'text' from"):
        load(tmp_path, "classification", {**source, "join": {"text": ["headline"]}},
             labels=["World", "Sports", "Business", "Sci/Tech"])


def test_a_hub_source_without_split_reads_the_split_of_its_role(tmp_path: Path, monkeypatch) -> None:
    """Reading 'train' for every role would score evaluation on the training rows, with no warning."""
    calls = []

    def load_dataset(name: str, subset: str | None = None, split: str | None = None) -> list[dict]:
        calls.append(split)
        return [{"sentence": f"{split} {i}", "label": i % 2} for i in range(4)]

    monkeypatch.setitem(sys.modules, "datasets", SimpleNamespace(load_dataset=load_dataset))
    glue = {"hub": "glue", "subset": "sst2"}
    config, task = project(tmp_path, "classification", glue, validation=glue, test={**glue, "split": "train"},
                           fields={"text": "sentence"}, **LABELS)
    data = load_task_data(config, task)
    assert calls == ["train", "validation", "train"]  # an explicit split wins
    assert data.validation[0]["text"] == "validation 0"
    assert data.validation[0]["where"] == "glue:sst2:validation row 0"


@pytest.mark.parametrize(("rows", "classes", "holdout", "expected"), [
    (10, 2, 0.1, r"holdout 0.1 of 10 training rows keeps 1 for validation, fewer than the 2 labels .*"
                 r"\(raise holdout to 0.2, or give a validation file instead"),
    (20, 5, 0.2, r"holdout 0.2 of 20 training rows keeps 4 for validation, fewer than the 5 labels"),
    (1, 1, 0.2, r"holdout 0.2 of 1 training row leaves 0 for training \(give a validation file instead"),
])
def test_a_holdout_too_small_to_split_names_the_file_and_the_fix(tmp_path: Path, rows: int, classes: int,
                                                                  holdout: float, expected: str) -> None:
    """scikit-learn's own refusal was a traceback that spoke of test_size and n_samples."""
    name = jsonl(tmp_path, [{"text": f"t{i}", "label": f"c{i % classes}"} for i in range(rows)])
    labels = {"labels": ["c0", "c1"]} if classes == 1 else {}
    with pytest.raises(DataError, match=rf"train.jsonl: {expected}"):
        load(tmp_path, "classification", name, holdout=holdout, **labels)


@pytest.mark.parametrize(("article", "expected"), [
    ({"title": "A", "paragraph": []}, r"data\[0\]: no 'paragraphs' list \(it is missing; keys present: title, "
                                      r"paragraph\)"),
    ({"title": "A", "paragraphs": [{"context": "c", "qa": []}]}, r"data\[0\]\.paragraphs\[0\]: no 'qas' list"),
    (["not", "an", "article"], r"data\[0\]: expected a JSON object, got list"),
    ({"title": "A", "paragraphs": ["c"]}, r"data\[0\]\.paragraphs\[0\]: expected a JSON object, got str"),
    ({"title": "A", "paragraphs": [{"context": "c", "qas": ["q?"]}]},
     r"data\[0\]\.paragraphs\[0\]\.qas\[0\]: expected a JSON object, got str"),
])
def test_a_squad_file_out_of_shape_is_refused_where_it_is(tmp_path: Path, article: object, expected: str) -> None:
    """A misspelt key used to drop its questions silently; a list where an object goes, to crash."""
    good = {"title": "B", "paragraphs": [{"context": "Sun is hot.", "qas": [
        {"id": "1", "question": "What is hot?", "answers": [{"text": "Sun", "answer_start": 0}]}]}]}
    (tmp_path / "sq.json").write_text(json.dumps({"version": "1.1", "data": [article, good]}))
    with pytest.raises(DataError, match=rf"sq.json: {expected}"):
        load(tmp_path, "extractive_qa", {"path": "sq.json", "format": "squad"})


def test_squad_is_told_by_its_layout_not_by_words_in_the_text(tmp_path: Path) -> None:
    """A text sniff took plain {version, data: [rows]} files and records with a 'paragraphs' field for SQuAD."""
    rows = [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}]
    (tmp_path / "cls.json").write_text(json.dumps({"version": 2, "data": rows}))
    assert len(load(tmp_path, "classification", "cls.json").train) == 2
    (tmp_path / "gen.json").write_text(json.dumps([{"paragraphs": "long text", "summary": "short"}]))
    data = load(tmp_path, "generation", "gen.json", fields={"text": "paragraphs", "target": "summary"})
    assert data.train[0]["target"] == "short"
    (tmp_path / "latin.json").write_bytes('[{"text": "café", "label": "pos"}]'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.json.*not valid utf-8 text"):  # the sniff raised a bare decode error
        load(tmp_path, "classification", "latin.json", **LABELS)


@pytest.mark.parametrize("encoding", ["utf8", "UTF8", "U8"])
def test_every_spelling_of_utf_8_strips_a_byte_order_mark(tmp_path: Path, encoding: str) -> None:
    """Only 'utf-8' did: with 'utf8' the first column was named '\\ufefftext', an invisible difference."""
    (tmp_path / "train.csv").write_bytes("\ufefftext,label\ngood,pos\nbad,neg\n".encode())
    data = load(tmp_path, "classification", {"path": "train.csv", "encoding": encoding}, **LABELS)
    assert [e["text"] for e in data.train] == ["good", "bad"]


def test_a_data_path_that_is_a_folder_is_called_one(tmp_path: Path) -> None:
    (tmp_path / "glue").mkdir()
    with pytest.raises(DataError, match=r"glue: is a directory, not a file \(name a file in it"):
        load(tmp_path, "classification", "glue", **LABELS)


@pytest.mark.parametrize("name", ["big.csv", "big.jsonl"])
def test_a_byte_the_encoding_cannot_read_is_placed_by_line_and_offset(tmp_path: Path, name: str) -> None:
    """The offset was the decoder's, within its current chunk: 'byte 2984' for a byte at 84904, and no line."""
    rows = [(f"row number {i} with some padding text", "pos") for i in range(2000)] + [("caf\xe9", "neg")]
    if name.endswith(".csv"):
        text = "text,label\n" + "".join(f"{t},{label}\n" for t, label in rows)
    else:
        text = "\n" + "".join(json.dumps({"text": t, "label": label}, ensure_ascii=False) + "\n" for t, label in rows)
    data = text.encode("latin-1")
    (tmp_path / name).write_bytes(data)
    offset = data.index(b"\xe9")
    with pytest.raises(DataError, match=rf"{name}:2002: not valid utf-8 text: byte 0xe9 at offset {offset} "
                                        r"\(set encoding: in the source"):
        load(tmp_path, "classification", name, **LABELS)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "UTF8"])
def test_an_unreadable_byte_after_a_byte_order_mark_is_placed_in_the_file(tmp_path: Path, encoding: str) -> None:
    """utf-8-sig would count offsets after the mark: the file's bytes count from its first."""
    data = "\ufefftext,label\nfine,pos\n".encode() + "caf\xe9,neg\n".encode("latin-1")
    (tmp_path / "bom.csv").write_bytes(data)
    offset = data.index(b"\xe9")
    with pytest.raises(DataError, match=rf"bom.csv:3: not valid {encoding} text: byte 0xe9 at offset {offset} "):
        load(tmp_path, "classification", {"path": "bom.csv", "encoding": encoding}, **LABELS)


@pytest.mark.parametrize("line", ["\t", " \t "])
def test_a_line_of_empty_fields_under_quoting_none_is_refused_at_its_line(tmp_path: Path, line: str) -> None:
    """A line count that skipped it, unlike the reader, gave 'read 3 rows but the file has 2', with no line."""
    (tmp_path / "tabs.tsv").write_text(f"text\tlabel\na\tpos\n{line}\nb\tneg\n")
    with pytest.raises(DataError, match=r"tabs.tsv:3: field 'text' is empty"):
        load(tmp_path, "classification", {"path": "tabs.tsv", "quoting": "none"}, **LABELS)


@pytest.mark.parametrize(("name", "text"), [("header.csv", "text,label\n"), ("blank.jsonl", "\n\n")])
def test_a_training_file_without_rows_says_so_before_labels_are_inferred(tmp_path: Path, name: str,
                                                                          text: str) -> None:
    """Without labels: the classifier's label count ran first: 'training data: found only 0 distinct labels'."""
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=rf"{name}: no training rows \(the source is empty, holds only a header line, "
                                        r"or every line is blank"):
        load(tmp_path, "classification", name)


def test_blank_lines_above_a_header_are_skipped_and_lines_stay_counted(tmp_path: Path) -> None:
    """The blank line was read as a header of no columns: 'lead.csv:2: expected 0 CSV fields'."""
    (tmp_path / "lead.csv").write_text("\n  \ntext,label\ngood,pos\nbad,neg\n")
    data = load(tmp_path, "classification", "lead.csv", **LABELS)
    assert [e["where"].rsplit(":", 1)[1] for e in data.train] == ["4", "5"]


@pytest.mark.parametrize(("text", "expected"), [("\ntext,text,label\n", r"train.csv:2: column names repeat: text"),
                                                ("\n\n", r"train.csv: the file is empty \(no header line")])
def test_a_header_below_blank_lines_is_refused_at_its_line(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / "train.csv").write_text(text)
    with pytest.raises(DataError, match=expected):
        load(tmp_path, "classification", "train.csv", **LABELS)


def test_a_tsv_quoting_fields_that_hold_tabs_or_lines_is_read_with_quoting_multiline(tmp_path: Path) -> None:
    """What pandas' to_csv(sep='\\t') writes had no setting that read it, and the error suggested one that fails."""
    (tmp_path / "m.tsv").write_text('text\tlabel\n"line one\nline two"\tpos\n"a\ttab"\tneg\nplain\tpos\n')
    with pytest.raises(DataError, match=r"m.tsv:2: a quoted field spans tabs or lines \(.*quoting: multiline if "
                                        r"the file quotes fields that hold tabs or line breaks"):
        load(tmp_path, "classification", "m.tsv", **LABELS)
    data = load(tmp_path, "classification", {"path": "m.tsv", "quoting": "multiline"}, **LABELS)
    assert [(e["text"], e["where"].rsplit(":", 1)[1]) for e in data.train] == [
        ("line one\nline two", "2"), ("a\ttab", "4"), ("plain", "5")]
