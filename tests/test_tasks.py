"""What the task kinds' own encode and decode mean, apart from the encoder: the engine is compared with
`load_predictor` elsewhere, but both sides share these functions, so those comparisons cannot see them."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from transformers import BatchEncoding

from mtlora.backbone import load_tokenizer
from mtlora.errors import MtloraError
from mtlora.tasks.base import Encoded
from mtlora.tasks.extractive_qa import MAX_ANSWER_TOKENS, ExtractiveQATask
from mtlora.tasks.regression import RegressionTask

CONTEXT = ("the cat sat on the mat and the dog sat on the rug while paris is the capital of france and a city "
           "on a river where the login page asks for a password")
QUESTION = "what is the capital of france"


def windows(tiny_bert: Path, answer: str, max_length: int = 24, doc_stride: int = 6) -> tuple[Encoded, list]:
    example = {"question": QUESTION, "context": CONTEXT,
               "answers": [{"text": answer, "answer_start": CONTEXT.index(answer)}]}
    tokenizer = load_tokenizer(str(tiny_bert))
    return ExtractiveQATask().encode(tokenizer, [example], max_length, doc_stride, with_targets=True), [example]


def test_qa_windows_overlap_by_the_stride_and_target_the_answer_where_they_hold_it(tiny_bert: Path) -> None:
    encoded, _ = windows(tiny_bert, "paris")
    assert len(encoded) >= 3
    spans = [[o for o in extra["offsets"] if o is not None] for extra in encoded.extras]
    for first, second in itertools.pairwise(spans):
        assert first[-6:] == second[:6]  # doc_stride tokens of context shared by neighbouring windows
    holding = 0
    for feature, extra in enumerate(encoded.extras):
        start, end = encoded.features["start_positions"][feature], encoded.features["end_positions"][feature]
        offsets = extra["offsets"]
        if (start, end) == (0, 0):
            assert not any(o is not None and o[0] <= CONTEXT.index("paris") < o[1] for o in offsets)
            continue
        holding += 1
        assert CONTEXT[offsets[start][0]:offsets[end][1]] == "paris"
    assert holding >= 1



def test_qa_targets_cover_the_answer_exactly_at_a_windows_edges_and_inside_a_word(tiny_bert: Path) -> None:
    """An answer that starts on a window's first context token or ends on its last is in that window, and
    one that is part of a word ("cat" of "cats": cat ##s) takes its own token, not its neighbour."""
    tokenizer = load_tokenizer(str(tiny_bert))
    kind = ExtractiveQATask()

    def target(context: str, start: int, end: int, feature: int) -> str:
        example = {"question": QUESTION, "context": context,
                   "answers": [{"text": context[start:end], "answer_start": start}]}
        encoded = kind.encode(tokenizer, [example], 24, 6, with_targets=True)
        first, last = encoded.features["start_positions"][feature], encoded.features["end_positions"][feature]
        offsets = encoded.extras[feature]["offsets"]
        return context[offsets[first][0]:offsets[last][1]] if (first, last) != (0, 0) else ""

    encoded = kind.encode(tokenizer, [{"question": QUESTION, "context": CONTEXT}], 24, 6, with_targets=False)
    for feature, extra in enumerate(encoded.extras[:3]):
        spans = [o for o in extra["offsets"] if o is not None]
        for start, end in (spans[0], spans[-1], (spans[0][0], spans[-1][1])):
            assert target(CONTEXT, start, end, feature) == CONTEXT[start:end], (feature, start, end)
    cats = "the cats sat on the mat"
    assert target(cats, 4, 7, 0) == "cat"  # cat|s: the ##s token starts where the answer ends
    assert target(cats, 7, 8, 0) == "s"  # the cat token ends where the answer starts


def test_a_question_that_exactly_fills_a_windows_room_is_kept_whole_and_one_word_more_is_cut(tiny_bert: Path) -> None:
    """Each window gives the question max_length less the stride, [CLS] [SEP] [SEP] and one context token
    more than the stride: 24 - 6 - 3 - 1 = 14 tokens here. A question that fits is not called truncated."""
    from mtlora.tasks.extractive_qa import _questions_that_fit

    tokenizer = load_tokenizer(str(tiny_bert))
    words = ["what", "is", "the", "capital", "of", "france", "paris", "city"] * 2
    fits, over = " ".join(words[:14]), " ".join(words[:15])
    questions, cut = _questions_that_fit(tokenizer, [{"question": fits}, {"question": " " + over}], 24, 6)
    assert questions == [fits, fits] and cut == [False, True]
    examples = [{"question": q, "context": CONTEXT} for q in (fits, over)]
    assert ExtractiveQATask().encode(tokenizer, examples, 24, 6, with_targets=False).truncated == [False, True]


class FirstWindowsOnly:
    """A tokenizer as tokenizers 0.23.2 behaves (huggingface/tokenizers#2091): a long context's later
    windows are dropped."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)

    def __call__(self, *args: Any, **kwargs: Any) -> BatchEncoding:
        tokens = self.tokenizer(*args, **kwargs)
        return BatchEncoding({key: value[:2] for key, value in tokens.items()}, encoding=tokens.encodings[:2])


def test_a_tokenizer_that_drops_later_windows_is_refused_before_it_cuts_contexts(tiny_bert: Path) -> None:
    example = {"question": QUESTION, "context": CONTEXT, "answers": [{"text": "password",
                                                                      "answer_start": CONTEXT.index("password")}]}
    broken = FirstWindowsOnly(load_tokenizer(str(tiny_bert)))
    refused = r"windows of a long context stop at character \d+ of 79, .* pip install -U 'tokenizers!="
    with pytest.raises(MtloraError, match=refused):
        ExtractiveQATask().encode(broken, [example], 24, 6, with_targets=True)

def qa_outputs(encoded: Encoded, scores: dict[tuple[int, int, int], float]) -> list[dict[str, np.ndarray]]:
    """Logits that give span (start, end) of window w the score start + end logit = `scores`."""
    outputs = []
    for feature in range(len(encoded)):
        length = len(encoded.features["input_ids"][feature])
        start, end = np.full(length, -10.0), np.full(length, -10.0)
        for (window, s, e), score in scores.items():
            if window == feature:
                start[s], end[e] = score / 2, score / 2
        outputs.append({"start_logits": start, "end_logits": end})
    return outputs


def context_token(encoded: Encoded, feature: int, word: str) -> int:
    offsets = encoded.extras[feature]["offsets"]
    return next(i for i, o in enumerate(offsets) if o is not None and CONTEXT[o[0]:o[1]] == word)


def test_qa_answer_comes_from_the_window_that_scores_it_best(tiny_bert: Path) -> None:
    encoded, examples = windows(tiny_bert, "paris")
    last = len(encoded) - 1
    cat, rug = context_token(encoded, 0, "cat"), context_token(encoded, last, "password")
    outputs = qa_outputs(encoded, {(0, cat, cat): 4.0, (last, rug, rug): 6.0})
    answer = ExtractiveQATask().decode(outputs, encoded, examples)[0]
    assert answer["answer"] == "password" and CONTEXT[answer["start"]:answer["end"]] == "password"
    assert 0.5 < answer["confidence"] <= 1.0


def test_qa_answers_leave_out_the_space_a_tokenizer_puts_in_a_words_offsets(tiny_bert: Path) -> None:
    """DeBERTa's and ModernBERT's tokenizers give ' paris' the offsets of the space before it too."""
    encoded, examples = windows(tiny_bert, "paris", max_length=128, doc_stride=32)
    for extras in encoded.extras:
        extras["offsets"] = [o if o is None or o[0] == 0 else (o[0] - 1, o[1]) for o in extras["offsets"]]
    paris = context_token(encoded, 0, " paris")
    answer = ExtractiveQATask().decode(qa_outputs(encoded, {(0, paris, paris): 9.0}), encoded, examples)[0]
    assert (answer["answer"], answer["start"], answer["end"]) == ("paris", CONTEXT.index("paris"),
                                                                  CONTEXT.index("paris") + 5)
    # A token of the space alone (SentencePiece's lone '▁') is passed over for the best span that has text.
    first, cat = context_token(encoded, 0, "the"), context_token(encoded, 0, " cat")
    encoded.extras[0]["offsets"][first] = (3, 4)  # the space between "the" and "cat"
    answer = ExtractiveQATask().decode(qa_outputs(encoded, {(0, first, first): 9.0, (0, cat, cat): 4.0}),
                                       encoded, examples)[0]
    assert (answer["answer"], answer["start"], answer["end"]) == ("cat", 4, 7)


def test_qa_never_answers_with_a_span_longer_than_the_cap(tiny_bert: Path) -> None:
    encoded, examples = windows(tiny_bert, "paris", max_length=128, doc_stride=32)
    assert len(encoded) == 1
    words = [i for i, o in enumerate(encoded.extras[0]["offsets"]) if o is not None]
    assert len(words) > MAX_ANSWER_TOKENS
    # The short span ends before the long one starts, so the two mix into no third span within the cap.
    long_span = (0, words[1], words[1 + MAX_ANSWER_TOKENS])  # one token over the cap
    answer = ExtractiveQATask().decode(qa_outputs(encoded, {long_span: 9.0, (0, words[0], words[0]): 1.0}),
                                       encoded, examples)[0]
    assert answer["answer"] == "the" and answer["start"] == 0


@pytest.mark.parametrize(("logit", "score"), [(0.0, 2.5), (1.0, 4.0), (-2.0, -0.5)])
def test_regression_scores_come_back_on_the_training_scale(logit: float, score: float) -> None:
    kind = RegressionTask()
    kind.fit([{"label": 1.0}, {"label": 4.0}])  # mean 2.5, spread 1.5
    encoded = Encoded(features={}, example_index=[0], truncated=[False])
    [prediction] = kind.decode([{"logits": np.array([logit])}], encoded, [{}])
    assert prediction["score"] == pytest.approx(score)
    assert kind.target({"label": score}) == pytest.approx(logit)


def test_a_regression_export_without_an_output_bias_is_refused_rather_than_wrong() -> None:
    """GPT-2's score layer has no bias to carry the training mean, and its class would drop one added."""
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from mtlora.errors import AdapterNotServableError

    model = GPT2ForSequenceClassification(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, num_labels=1))
    kind = RegressionTask()
    kind.fit([{"label": 1.0}, {"label": 4.0}])
    with pytest.raises(AdapterNotServableError, match="no output layer with a bias"):
        kind.prepare_export(model)
    centred = RegressionTask(options={"target_mean": 0.0, "target_std": 2.0})
    before = model.score.weight.clone()
    centred.prepare_export(model)
    torch.testing.assert_close(model.score.weight, 2 * before)


