"""Evaluation: metrics per kind, baselines side by side, and the reports written for people."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

import mtlora
from mtlora import load_config
from mtlora.data import TaskData
from mtlora.evaluation import RoutingReport, TaskReport, write_reports, write_routing_reports
from mtlora.evaluation.report import confusion_figure
from mtlora.metrics import (
    classification_metrics,
    degenerate_shares,
    normalize_answer,
    regression_metrics,
    rouge,
    squad_metrics,
    undefined_correlation,
)


def test_classification_metrics() -> None:
    metrics = classification_metrics([0, 1, 1, 0], [0, 1, 0, 0], labels=["neg", "pos"])
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert metrics["f1[pos]"] == pytest.approx(2 / 3)  # the F1 of label id 1, named
    # Sorted from the data, id 1 may be the negative class: the key says which class was scored.
    assert classification_metrics([0, 0, 1, 1], [0, 1, 1, 1], ["duplicate", "not_duplicate"])["f1[not_duplicate]"] \
        == pytest.approx(0.8)
    # A label neither in the split nor predicted is no F1 of 0 in the macro average.
    perfect = classification_metrics([0, 1, 0, 1], [0, 1, 0, 1], labels=["a", "b", "c"])
    assert perfect["macro_f1"] == perfect["weighted_f1"] == 1.0
    # A label the split lacks but the model answers still costs its F1 of 0.
    assert classification_metrics([0, 1], [0, 2], labels=["a", "b", "c"])["macro_f1"] == pytest.approx(1 / 3)


def test_weighted_f1_weighs_each_label_by_its_share_of_the_gold_labels() -> None:
    """A perfect split scores 1.0 under any average: only an imperfect, imbalanced one tells them apart."""
    metrics = classification_metrics([0, 0, 0, 0, 1, 1, 2], [0, 0, 1, 2, 1, 0, 2], labels=["a", "b", "c"])
    f1 = {"a": 4 / 7, "b": 1 / 2, "c": 2 / 3}  # P 2/3 R 2/4; P 1/2 R 1/2; P 1/2 R 1
    assert metrics["weighted_f1"] == pytest.approx((4 * f1["a"] + 2 * f1["b"] + 1 * f1["c"]) / 7)
    assert metrics["macro_f1"] == pytest.approx(sum(f1.values()) / 3)
    assert metrics["accuracy"] == pytest.approx(4 / 7)


def test_regression_metrics() -> None:
    metrics = regression_metrics([1.0, 2.0, 3.0, 4.0], [1.0, 2.5, 2.9, 4.2])
    assert metrics["pearson"] == pytest.approx(0.97, abs=0.01)
    assert metrics["spearman"] == pytest.approx(1.0)


def test_mse_squares_errors() -> None:
    """Errors of 0 and 1 are their own squares: an absolute error would pass on them, not on 2 and 0.5."""
    assert regression_metrics([1.0, 2.0, 3.0], [3.0, 2.5, 3.0])["mse"] == pytest.approx((2.0**2 + 0.5**2) / 3)


def test_correlations_of_scores_that_never_vary_are_undefined_and_say_why() -> None:
    assert undefined_correlation([1.0, 2.0, 3.0], [1.0, 2.5, 2.9]) is None
    assert undefined_correlation([1.0, 2.0, 3.0], [2.5, 2.5, 2.5]) == "every prediction is 2.5"
    assert undefined_correlation([3.0, 3.0], [1.0, 2.0]) == "every gold score is 3"
    assert undefined_correlation([3.0], [1.0]) == "fewer than two examples"
    assert regression_metrics([1.0, 2.0, 3.0], [2.0, 2.0, 2.0]) == {"pearson": 0.0, "spearman": 0.0, "mse": 2 / 3}


def test_an_undefined_correlation_is_a_warning_in_the_log_and_the_reports(tiny_project: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A regression adapter that answers one score for every input (a collapsed head) scored pearson 0.0, which
    read as measured: tables keep the 0, and the log, the task's report and the summary say it is undefined."""
    from conftest import trained_briefly

    from mtlora.tasks.regression import RegressionTask

    trained_briefly(tiny_project, ["similarity"])
    monkeypatch.setattr(RegressionTask, "decode", lambda self, outputs, encoded, examples:
                        [{"score": 2.5, "truncated": False} for _ in examples])
    said: list[str] = []
    (report,) = mtlora.evaluate(tiny_project, "similarity", log=said.append)
    note = "pearson and spearman are undefined (every prediction is 2.5); reported as 0"
    assert report.metrics["lora"]["pearson"] == report.metrics["base"]["spearman"] == 0.0
    assert report.caveats == {"base": [note], "lora": [note]}
    assert f"[similarity] warning: LoRA adapter: {note}" in said, said
    folder = load_config(tiny_project).reports
    assert json.loads((folder / "tasks" / "validation" / "similarity.json").read_text())["caveats"]["lora"] == [note]
    assert f"**LoRA adapter**: {note}.\n" in (folder / "summary.md").read_text()


