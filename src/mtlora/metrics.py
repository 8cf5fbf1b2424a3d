"""Metric functions: scikit-learn and scipy where they exist, the official SQuAD v1.1 rules by hand.

(The `evaluate` library is not used: it downloads metric scripts from the hub at run time.)
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

PUNCTUATION = frozenset(string.punctuation)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")  # whitespace after a sentence's final punctuation


def classification_metrics(gold: Sequence[int], predicted: Sequence[int], labels: Sequence[str]) -> dict[str, float]:
    # The macro average is over the labels the split holds or the model answers, as sklearn's default: a
    # label in neither (a small split, a limit) would add an F1 of 0 that says nothing about the model.
    metrics = {
        "accuracy": float(accuracy_score(gold, predicted)),
        "macro_f1": float(f1_score(gold, predicted, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(gold, predicted, average="weighted", zero_division=0)),
    }
    if len(labels) == 2:
        # GLUE reports MRPC/QQP F1 as the F1 of the positive class, label id 1. Which label that is depends on
        # the order of data.labels (or, learned from the data, on sorting), so the key names it.
        metrics[f"f1[{labels[1]}]"] = float(f1_score(gold, predicted, pos_label=1, average="binary",
                                                     zero_division=0))
    return metrics


def confusion(gold: Sequence[int], predicted: Sequence[int], n_labels: int) -> list[list[int]]:
    return confusion_matrix(gold, predicted, labels=list(range(n_labels))).tolist()


def undefined_correlation(gold: Sequence[float] | np.ndarray, predicted: Sequence[float] | np.ndarray) -> str | None:
    """Why Pearson and Spearman correlations of `predicted` with `gold` are undefined, or None where they are not."""
    if len(gold) < 2:
        return "fewer than two examples"
    if np.ptp(predicted) == 0:
        return f"every prediction is {predicted[0]:.4g}"
    if np.ptp(gold) == 0:
        return f"every gold score is {gold[0]:.4g}"
    return None


def regression_metrics(gold: Sequence[float], predicted: Sequence[float]) -> dict[str, float]:
    """Pearson, Spearman and MSE. Where the correlations are undefined (`undefined_correlation`) they are 0, so
    that tables and JSON stay numeric (no NaN); evaluation says so beside them (`RegressionTask.caveats`)."""
    gold_array, predicted_array = np.asarray(gold, dtype=float), np.asarray(predicted, dtype=float)
    if undefined_correlation(gold_array, predicted_array) is not None:
        pearson = spearman = 0.0
    else:
        pearson = float(stats.pearsonr(gold_array, predicted_array)[0])
        spearman = float(stats.spearmanr(gold_array, predicted_array)[0])
    return {
        "pearson": pearson,
        "spearman": spearman,
        "mse": float(np.mean((gold_array - predicted_array) ** 2)) if len(gold_array) else 0.0,
    }


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, squeeze white space (SQuAD v1.1)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def squad_token_f1(prediction: str, truth: str) -> float:
    predicted_tokens = normalize_answer(prediction).split()
    truth_tokens = normalize_answer(truth).split()
    common = collections.Counter(predicted_tokens) & collections.Counter(truth_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(predicted_tokens)
    recall = same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """EM and F1 in percent, each question scored against its best-matching reference answer."""
    if not predictions:
        return {"exact_match": 0.0, "f1": 0.0}
    em = [max(squad_exact_match(p, t) for t in truths) for p, truths in zip(predictions, references, strict=True)]
    f1 = [max(squad_token_f1(p, t) for t in truths) for p, truths in zip(predictions, references, strict=True)]
    return {"exact_match": 100.0 * float(np.mean(em)), "f1": 100.0 * float(np.mean(f1))}


ROUGE_METRICS = frozenset({"rouge1", "rouge2", "rougeL", "rougeLsum"})  # what `rouge` returns, in percent


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """ROUGE-1/2/L F-measure in percent (Google's `rouge-score`, with stemming, as summarization papers report).

    ROUGE-Lsum treats each line as a sentence, which is how CNN/DailyMail highlights are scored; a text
    without line breaks (every generated one) is split after each sentence's final punctuation first,
    as papers split with a sentence tokenizer (which also knows abbreviations such as "U.S.", where
    this split is wrong), or Lsum would score it as one sentence.
    """
    from rouge_score import rouge_scorer

    names = sorted(ROUGE_METRICS)
    if not predictions:
        return dict.fromkeys(names, 0.0)
    scorer = rouge_scorer.RougeScorer(list(names), use_stemmer=True)
    totals = dict.fromkeys(names, 0.0)
    for predicted, reference in zip(predictions, references, strict=True):
        for name, score in scorer.score(_sentence_per_line(reference), _sentence_per_line(predicted)).items():
            totals[name] += score.fmeasure
    return {name: 100.0 * total / len(predictions) for name, total in totals.items()}


def _sentence_per_line(text: str) -> str:
    return text if "\n" in text else "\n".join(SENTENCE_END.split(text.strip()))


def degenerate_shares(predictions: Sequence[str], sources: Sequence[str]) -> dict[str, float]:
    """Share of outputs that are empty, and of outputs that only copy a stretch of their input.

    Both compare SQuAD-normalised words: an output of only punctuation and articles ("the.") counts as
    empty, since it says nothing. A copy is an output whose words all appear, in order and contiguously,
    in the input: what a model that has not learned the task tends to produce.
    """
    if not predictions:
        return {"empty_share": 0.0, "copy_share": 0.0}
    empty = copied = 0
    for predicted, source in zip(predictions, sources, strict=True):
        words = normalize_answer(predicted)
        if not words:
            empty += 1
        elif f" {words} " in f" {normalize_answer(source)} ":
            copied += 1
    return {"empty_share": empty / len(predictions), "copy_share": copied / len(predictions)}