def test_numbers_in_a_label_field_are_ids_only_into_labels_the_project_names(tmp_path: Path) -> None:
    """Learned from the data, labels sort into no one's ids; named as numbers, '1' is a name and an id at
    once: in either case a number the labels lack is an unknown label, not a silent pick of some class."""
    from test_data import jsonl, project

    from mtlora import DataError
    from mtlora.data import load_task_data

    def loaded(train: list[dict], validation: list[dict], **data):
        config, task = project(tmp_path, "classification", jsonl(tmp_path, train),
                               validation=jsonl(tmp_path, validation, "dev.jsonl"), **data)
        return load_task_data(config, task, splits=("train", "validation"))

    numbered = [{"text": t, "label": n} for t, n in (("a", "1"), ("b", "2"), ("c", "3"))]
    with pytest.raises(DataError, match=r"dev.jsonl:1: unknown label '0'"):
        loaded(numbered, [{"text": "x", "label": "0"}])
    named = [{"text": "a", "label": "cat"}, {"text": "b", "label": "dog"}]
    with pytest.raises(DataError, match=r"dev.jsonl:1: unknown label 1"):
        loaded(named, [{"text": "x", "label": 1}])
    with pytest.raises(DataError, match=r"train.jsonl:3: unknown label '0'"):
        loaded([*numbered[:2], {"text": "c", "label": "0"}], numbered, labels=["1", "2"])
    # Named by the project, the labels take 0-based ids; one out of range says how ids are read.
    data = loaded(named, [{"text": "x", "label": 1}, {"text": "y", "label": "0"}], labels=["cat", "dog"])
    assert [e["label"] for e in data.validation] == [1, 0]
    with pytest.raises(DataError, match=r"dev.jsonl:1: label id 2 .* out of range: numbers are read as 0-based "
                                        r"ids into data.labels \(cat, dog\).*data.label_map"):
        loaded(named, [{"text": "x", "label": 2}], labels=["cat", "dog"])