def test_squad_metrics_follow_the_official_normalization() -> None:
    metrics = squad_metrics(["The Eiffel Tower!", "in paris"], [["eiffel tower"], ["Paris, France", "paris"]])
    assert metrics["exact_match"] == pytest.approx(100.0 * 0.5)
    assert metrics["f1"] == pytest.approx(100.0 * (1.0 + 2 * 0.5 * 1.0 / 1.5) / 2)


def test_rouge_lsum_scores_a_generated_summary_sentence_by_sentence() -> None:
    """Generated text comes on one line: split into its sentences, each keeps its own longest common
    subsequence with the reference sentence (Lsum 100 here), which one long line would not."""
    reference = "the cat sat on the mat and the dog ran in the park ."
    generated = "the dog ran in the park . the cat sat on the mat and ."
    scores = rouge([generated], [reference])
    assert scores["rougeLsum"] == pytest.approx(100.0)
    assert scores["rougeL"] < 80.0


def test_squad_normalization_drops_case_punctuation_and_each_article_and_squeezes_space() -> None:
    # Punctuation goes without leaving a space (the official script): "o'neill" is "oneill". Only whole
    # words are articles: "another" and "theory" keep their letters.
    assert normalize_answer("The  O'Neill,\tan apple; A theory -- another!") == "oneill apple theory another"
    assert squad_metrics(["an  apple"], [["Apple."]])["exact_match"] == 100.0


def test_squad_scores_each_question_against_its_best_reference() -> None:
    """SQuAD lists several annotators' answers; the first, or their mean, would mark right answers wrong."""
    metrics = squad_metrics(["denver broncos"], [["Broncos", "the Denver Broncos", "Denver"]])
    assert metrics == {"exact_match": 100.0, "f1": 100.0}
    partial = squad_metrics(["the denver team"], [["Carolina", "Denver Broncos", "Denver"]])
    assert partial["exact_match"] == 0.0
    assert partial["f1"] == pytest.approx(100.0 * 2 * (1 / 2) * 1 / (1 / 2 + 1))  # "denver": P 1/2, R 1


def test_rouge_is_the_stemmed_f_measure() -> None:
    """Papers report ROUGE's F-measure with Porter stemming: "cats"/"cat" and "running"/"run" match."""
    # Stemmed: the cat were run / the cat was run quick today, 3 words shared: P 3/4, R 3/6.
    scores = rouge(["the cats were running"], ["the cat was running quickly today"])
    assert scores["rouge1"] == pytest.approx(100.0 * 2 * (3 / 4) * (3 / 6) / (3 / 4 + 3 / 6))
    assert scores["rougeL"] == pytest.approx(60.0)


def test_rouge_lsum_keeps_a_text_s_own_lines_as_its_sentences() -> None:
    """CNN/DailyMail highlights come one per line; splitting them again after "dr." and "u.s." would
    score the reordered halves of a line as sentences of their own (Lsum 100 here)."""
    reference = "dr. smith met the u.s. team\nthe talks ended"
    generated = "the u.s. team met dr. smith\nthe talks ended"
    assert rouge([generated], [reference])["rougeLsum"] == pytest.approx(70.0)


