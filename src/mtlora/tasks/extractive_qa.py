"""`extractive_qa`: question + context -> the answer span in the context (SQuAD v1.1 style).

Contexts longer than `max_length` are split into overlapping windows (`doc_stride` tokens of overlap);
each window scores candidate spans and the best span over all windows of a question wins.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from scipy.special import softmax
from transformers import AutoModelForQuestionAnswering

from mtlora.errors import DataError, InputError, MtloraError
from mtlora.metrics import squad_metrics
from mtlora.tasks.base import Encoded, Example, Prediction, TaskKind, require_text

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from mtlora.config import TaskConfig
    from mtlora.data.readers import Row

MAX_ANSWER_TOKENS = 30
CANDIDATES_PER_WINDOW = 20


class ExtractiveQATask(TaskKind):
    name = "extractive_qa"
    description = "question + context -> answer span"
    roles = ("question", "context", "answers")
    input_shape = "qa"
    auto_class = AutoModelForQuestionAnswering
    # Not TaskType.QUESTION_ANS: peft 0.21's PeftModelForQuestionAnswering drops token_type_ids, so the
    # model would never see which tokens are the question. The plain PeftModel passes every input on.
    peft_task_type = None
    primary_metric = "f1"
    percent_metrics = frozenset({"f1", "exact_match"})
    output_names = ("start_logits", "end_logits")
    token_level = True

    @classmethod
    def check_config(cls, config: TaskConfig) -> None:
        super().check_config(config)
        # Each window repeats doc_stride context tokens and must still hold the question and new context.
        training = config.training
        if training.doc_stride > training.max_length // 2:
            raise ValueError(f"training.doc_stride ({training.doc_stride}) must be at most half of "
                             f"training.max_length ({training.max_length}): lower doc_stride or raise max_length")

    def parse(self, rows: Sequence[Row]) -> list[Example]:
        examples = []
        for row in rows:
            context = self.text_value(row, "context")
            examples.append({
                "question": self.text_value(row, "question"),
                "context": context,
                "answers": self._answers(row, context),
                "id": row.values.get("id", row.where),
                "where": row.where,
            })
        return examples

    def _answers(self, row: Row, context: str) -> list[dict[str, Any]]:
        """Accept SQuAD lists of {text, answer_start}, the hub's {text: [...], answer_start: [...]},
        or answer strings, one or a list (located in the context)."""
        raw = self.value(row, "answers")
        field = self.column("answers")
        if isinstance(raw, str):
            raw = [{"text": raw}]
        elif isinstance(raw, dict) and isinstance(raw.get("text"), list):
            starts = raw.get("answer_start") or [None] * len(raw["text"])
            if not isinstance(starts, list) or len(starts) != len(raw["text"]):
                raise DataError(row.where, f"field '{field}' has {len(raw['text'])} answer texts but answer_start "
                                f"{starts!r}", "give one answer_start per text (or none, to find each in the context)")
            raw = [{"text": t, "answer_start": s} for t, s in zip(raw["text"], starts, strict=True)]
        if not isinstance(raw, list) or not raw:
            unanswerable = "SQuAD 2.0's unanswerable questions are not supported: leave them out"
            raise DataError(row.where, f"field '{field}' must be a non-empty list of answers",
                            unanswerable if raw == [] else None)
        answers = []
        for i, answer in enumerate(raw):
            if isinstance(answer, str):
                answer = {"text": answer}
            text = answer.get("text") if isinstance(answer, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise DataError(row.where, f"{field}[{i}] has no answer text")
            start = answer.get("answer_start")
            if start is None:
                start = context.find(text)
                if start < 0:
                    raise DataError(row.where, f"{field}[{i}] {text!r} does not occur in its context",
                                    "an answer must be a span of the context, character for character")
            if not isinstance(start, int) or isinstance(start, bool):
                raise DataError(row.where, f"{field}[{i}] answer_start {start!r} is not an integer",
                                "give the character offset of the answer text in the context, as a number")
            if context[start:start + len(text)] != text:
                raise DataError(
                    row.where,
                    f"{field}[{i}] {text!r} is not found in its context at answer_start={start}",
                    "answer_start must be the character offset of the answer text in the context",
                )
            answers.append({"text": text, "answer_start": start})
        return answers

    def input_example(self, text: str, text_pair: str | None = None) -> Example:
        if text_pair is None:
            raise InputError("an extractive_qa task needs a question and a context to find the answer in")
        return {"question": require_text(text, "question"), "context": require_text(text_pair, "context")}

    def check_tokenizer(self, tokenizer: PreTrainedTokenizerBase, where: str) -> None:
        _check_windows_reach_the_end(tokenizer)

    def encode(
        self,
        tokenizer: PreTrainedTokenizerBase,
        examples: Sequence[Example],
        max_length: int,
        doc_stride: int,
        with_targets: bool,
    ) -> Encoded:
        # The question comes first and the context is windowed after it (right-padding tokenizers, as
        # BERT-style ones are; the span decoding reads token positions from the left).
        _check_windows_reach_the_end(tokenizer)
        questions, question_cut = _questions_that_fit(tokenizer, examples, max_length, doc_stride)
        tokens = tokenizer(
            questions,
            [e["context"] for e in examples],
            truncation="only_second",
            max_length=max_length,
            stride=doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        example_index = list(tokens.pop("overflow_to_sample_mapping"))
        offsets_all = tokens.pop("offset_mapping")
        extras, starts, ends = [], [], []
        for feature, offsets in enumerate(offsets_all):
            sequence_ids = tokens.sequence_ids(feature)
            context_offsets = [o if s == 1 else None for o, s in zip(offsets, sequence_ids, strict=True)]
            extras.append({"offsets": context_offsets})
            if with_targets:
                answer = examples[example_index[feature]]["answers"][0]
                start, end = _token_span(context_offsets, answer["answer_start"],
                                         answer["answer_start"] + len(answer["text"]))
                starts.append(start)
                ends.append(end)
        features: dict[str, list[Any]] = dict(tokens)
        if with_targets:
            features["start_positions"] = starts
            features["end_positions"] = ends
        # The answer is searched in every window, so only a cut question is "truncated" for the user.
        return Encoded(features=features, example_index=example_index, extras=extras, truncated=question_cut)

    def decode(self, outputs: list[dict[str, np.ndarray]], encoded: Encoded,
               examples: Sequence[Example]) -> list[Prediction]:
        best: list[tuple[float, int, int] | None] = [None] * len(examples)
        scores: list[list[float]] = [[] for _ in examples]
        for feature, output in enumerate(outputs):
            index = encoded.example_index[feature]  # of the example, whose dict the loop below names `example`
            offsets, context = encoded.extras[feature]["offsets"], examples[index]["context"]
            for score, start_char, end_char in _candidate_spans(output["start_logits"], output["end_logits"],
                                                                offsets):
                scores[index].append(score)
                current = best[index]
                if current is None or score > current[0]:
                    start_char, end_char = _without_outer_spaces(context, start_char, end_char)
                    if start_char < end_char:  # a token of spaces alone (SentencePiece's lone '▁') is no answer
                        best[index] = (score, start_char, end_char)
        predictions = []
        for example, candidate, candidate_scores, cut in zip(examples, best, scores, encoded.truncated, strict=True):
            if candidate is None:
                predictions.append({"answer": "", "start": None, "end": None, "confidence": 0.0,
                                    "truncated": cut})
                continue
            _, start, end = candidate
            # Softmax of the winning span's score over every candidate span of the question.
            confidence = float(softmax(candidate_scores).max())
            predictions.append({"answer": example["context"][start:end], "start": start, "end": end,
                                "confidence": confidence, "truncated": cut})
        return predictions

    def expected_text(self, example: Example) -> str:
        return example["answers"][0]["text"]

    def answer_text(self, prediction: Prediction) -> str:
        return str(prediction.get("answer", ""))

    def metrics(self, predictions: Sequence[Prediction], examples: Sequence[Example]) -> dict[str, float]:
        return squad_metrics([p["answer"] for p in predictions],
                             [[a["text"] for a in e["answers"]] for e in examples])


# Weak: a process that trains task after task must not keep each one's tokenizer alive for this.
_WINDOWS_CHECKED: weakref.WeakSet[PreTrainedTokenizerBase] = weakref.WeakSet()


def _check_windows_reach_the_end(tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse a tokenizer whose windows stop short of the context's end. tokenizers 0.23.1 and 0.23.2 stop
    tokenizing at `max_length` and so return too few windows (huggingface/tokenizers#2091): training
    would never see answers past them, and predictions would never find them. Asked once per tokenizer."""
    if tokenizer in _WINDOWS_CHECKED:
        return
    context = " ".join(["a"] * 40)
    tokens = tokenizer("a", context, truncation="only_second", max_length=16, stride=2,
                       return_overflowing_tokens=True, return_offsets_mapping=True)
    last = len(tokens["input_ids"]) - 1
    reached = max((end for (_, end), sequence in zip(tokens["offset_mapping"][last], tokens.sequence_ids(last),
                                                     strict=True) if sequence == 1), default=0)
    if reached < len(context):
        import tokenizers

        raise MtloraError(
            f"the tokenizer's windows of a long context stop at character {reached} of {len(context)}, so "
            "extractive_qa would miss every answer past them. tokenizers 0.23.1 and 0.23.2 do this "
            f"(huggingface/tokenizers#2091), and this is tokenizers {tokenizers.__version__}: "
            "pip install -U 'tokenizers!=0.23.1,!=0.23.2'")
    _WINDOWS_CHECKED.add(tokenizer)


