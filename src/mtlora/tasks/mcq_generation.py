"""`mcq_generation`: passage -> a multiple-choice question, its options and the answer (RACE / DREAM style).

The model writes one fixed, parseable line::

    question: what did tom buy? options: (a) a book (b) a pen (c) a cup (d) a bag answer: b

`parse_mcq` reads it back; an output counts as a valid MCQ only with exactly `num_options` non-empty
options lettered a, b, c, ... and an answer among those letters. The parser ignores case and the
spaces a WordPiece tokenizer puts around punctuation, since models write what their tokenizer decodes.

`valid_mcq_share`, the main metric, is a format rate: well-formed nonsense passes it. `rougeL` compares
the content (question, option texts and answer letter) with the reference's, without the scaffold
(`question:`, `options:`, `(a)`, `answer:`) that every output shares: on the scaffold alone an empty
MCQ scored 38 against RACE references.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from mtlora.errors import DataError
from mtlora.metrics import degenerate_shares, rouge
from mtlora.tasks.base import Encoded, Example, Prediction, integer_text
from mtlora.tasks.seq2seq import Seq2SeqTask

if TYPE_CHECKING:
    from mtlora.data.readers import Row

LETTERS = string.ascii_lowercase
_MCQ = re.compile(r"^\s*question\s*:\s*(?P<question>.+?)\s*options\s*:\s*(?P<options>.+?)\s*answer\s*:\s*"
                  r"(?P<answer>[a-z])\s*\.?\s*$", re.IGNORECASE | re.DOTALL)
_SCAFFOLD = re.compile(r"\b(?:question|options|answer)\s*:|\(\s*[a-z]\s*\)", re.IGNORECASE)
_OPTION_MARKERS = [re.compile(rf"\(\s*{letter}\s*\)", re.IGNORECASE) for letter in LETTERS]


@dataclass(frozen=True)
class MCQ:
    question: str
    options: list[str]
    answer: int  # index into options

    def format(self) -> str:
        options = " ".join(f"({LETTERS[i]}) {option}" for i, option in enumerate(self.options))
        return f"question: {self.question} options: {options} answer: {LETTERS[self.answer]}"

    def content(self) -> str:
        return " ".join([self.question, *self.options, LETTERS[self.answer]])


def parse_mcq(text: str, num_options: int) -> MCQ | None:
    """The MCQ in `text`, or None when it is not one (wrong shape, option count, or answer letter)."""
    match = _MCQ.match(text)
    if match is None:
        return None
    options = _options(match["options"])
    if options is None or len(options) != num_options or not all(options) or _ambiguous(options):
        return None
    answer = LETTERS.find(match["answer"].lower())
    if answer >= num_options:
        return None
    return MCQ(question=match["question"].strip(), options=options, answer=answer)


def _options(text: str) -> list[str] | None:
    """The texts after (a), (b), (c), ... in turn, or None with text before "(a)". Only the letter due next
    starts an option, so "plant(s)" or "Both (A) and (B)" inside an option's text stay in it."""
    markers: list[re.Match[str]] = []
    for pattern in _OPTION_MARKERS:
        marker = pattern.search(text, markers[-1].end() if markers else 0)
        if marker is None:
            break
        markers.append(marker)
    if not markers or text[:markers[0].start()].strip():
        return None
    ends = [marker.start() for marker in markers[1:]] + [len(text)]
    return [text[marker.end():end].strip() for marker, end in zip(markers, ends, strict=True)]


def _ambiguous(options: list[str]) -> bool:
    """Whether an option's text holds the marker of its own letter or a later one: "(a) plan (B) is better
    (b) plan A" splits as well at "(B)" as at "(b)". An earlier letter ("Both (A) and (B)" as option c)
    cannot start an option there, so it is text."""
    return any(_OPTION_MARKERS[j].search(option) for i, option in enumerate(options) for j in range(i, len(options)))