def test_degenerate_shares_count_empty_outputs_and_whole_word_copies() -> None:
    outputs = ["", "The.", "cat SAT", "at sat", "sat cat", "a new idea"]
    shares = degenerate_shares(outputs, ["the cat sat on the mat"] * len(outputs))
    # Empty: "" and "The." (an article and a full stop). Copy: "cat SAT" only; "at sat" is inside the
    # source's letters but not its words, and "sat cat" is out of order.
    assert shares == {"empty_share": pytest.approx(2 / 6), "copy_share": pytest.approx(1 / 6)}


def test_evaluation_reports_lora_next_to_its_baselines(trained_project: Path) -> None:
    said: list[str] = []
    reports = {r.task: r for r in mtlora.evaluate(trained_project, log=said.append)}
    assert set(reports) == {"sentiment", "support", "paraphrase", "similarity", "qa"}
    # The tiny project validates on its training files: every score is of inputs the adapter trained on.
    assert reports["sentiment"].seen_in_training == reports["sentiment"].examples == 16
    assert ("[sentiment] warning: 16 of 16 validation inputs are also training inputs, so the scores tell what "
            "the adapter remembers as much as what it learned; read validation from rows the training data lacks, "
            "or use data.holdout, which keeps each input on one side") in said
    for report in reports.values():
        assert set(report.metrics) == {"base", "head_only", "lora"}
        assert report.parameters["lora"]["trainable"] > report.parameters["head_only"]["trainable"] > 0
    assert set(reports["sentiment"].metrics["lora"]) >= {"accuracy", "macro_f1", "weighted_f1"}
    assert reports["sentiment"].metrics["lora"]["accuracy"] == 1.0  # 16 memorised training sentences
    assert set(reports["similarity"].metrics["lora"]) >= {"pearson", "spearman"}
    assert set(reports["qa"].metrics["lora"]) >= {"exact_match", "f1"}
    assert reports["sentiment"].confusion is not None and sum(map(sum, reports["sentiment"].confusion)) == 16
    # The plot titled "LoRA adapter" counts the adapter's answers, every one right, not a baseline's.
    assert reports["sentiment"].confusion == [[8, 0], [0, 8]]
    assert reports["sentiment"].metrics["base"]["accuracy"] < 1.0

    folder = load_config(trained_project).reports
    summary = (folder / "summary.md").read_text()
    assert ("### sentiment (validation, 16 examples)\n\n**16 of these 16 inputs are also training inputs**: the "
            "scores tell what the adapter remembers as much as what it learned.\n") in summary
    assert "| sentiment | classification |" in summary and "head-only" in summary
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in summary.splitlines()
            if line.startswith("| ") and " | validation | " in line}
    assert rows["qa"][4] == "f1 (0-100)" and rows["sentiment"][4] == "accuracy"
    # A 0-100 metric has one decimal, a 0-1 one three: an EM of 1.000 (1%) read as the whole.
    assert all(re.fullmatch(r"\*{0,2}[-+]?\d+\.\d\*{0,2}", cell) for cell in rows["qa"][5:9] if cell != "–"), rows["qa"]
    assert all(re.fullmatch(r"\*{0,2}[-+]?\d\.\d{3}\*{0,2}", c) for c in rows["sentiment"][5:9]), rows["sentiment"]
    # Every metric in percent is marked in the all-metrics tables too: an EM of 3.000 is not three questions.
    assert "| variant | exact_match (0-100) | f1 (0-100) |" in summary
    for task, cells in rows.items():  # only the best of base, head-only and LoRA is bold
        values = [float(c.strip("*")) if c != "–" else None for c in cells[5:8]]
        best = max(v for v in values if v is not None)
        assert [c.startswith("**") for c in cells[5:8]] == [v == best for v in values], (task, cells)
    assert (folder / "tasks" / "validation" / "sentiment_confusion.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((folder / "tasks" / "validation" / "similarity.json").read_text())
    assert saved["metrics"]["lora"]["pearson"] == reports["similarity"].metrics["lora"]["pearson"]
    manifest = mtlora.show_adapter(trained_project, "sentiment")
    assert manifest.metrics["validation"]["lora"]["accuracy"] == 1.0


def test_the_holdout_is_offered_only_where_it_would_help() -> None:
    from mtlora.evaluation.evaluate import seen_in_training_warning

    assert seen_in_training_warning(3, 10, "validation").endswith(
        "read validation from rows the training data lacks, or use data.holdout, which keeps each input on one side")
    assert seen_in_training_warning(3, 10, "test").endswith("read test from rows the training data lacks")


def test_a_label_holding_a_bar_stays_in_its_column_of_the_summary() -> None:
    from mtlora.evaluation.report import markdown_summary

    report = TaskReport(task="t", kind="classification", split="validation", examples=2, primary_metric="accuracy",
                        metrics={"lora": {"accuracy": 1.0, "f1[yes|maybe]": 1.0}},
                        parameters={"lora": {"trainable": 10, "total": 100}})
    header = next(line for line in markdown_summary([report]).splitlines() if line.startswith("| variant |"))
    assert header == "| variant | accuracy | f1[yes\\|maybe] |"


def test_a_summary_row_shows_the_signed_gain_and_the_trainable_and_stored_parameters() -> None:
    from mtlora.evaluation.report import markdown_summary

    def row(task: str, head_only: float, lora: float, counts: dict[str, int]) -> TaskReport:
        return TaskReport(task=task, kind="classification", split="validation", examples=2, primary_metric="accuracy",
                          metrics={"base": {"accuracy": 0.5}, "head_only": {"accuracy": head_only},
                                   "lora": {"accuracy": lora}},
                          parameters={"lora": counts, "head_only": {"trainable": 7, "total": 100}})

    reports = [row("worse", 0.875, 0.75, {"trainable": 1_234_567, "total": 100_000_000, "stored": 34_567}),
               row("better", 0.75, 0.875, {"trainable": 4_321, "total": 100_000})]  # from before saved ranks
    cells = {line.split(" | ")[0].strip("| "): line.strip("| ").split(" | ")
             for line in markdown_summary(reports).splitlines() if " | validation | " in line}
    assert cells["worse"][5:] == ["0.500", "**0.875**", "0.750", "-0.125", "1,234,567", "1.23%", "34,567"]
    assert cells["better"][5:] == ["0.500", "0.750", "**0.875**", "+0.125", "4,321", "4.32%", "4,321"]


def test_a_sample_is_cut_to_120_characters_in_the_summary() -> None:
    from mtlora.evaluation.report import markdown_summary, sample_cell

    fits, long = "a" * 120, "b" * 121
    assert (sample_cell(fits), sample_cell(long)) == (fits, "b" * 119 + "…")
    report = TaskReport(task="t", kind="classification", split="validation", examples=2, primary_metric="accuracy",
                        metrics={"lora": {"accuracy": 1.0}}, parameters={"lora": {"trainable": 10, "total": 100}},
                        samples=[{"text": fits, "expected": "x", "lora": "x"}, {"text": long, "expected": "x",
                                                                                "lora": "x"}])
    summary = markdown_summary([report])
    assert f"| {fits} | x | x |" in summary and f"| {'b' * 119}… | x | x |" in summary


def report_of(task: str, split: str = "validation") -> TaskReport:
    return TaskReport(task=task, kind="generation", split=split, examples=2, primary_metric="rougeL",
                      metrics={"lora": {"rougeL": 50.0}}, parameters={"lora": {"trainable": 10, "total": 100}})


def test_a_task_named_like_a_project_wide_report_or_another_split_keeps_its_own(tmp_path: Path) -> None:
    """Beside summary.json and routing.json, tasks named summary and routing lost their reports to them; and
    task `a` on the test split wrote where task `a.test` did on validation."""
    report = report_of

    write_reports([report("summary")], tmp_path)
    write_reports([report("routing")], tmp_path)
    write_routing_reports([RoutingReport(router="keywords", features=None, split="validation", examples=2,
                                         accuracy=1.0, unroutable=0.0, shape_share=0.0, per_task={"summary": 1.0},
                                         labels=["summary", "(unroutable)"], confusion=[[2, 0]], ms_per_input=0.1)],
                          tmp_path)
    write_reports([report("sentiment"), report("a.test"), report("a", "test")], tmp_path)
    assert [(r["task"], r["split"]) for r in json.loads((tmp_path / "summary.json").read_text())] == [
        ("a", "test"), ("a.test", "validation"), ("routing", "validation"), ("sentiment", "validation"),
        ("summary", "validation")]
    assert json.loads((tmp_path / "tasks" / "validation" / "summary.json").read_text())["task"] == "summary"
    assert json.loads((tmp_path / "routing.json").read_text())[0]["router"] == "keywords"


def routing_row(router: str, accuracy: float, examples: int = 2, version: str = "1") -> RoutingReport:
    return RoutingReport(router=router, features=None, split="validation", examples=examples, accuracy=accuracy,
                         unroutable=0.0, shape_share=0.0, per_task={"a": accuracy}, labels=["a", "(unroutable)"],
                         confusion=[[2, 0]], ms_per_input=0.1, adapters={"a": version})


def test_a_later_routing_run_keeps_the_other_routers_of_the_same_mix_but_not_a_gone_one(tmp_path: Path) -> None:
    """`evaluate --router keywords` after `--router all` left a table of keywords alone (and the others'
    plots beside it); a removed learned router's row and plot stayed."""
    write_routing_reports([routing_row("keywords", 0.5), routing_row("semantic", 0.7), routing_row("learned", 0.9)],
                          tmp_path)
    write_routing_reports([routing_row("keywords", 0.6)], tmp_path, gone=["learned"])
    rows = json.loads((tmp_path / "routing.json").read_text())
    assert [(r["router"], r["accuracy"]) for r in rows] == [("keywords", 0.6), ("semantic", 0.7)]
    assert "**0.700**" in (tmp_path / "routing.md").read_text()
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["routing_keywords_confusion.png",
                                                              "routing_semantic_confusion.png"]
    write_routing_reports([routing_row("keywords", 0.6, examples=3)], tmp_path)  # another mix: not comparable
    assert [r["router"] for r in json.loads((tmp_path / "routing.json").read_text())] == ["keywords"]
    # The same mix, routed among another save of an adapter: the earlier rows measured the one before.
    write_routing_reports([routing_row("semantic", 0.7, examples=3)], tmp_path)
    write_routing_reports([routing_row("keywords", 0.6, examples=3, version="2")], tmp_path)
    assert [r["router"] for r in json.loads((tmp_path / "routing.json").read_text())] == ["keywords"]


def test_the_summary_leaves_out_the_reports_of_adapters_no_longer_in_the_registry(tmp_path: Path) -> None:
    write_reports([report_of("kept"), report_of("removed")], tmp_path)
    write_reports([report_of("kept")], tmp_path, adapters={"kept": None})
    assert [r["task"] for r in json.loads((tmp_path / "summary.json").read_text())] == ["kept"]
    assert "removed" not in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "tasks" / "validation" / "removed.json").is_file()  # its files stay