def _questions_that_fit(tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], max_length: int,
                        doc_stride: int) -> tuple[list[str], list[bool]]:
    """Each question, cut to the tokens a window can give it, and whether it was cut. Every window must
    keep more context tokens than `doc_stride` (the fast tokenizer panics otherwise), so a question may
    take at most what is left of `max_length` after the stride and the special tokens."""
    room = max_length - doc_stride - tokenizer.num_special_tokens_to_add(pair=True) - 1
    if room < 1:  # an adapter trained before doc_stride was held to half of max_length
        raise InputError(f"max_length {max_length} and doc_stride {doc_stride} leave a window no room for the "
                         "question; retrain this adapter with doc_stride at most half of max_length")
    questions = [e["question"].lstrip() for e in examples]
    cut = [False] * len(questions)
    # A token is at least one byte (a byte-level BPE splits one character into several), so only a
    # question of more than `room` UTF-8 bytes can need cutting.
    long = [i for i, question in enumerate(questions) if len(question.encode()) > room]
    if long:
        offsets = tokenizer([questions[i] for i in long], add_special_tokens=False,
                            return_offsets_mapping=True)["offset_mapping"]
        for i, question_offsets in zip(long, offsets, strict=True):
            if len(question_offsets) > room:
                questions[i], cut[i] = questions[i][: question_offsets[room - 1][1]], True
    return questions, cut