@pytest.mark.parametrize(("label", "problem"), [("", "is empty"), (" ", "is empty"), (["pos"], "holds a list")])
@pytest.mark.parametrize("labels", [None, ["neg", "pos"]])
def test_an_empty_or_list_label_is_refused_not_made_a_class(tmp_path: Path, label, problem: str,
                                                             labels: list[str] | None) -> None:
    from test_data import jsonl, load

    from mtlora import DataError

    rows = [{"text": "a", "label": "pos"}, {"text": "b", "label": label}, {"text": "c", "label": "neg"}]
    name = jsonl(tmp_path, rows)
    with pytest.raises(DataError, match=rf"train.jsonl:2: field 'label' {problem}"):
        load(tmp_path, "classification", name, **({"labels": labels} if labels else {}))


def test_an_mcq_answer_index_reads_from_a_csv_cell_unless_an_option_is_that_text(tmp_path: Path) -> None:
    from test_data import project

    from mtlora import DataError
    from mtlora.data import load_task_data

    (tmp_path / "mcq.csv").write_text('text,question,options,answer\n'
                                      'passage,Q?,"[""a"",""b"",""c"",""d""]",1\n'
                                      'passage,Q?,"[""3"",""2"",""1"",""0""]",1\n')
    config, task = project(tmp_path, "mcq_generation", "mcq.csv")
    answers = [e["mcq"].answer for e in load_task_data(config, task, splits=("train",)).train]
    assert answers == [1, 2]
    (tmp_path / "mcq.csv").write_text('text,question,options,answer\npassage,Q?,"[""a"",""b"",""c"",""d""]",²\n')
    with pytest.raises(DataError, match=r"mcq.csv:2: answer '²' in field 'answer' is not a letter a-d"):
        load_task_data(config, task, splits=("train",))  # str.isdigit takes '²'; int() did not