def test_reports_an_earlier_version_wrote_move_to_their_place_and_stay_in_the_summary(tmp_path: Path) -> None:
    earlier = {"sentiment.json": report_of("sentiment"), "sentiment.test.json": report_of("sentiment", "test"),
                   "tasks/qa.json": report_of("qa"), "tasks/qa.test.json": report_of("qa", "test")}
    for name, report in earlier.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(json.dumps(report.to_dict()))
    (tmp_path / "sentiment_confusion.png").write_bytes(b"png")
    write_reports([report_of("qa", "test")], tmp_path)  # a newer report of one of them
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(r["task"], r["split"]) for r in summary] == [("qa", "validation"), ("qa", "test"),
                                                          ("sentiment", "validation"), ("sentiment", "test")]
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == [
        "summary.json", "summary.md", "tasks/test/qa.json", "tasks/test/sentiment.json",
        "tasks/validation/qa.json", "tasks/validation/sentiment.json", "tasks/validation/sentiment_confusion.png"]


@pytest.mark.parametrize("labels", [2, 11])
def test_a_confusion_matrix_title_stays_inside_the_image(labels: int) -> None:
    title = "sst2_sentiment_binary: LoRA adapter, validation (accuracy 0.913)"  # ran off a two-label image
    figure = confusion_figure([f"label {i}" for i in range(labels)], [[1] * labels] * labels, title)
    figure.canvas.draw()
    shown = figure.axes[0].title.get_window_extent(figure.canvas.get_renderer())
    assert 0 <= shown.x0 < shown.x1 <= figure.bbox.width and shown.y1 <= figure.bbox.height
    assert " ".join(figure.axes[0].title.get_text().split("\n")) == title