def _token_span(offsets: list[tuple[int, int] | None], start_char: int, end_char: int) -> tuple[int, int]:
    """Token positions of the answer in one window; (0, 0), the [CLS] token, when the window misses it."""
    context = [i for i, o in enumerate(offsets) if o is not None]
    spans = cast(list[tuple[int, int]], offsets)  # read only at `context`'s positions, which hold a span
    if not context or spans[context[0]][0] > start_char or spans[context[-1]][1] < end_char:
        return 0, 0
    start = next(i for i in context if spans[i][1] > start_char)
    end = next(i for i in reversed(context) if spans[i][0] < end_char)
    return start, end


def _without_outer_spaces(context: str, start: int, end: int) -> tuple[int, int]:
    """The span less the whitespace at its ends (spaces, newlines, no-break spaces): the offsets of
    SentencePiece and some byte-level BPE tokenizers (DeBERTa, ModernBERT) take in the space before a
    word, which made answers start with one."""
    span = context[start:end]
    start += len(span) - len(span.lstrip())
    return start, max(start, end - (len(span) - len(span.rstrip())))


def _candidate_spans(start_logits: np.ndarray, end_logits: np.ndarray,
                     offsets: list[tuple[int, int] | None]) -> list[tuple[float, int, int]]:
    length = min(len(offsets), len(start_logits))
    top_starts = np.argsort(start_logits[:length])[::-1][:CANDIDATES_PER_WINDOW]
    top_ends = np.argsort(end_logits[:length])[::-1][:CANDIDATES_PER_WINDOW]
    spans = []
    for s in top_starts:
        for e in top_ends:
            if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > MAX_ANSWER_TOKENS:
                continue
            spans.append((float(start_logits[s] + end_logits[e]), offsets[s][0], offsets[e][1]))
    return spans
