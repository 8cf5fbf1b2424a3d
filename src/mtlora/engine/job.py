"""One task's share of an engine call: its inputs, encoded, and room for each feature row's outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mtlora.tasks import Encoded, Example


@dataclass
class Job:
    """The inputs one task answers in a call, encoded, with room for each feature's outputs."""

    task: str
    examples: list[Example]
    encoded: Encoded
    results: list[dict[str, Any]] = field(init=False)  # one per feature row, as the task's kind decodes them
    lengths: list[int] = field(init=False)  # tokens of each feature row, without padding

    def __post_init__(self) -> None:
        self.results = [{} for _ in range(len(self.encoded))]
        self.lengths = [len(ids) for ids in self.encoded.features["input_ids"]]