def test_predictions_have_the_kind_specific_shape(trained_project: Path) -> None:
    sentiment = mtlora.predict(trained_project, "loved this great movie", task="sentiment")
    assert sentiment["label"] in ("negative", "positive") and 0.5 <= sentiment["confidence"] <= 1.0
    assert set(sentiment["probabilities"]) == {"negative", "positive"}
    similarity = mtlora.predict(trained_project, ("the dog sat", "the dog sat"), task="similarity")
    assert isinstance(similarity["score"], float)
    question = {"question": "who sat on the mat", "context": "the cat sat on the mat"}
    answer = mtlora.predict(trained_project, question, task="qa")
    assert answer["answer"] in "the cat sat on the mat" and answer["answer"]


def test_wrong_input_shapes_are_explained(trained_project: Path) -> None:
    with pytest.raises(mtlora.InputError, match=r"takes a text pair, but a text was given \(give it a text pair\)"):
        mtlora.predict(trained_project, "only one text", task="paraphrase")
    with pytest.raises(mtlora.InputError, match="takes a question with a context, but a text was given"):
        mtlora.predict(trained_project, "who?", task="qa")
    with pytest.raises(mtlora.InputError, match="empty"):
        mtlora.predict(trained_project, "  ", task="sentiment")


def test_an_adapter_is_scored_only_with_the_kind_and_labels_it_was_trained_with(trained_project: Path) -> None:
    """The project's gold labels against the adapter's predictions: swapped labels would score nonsense."""
    config = yaml.safe_load(trained_project.read_text())
    changed = trained_project.with_name("changed.yaml")  # beside the original: the same registry and data
    sentiment = next(t for t in config["tasks"] if t["name"] == "sentiment")
    sentiment["data"]["labels"] = ["positive", "negative"]
    changed.write_text(yaml.safe_dump(config))
    with pytest.raises(mtlora.RegistryError, match=r"adapter 'sentiment' was trained with labels \['negative', "
                                                    r"'positive'\], but the project file now gives \['positive'"):
        mtlora.evaluate(changed, "sentiment", log=lambda _: None)
    sentiment["data"]["labels"], sentiment["kind"] = ["negative", "positive"], "instruction_classification"
    changed.write_text(yaml.safe_dump(config))
    with pytest.raises(mtlora.RegistryError, match=r"trained as classification, but the project file now says "
                                                    r"kind: instruction_classification; retrain it"):
        mtlora.evaluate(changed, "sentiment", log=lambda _: None)
    # Labels learned from the data in another order than the adapter's (numbers sorted as numbers since
    # 2026-11-26): the project file gave none, so the fix is to list them, not to "restore" them.
    from mtlora.data import load_task_data
    from mtlora.evaluation.evaluate import _check_trained_as_configured

    del sentiment["data"]["labels"]
    sentiment["kind"] = "classification"
    changed.write_text(yaml.safe_dump(config))
    project = load_config(changed)
    data = load_task_data(project, project.task("sentiment"))
    manifest = mtlora.show_adapter(changed, "sentiment")
    reordered = manifest.model_copy(update={"labels": list(reversed(manifest.labels))})
    with pytest.raises(mtlora.RegistryError, match=r"but the training data now gives \(sorted\) \['negative', "
                                                    r"'positive'\]; list them in data.labels in that order, or "
                                                    r"retrain it with `mtlora train PROJECT.yaml --task sentiment`"):
        _check_trained_as_configured(project.task("sentiment"), reordered, data, log=lambda _: None)