def test_qa_answers_and_scores_of_the_wrong_type_are_refused_by_name(tmp_path: Path) -> None:
    from test_data import jsonl, load

    from mtlora import DataError

    qa = {"question": "who?", "context": "the cat sat on the mat"}
    refused = [
        ({"text": ["the cat", "the mat"], "answer_start": [0]}, r"answers' has 2 answer texts but answer_start \[0\]"),
        ([{"text": "the cat", "answer_start": "0"}], r"answers\[0\] answer_start '0' is not an integer"),
        ([{"text": "the cat", "answer_start": True}], r"answers\[0\] answer_start True is not an integer"),
        ([], r"must be a non-empty list of answers \(SQuAD 2.0's unanswerable"),
    ]
    for answers, expected in refused:
        with pytest.raises(DataError, match=rf"train.jsonl:1: .*{expected}"):
            load(tmp_path, "extractive_qa", jsonl(tmp_path, [{**qa, "answers": answers}]))
    with pytest.raises(DataError, match=r"train.jsonl:1: score True in field 'label' is not a number"):
        load(tmp_path, "regression", jsonl(tmp_path, [{"text": "a", "text_pair": "b", "label": True}]))


def test_labels_learned_from_numbers_sort_as_numbers(tmp_path: Path) -> None:
    from test_data import jsonl, load

    rows = [{"text": f"t{n}", "label": n} for n in (10, 2, 1, -1)]
    assert load(tmp_path, "classification", jsonl(tmp_path, rows)).kind.labels == ["-1", "1", "2", "10"]
    rows = [{"text": f"t{n}", "label": n} for n in ("b", "10", "a", "2")]
    assert load(tmp_path, "classification", jsonl(tmp_path, rows)).kind.labels == ["10", "2", "a", "b"]