class MCQGenerationTask(Seq2SeqTask):
    name = "mcq_generation"
    description = "passage -> question, options and answer (seq2seq)"
    roles = ("text", "question", "options", "answer")
    primary_metric = "valid_mcq_share"
    percent_metrics = frozenset({"rougeL", "question_rougeL"})
    unused_settings: ClassVar[dict[str, str]] = {}

    @property
    def num_options(self) -> int:
        return self.settings.num_options

    def parse(self, rows: Sequence[Row]) -> list[Example]:
        examples = []
        for row in rows:
            options = self._options(row)
            mcq = MCQ(self.text_value(row, "question"), options, self._answer(row, options))
            examples.append({"text": self.text_value(row, "text"), "mcq": mcq, "where": row.where})
        return examples

    def _options(self, row: Row) -> list[str]:
        raw, field = self.value(row, "options"), self.column("options")
        if isinstance(raw, str):  # CSV/TSV cells hold the options as a JSON list
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError:
                raise DataError(row.where, f"field '{field}' must be a list of options (JSON in a text file)") \
                    from None
        if not isinstance(raw, list) or not all(isinstance(o, str) and o.strip() for o in raw):
            raise DataError(row.where, f"field '{field}' must be a list of non-empty option texts")
        if len(raw) != self.num_options:
            raise DataError(row.where, f"field '{field}' has {len(raw)} options, the task expects {self.num_options}",
                            "set seq2seq.num_options")
        return [" ".join(o.split()) for o in raw]

    def _answer(self, row: Row, options: list[str]) -> int:
        """The answer given as a letter ('B'), an index (1), or the option's own text (DREAM)."""
        raw, field = self.value(row, "answer"), self.column("answer")
        if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < len(options):  # True is an int
            return raw
        if isinstance(raw, str):
            text = " ".join(raw.split())
            if len(text) == 1 and LETTERS.find(text.lower()) in range(len(options)):
                return LETTERS.index(text.lower())
            if text in options:
                return options.index(text)
            if integer_text(text) and 0 <= int(text) < len(options):  # an index, as CSV and TSV cells hold it
                return int(text)
        raise DataError(row.where, f"answer {raw!r} in field '{field}' is not a letter "
                        f"{LETTERS[0]}-{LETTERS[len(options) - 1]}, an index 0-{len(options) - 1}, "
                        "or the text of one of the options")

    def target(self, example: Example) -> str:
        return example["mcq"].format()

    def decode(self, outputs: list[dict[str, Any]], encoded: Encoded,
               examples: Sequence[Example]) -> list[Prediction]:
        predictions = []
        for i, output in enumerate(outputs):
            mcq = parse_mcq(output["text"], self.num_options)
            predictions.append({
                "text": output["text"],
                "mcq": None if mcq is None else {"question": mcq.question, "options": mcq.options,
                                                 "answer": LETTERS[mcq.answer]},
                "generated_tokens": output["tokens"],
                "truncated": encoded.truncated[i],
            })
        return predictions

    def metrics(self, predictions: Sequence[Prediction], examples: Sequence[Example]) -> dict[str, float]:
        """ROUGE-L of the question (of the whole output where it does not parse) and of the content, and the
        share that parses (a format rate)."""
        if not predictions:
            return {"valid_mcq_share": 0.0, "question_rougeL": 0.0}
        questions = [p["mcq"]["question"] if p["mcq"] else p["text"] for p in predictions]
        texts = [p["text"] for p in predictions]
        return {
            "valid_mcq_share": sum(p["mcq"] is not None for p in predictions) / len(predictions),
            "question_rougeL": rouge(questions, [e["mcq"].question for e in examples])["rougeL"],
            "rougeL": rouge([_content(p) for p in predictions], [e["mcq"].content() for e in examples])["rougeL"],
            **degenerate_shares(texts, [e["text"] for e in examples]),
        }


def _content(prediction: Prediction) -> str:
    """What an output says, without the scaffold: its MCQ's, as `decode` parsed it, or the text with the
    scaffold cut out."""
    mcq = prediction["mcq"]
    if mcq is None:
        return _SCAFFOLD.sub(" ", prediction["text"])
    return MCQ(mcq["question"], mcq["options"], LETTERS.index(mcq["answer"])).content()