def test_evaluating_every_task_skips_the_untrained_ones_and_says_so(tiny_project: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(mtlora.RegistryError, match="no task of the project is trained yet"):
        mtlora.evaluate(tiny_project, log=lambda _: None)
    mtlora.train(tiny_project, "sentiment", baseline=False, progress=False, log=lambda _: None)
    said: list[str] = []
    reports = mtlora.evaluate(tiny_project, log=said.append)
    assert [r.task for r in reports] == ["sentiment"]
    assert "not trained yet, so not evaluated: support, paraphrase, similarity, qa" in said[0], said
    assert (load_config(tiny_project).reports / "tasks" / "validation" / "sentiment.json").is_file()
    # Every training input is a training input: the train split is not counted, and its report says so.
    monkeypatch.setattr(TaskData, "inputs_seen_in_training", lambda *args: pytest.fail("counted on train"))
    (train,) = mtlora.evaluate(tiny_project, "sentiment", split="train", log=lambda _: None)  # beside validation's
    reports = load_config(tiny_project).reports
    assert train.seen_in_training is None
    assert json.loads((reports / "tasks" / "train" / "sentiment.json").read_text())["seen_in_training"] is None
    assert (reports / "tasks" / "validation" / "sentiment.json").is_file()
    assert (reports / "tasks" / "train" / "sentiment_confusion.png").is_file()
    summary = (reports / "summary.md").read_text()
    assert all(f"| sentiment | classification | {split} |" in summary for split in ("validation", "train"))
    assert all(f"`tasks/{split}/sentiment_confusion.png`" in summary for split in ("validation", "train"))
    with pytest.raises(mtlora.AdapterNotFoundError, match=r"No adapter 'support'.*train PROJECT.yaml --task support"):
        mtlora.evaluate(tiny_project, "support", log=lambda _: None)


def test_a_baseline_trained_on_another_backbone_is_left_out(tiny_project: Path, tiny_bert: Path,
                                                            other_tiny_bert: Path) -> None:
    quiet = {"progress": False, "log": lambda _: None}
    mtlora.train(tiny_project, "sentiment", **quiet)
    tiny_project.write_text(tiny_project.read_text().replace(str(tiny_bert), str(other_tiny_bert)))
    mtlora.train(tiny_project, "sentiment", baseline=False, **quiet)
    said: list[str] = []
    (report,) = mtlora.evaluate(tiny_project, "sentiment", log=said.append)
    assert set(report.metrics) == {"base", "lora"}
    assert any("baseline left out: it was trained on another backbone" in line for line in said), said


def test_a_baseline_trained_with_other_training_settings_is_left_out(tiny_project: Path) -> None:
    """The adapter retrained for other epochs at another learning rate without its baseline: the old baseline
    trained on the same rows, but comparing the two would credit LoRA (or blame it) for the settings."""
    quiet = {"progress": False, "log": lambda _: None}
    mtlora.train(tiny_project, "sentiment", **quiet)
    # How often to checkpoint or log changes no training step: the baseline still compares.
    tiny_project.write_text(tiny_project.read_text().replace("checkpoint_every: 3", "checkpoint_every: 5"))
    mtlora.train(tiny_project, "sentiment", baseline=False, **quiet)
    (report,) = mtlora.evaluate(tiny_project, "sentiment", log=lambda _: None)
    assert set(report.metrics) == {"base", "head_only", "lora"}
    text = tiny_project.read_text()
    changed = text.replace("epochs: 12", "epochs: 6").replace("lr: 0.02", "lr: 0.01")
    assert "epochs: 6\n" in changed and "lr: 0.01\n" in changed
    tiny_project.write_text(changed)
    mtlora.train(tiny_project, "sentiment", baseline=False, **quiet)
    said: list[str] = []
    (report,) = mtlora.evaluate(tiny_project, "sentiment", log=said.append)
    assert set(report.metrics) == {"base", "lora"}
    assert any("head-only baseline left out: it was trained on other training settings (epochs 12.0 against 6.0)"
               in line for line in said), said


def test_a_baseline_trained_on_other_data_is_left_out(tiny_project: Path) -> None:
    """Retraining the adapter on other data without its baseline must not compare it with the old one."""
    quiet = {"progress": False, "log": lambda _: None}
    mtlora.train(tiny_project, "sentiment", **quiet)
    text = tiny_project.read_text()
    # Another validation file changes nothing the two trained on: the baseline still compares.
    changed = text.replace("validation: sentiment.jsonl", "validation: {path: sentiment.jsonl, limit: 8}", 1)
    assert changed != text
    tiny_project.write_text(changed)
    mtlora.train(tiny_project, "sentiment", baseline=False, **quiet)
    (report,) = mtlora.evaluate(tiny_project, "sentiment", log=lambda _: None)
    assert set(report.metrics) == {"base", "head_only", "lora"}
    # The same settings over a training file edited in place: other data all the same.
    data = tiny_project.parent / "data" / "sentiment.jsonl"
    rows = data.read_text().splitlines(keepends=True)
    data.write_text("".join(rows[: len(rows) // 2]))
    mtlora.train(tiny_project, "sentiment", baseline=False, **quiet)
    said: list[str] = []
    (report,) = mtlora.evaluate(tiny_project, "sentiment", log=said.append)
    assert set(report.metrics) == {"base", "lora"}
    assert any("head-only baseline left out" in line for line in said), said
    # And the adapter itself, trained on the edited file, is evaluated without a word about its data.
    assert not any("trained on other examples" in line for line in said), said
    data.write_text("".join(rows))
    said.clear()
    mtlora.evaluate(tiny_project, "sentiment", log=said.append)
    assert any("warning: the adapter was trained on other examples than" in line for line in said), said


def test_the_summary_leaves_out_a_report_of_an_adapter_trained_again_since(tiny_project: Path) -> None:
    """A report scored an adapter that training has since replaced: the summary showed its scores beside the
    others' as the scores of the adapter there now (which `adapters list` called "not evaluated yet")."""
    quiet = {"progress": False, "log": lambda _: None}
    silent = {"log": quiet["log"]}
    config = yaml.safe_load(tiny_project.read_text())
    config["tasks"] = [task for task in config["tasks"] if task["name"] in ("sentiment", "support")]
    config["defaults"]["training"] |= {"max_steps": 3, "baseline": False}
    tiny_project.write_text(yaml.safe_dump(config))
    mtlora.train(tiny_project, **quiet)
    mtlora.evaluate(tiny_project, **silent)
    reports = load_config(tiny_project).reports
    config["tasks"][1]["training"] = {"max_steps": 2}  # support again, as another adapter
    tiny_project.write_text(yaml.safe_dump(config))
    mtlora.train(tiny_project, "support", **quiet)
    mtlora.evaluate(tiny_project, "sentiment", **silent)
    assert [r["task"] for r in json.loads((reports / "summary.json").read_text())] == ["sentiment"]
    summary = (reports / "summary.md").read_text()
    assert "| support |" not in summary and "### support" not in summary
    assert "Left out: support (validation), scored before the adapter was trained again" in summary
    # Scored again, it is back; and evaluation's own manifest rewrite does not make a report stale.
    mtlora.evaluate(tiny_project, "support", **silent)
    mtlora.evaluate(tiny_project, "sentiment", **silent)
    assert [r["task"] for r in json.loads((reports / "summary.json").read_text())] == ["sentiment", "support"]
    assert "Left out" not in (reports / "summary.md").read_text()


def test_evaluating_a_split_some_tasks_lack_scores_the_tasks_that_have_it(trained_project: Path) -> None:
    """`evaluate --split test` stopped at the first task without test data, before the tasks that have it."""
    project = load_config(trained_project)
    sentiment = project.task("sentiment")
    test_data = sentiment.data.model_copy(update={"test": sentiment.data.validation})
    tested = sentiment.model_copy(update={"data": test_data})
    project = project.model_copy(update={"tasks": [t if t.name != "sentiment" else tested for t in project.tasks]})
    said: list[str] = []
    reports = mtlora.evaluate(project, split="test", write=False, log=said.append)
    assert [r.task for r in reports] == ["sentiment"]
    others = [t.name for t in project.tasks if t.name != "sentiment"]
    assert f"no test data, so not evaluated: {', '.join(others)}" in said
    with pytest.raises(mtlora.DataError, match=r"task .support.: has no test data \(set data\.test in the project"):
        mtlora.evaluate(project, "support", split="test", write=False, log=said.append)