def test_an_unlabelled_row_and_odd_digits_are_named_not_misread(tmp_path: Path) -> None:
    """-1 is how datasets marks a row without a label (GLUE's test splits); str.isdigit takes "²", which
    int() refuses; labels equal as numbers ("1", "01") need one order whatever the hash seed."""
    from test_data import jsonl, load

    from mtlora import DataError

    rows = [{"text": "a", "label": 0}, {"text": "b", "label": -1}]
    with pytest.raises(DataError, match=r"train.jsonl:2: label -1 .* marks a row without a label .*split:"):
        load(tmp_path, "classification", jsonl(tmp_path, rows), labels=["neg", "pos"])
    rows = [{"text": "a", "label": "²"}, {"text": "b", "label": "1"}]
    assert load(tmp_path, "classification", jsonl(tmp_path, rows)).kind.labels == ["1", "²"]
    with pytest.raises(DataError, match=r"train.jsonl:1: unknown label '²'"):
        load(tmp_path, "classification", jsonl(tmp_path, rows), labels=["neg", "pos"])
    rows = [{"text": t, "label": n} for t, n in (("a", "1"), ("b", "01"), ("c", "2"))]
    assert load(tmp_path, "classification", jsonl(tmp_path, rows)).kind.labels == ["01", "1", "2"]


def test_reports_show_labels_with_their_confidence_and_scores_to_two_decimals() -> None:
    from mtlora.tasks.classification import ClassificationTask
    from mtlora.tasks.instruction_classification import InstructionClassificationTask

    for kind in (ClassificationTask(labels=["neg", "pos"]), InstructionClassificationTask(labels=["neg", "pos"])):
        assert (kind.expected_text({"label": 1}), kind.answer_text({"label": "pos", "confidence": 0.912})) == \
            ("pos", "pos (0.91)")
    regression = RegressionTask()
    assert (regression.expected_text({"label": 3.456}), regression.answer_text({"score": 1.0})) == ("3.46", "1.00")


def test_a_users_own_kind_registers_with_plain_report_forms_and_one_lacking_a_method_is_refused() -> None:
    from mtlora.tasks import _KINDS, get_task_kind, register_task_kind
    from mtlora.tasks.sequence import SequenceTask

    class Toxicity(SequenceTask):
        name, description, roles, primary_metric = "toxicity_test", "text -> toxicity", ("text", "label"), "mae"

        def parse(self, rows):
            return [{**self.parse_texts(row), "label": float(row.values["label"])} for row in rows]

        def decode(self, outputs, encoded, examples):
            return [{"score": float(output["logits"][0])} for output in outputs]

        def metrics(self, predictions, examples):
            return {"mae": 0.0}

    try:
        register_task_kind(Toxicity)
        kind = get_task_kind("toxicity_test")()
        assert (kind.expected_text({"label": 0.25}), kind.answer_text({"score": 0.5})) == ("0.25", "score 0.5")
        Incomplete = type("Incomplete", (SequenceTask,), {"name": "incomplete_test", "parse": Toxicity.parse})
        with pytest.raises(TypeError, match=r"task kind 'incomplete_test' \(Incomplete\) does not define decode, "
                                            r"metrics, which every kind needs"):
            register_task_kind(Incomplete)
        assert "incomplete_test" not in _KINDS
    finally:
        _KINDS.pop("toxicity_test", None)


def test_each_kind_says_which_of_its_metrics_run_to_100() -> None:
    """Tables mark those: beside accuracies, a ROUGE-L of 0.8 (near nothing) reads as 80%."""
    from mtlora.tasks import get_task_kind

    marked = {(kind, metric): get_task_kind(kind).metric_label(metric) for kind, metric in [
        ("extractive_qa", "exact_match"), ("classification", "f1"), ("generation", "rougeLsum"),
        ("generation", "copy_share"), ("mcq_generation", "question_rougeL"), ("mcq_generation", "valid_mcq_share"),
        ("multitask", "summarize/rougeL"), ("multitask", "race/valid_mcq_share"), ("multitask", "mean_primary")]}
    assert [key for key, label in marked.items() if label.endswith(" (0-100)")] == [
        ("extractive_qa", "exact_match"), ("generation", "rougeLsum"), ("mcq_generation", "question_rougeL"),
        ("multitask", "summarize/rougeL")]


