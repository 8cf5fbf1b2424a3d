"""One task's share of an engine call: its inputs, encoded, and room for each feature row's outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from mtlora.tasks import Encoded, Example


@dataclass
class Job:
    """The inputs one task answers in a call, encoded, with room for each feature's outputs."""

    task: str
    examples: list[Example]
    encoded: Encoded
    results: list[dict[str, Any]] = field(init=False)  # one per feature row, as the task's kind decodes them

    def __post_init__(self) -> None:
        self.results = [{} for _ in range(len(self.encoded))]

    @cached_property
    def lengths(self) -> list[int]:
        """Tokens of each feature row, without padding: the encoder half batches and trims by them; the
        seq2seq half's generation pads and batches its rows itself, so its jobs never count them."""
        return [len(ids) for ids in self.encoded.features["input_ids"]]