def test_a_text_that_exactly_fills_max_length_is_not_called_truncated(tiny_bert: Path) -> None:
    """Truncation returns `max_length` tokens for a text that fits them exactly and for one cut to them: only
    the second lost words, and a caller told `truncated` of the first would shorten a text for nothing."""
    from mtlora.tasks.classification import ClassificationTask
    from mtlora.tasks.generation import GenerationTask
    from mtlora.tasks.pair_classification import PairClassificationTask

    tokenizer = load_tokenizer(str(tiny_bert))
    cases = [(ClassificationTask(labels=["a", "b"]), {"text": "cat " * 6}, {"text": "cat " * 7}),  # [CLS] 6 [SEP]
             (PairClassificationTask(labels=["a", "b"]), {"text": "cat " * 2, "text_pair": "dog " * 3},
              {"text": "cat " * 2, "text_pair": "dog " * 4}),
             (GenerationTask(), {"text": "cat " * 6}, {"text": "cat " * 7})]
    for kind, fits, cut in cases:
        encoded = kind.encode(tokenizer, [fits, cut], 8, 0, with_targets=False)
        assert [len(ids) for ids in encoded.features["input_ids"]] == [8, 8], kind.name
        assert encoded.truncated == [False, True], kind.name


def test_qa_answers_given_as_text_are_found_in_the_context_from_its_first_character(tmp_path: Path) -> None:
    from test_data import jsonl, load

    rows = [{"question": "who?", "context": "the cat sat on the mat", "answers": answers}
            for answers in ("the cat", ["the mat", "the cat"], {"text": ["the cat"]})]
    parsed = [e["answers"] for e in load(tmp_path, "extractive_qa", jsonl(tmp_path, rows)).train]
    assert parsed == [[{"text": "the cat", "answer_start": 0}],
                      [{"text": "the mat", "answer_start": 15}, {"text": "the cat", "answer_start": 0}],
                      [{"text": "the cat", "answer_start": 0}]]


def test_with_a_label_map_numbers_are_names_to_map_not_ids_and_one_label_is_no_classifier(tmp_path: Path) -> None:
    """A label_map says how the data names the labels: a number it does not map is unknown, not an id."""
    from test_data import jsonl, load

    from mtlora import ConfigError, DataError

    rows = [{"text": "a", "label": "n"}, {"text": "b", "label": 1}]
    with pytest.raises(DataError, match=r"train.jsonl:2: unknown label 1"):
        load(tmp_path, "classification", jsonl(tmp_path, rows), labels=["neg", "pos"],
             label_map={"n": "neg", "p": "pos"})
    for kind in ("classification", "pair_classification"):
        with pytest.raises(ConfigError, match=f"a {kind} task needs at least 2 labels"):
            load(tmp_path, kind, jsonl(tmp_path, rows), labels=["neg"])


def test_a_label_comes_back_with_its_id_its_probability_and_every_labels_probability_by_name() -> None:
    """The engine and a predictor share this decode, so comparing them cannot see a label answered by its
    neighbour's name or probabilities filed under the wrong labels."""
    from mtlora.tasks.classification import ClassificationTask

    kind = ClassificationTask(labels=["billing", "account", "shipping"])
    logits = np.log(np.array([[0.2, 0.7, 0.1], [0.1, 0.3, 0.6]], dtype=np.float32))
    encoded = Encoded(features={}, example_index=[0, 1], truncated=[False, True])
    first, second = kind.decode([{"logits": row} for row in logits], encoded, [{}, {}])
    assert (first["label"], first["label_id"], first["truncated"]) == ("account", 1, False)
    assert first["confidence"] == pytest.approx(0.7)
    assert first["probabilities"] == pytest.approx({"billing": 0.2, "account": 0.7, "shipping": 0.1})
    assert (second["label"], second["label_id"], second["confidence"], second["truncated"]) == \
        ("shipping", 2, pytest.approx(0.6), True)
