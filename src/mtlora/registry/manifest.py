"""The manifest stored beside each adapter: what it does, what it was trained on, how well it does."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1


class ParameterCounts(BaseModel):
    trainable: int
    total: int
    stored: int  # what the saved adapter holds: fewer than trained when saved at a lower rank

    @model_validator(mode="before")
    @classmethod
    def _stored_as_trained(cls, counts: Any) -> Any:
        # Manifests from before saved ranks have no `stored`: they stored what trained.
        if isinstance(counts, dict) and counts.get("stored") is None and "trainable" in counts:
            return {**counts, "stored": counts["trainable"]}
        return counts

    @property
    def share(self) -> str:
        """The trainable share as a person reads it: a head of a few hundred weights is not "0.00%"."""
        return share_of(self.trainable, self.total)


def share_of(part: int, whole: int) -> str:
    """`part` of `whole` in percent, to two decimals, or "<0.01%" where that would read as none."""
    percent = 100 * part / whole if whole else 0.0
    return "<0.01%" if 0 < percent < 0.005 else f"{percent:.2f}%"


class Manifest(BaseModel):
    """Everything needed to rebuild the task model around the adapter without the project file."""

    model_config = ConfigDict(extra="ignore")

    format_version: int = FORMAT_VERSION
    name: str
    kind: str
    labels: list[str] | None = None
    fields: dict[str, str] = Field(default_factory=dict)
    label_map: dict[str, str] = Field(default_factory=dict)
    kind_options: dict[str, Any] = Field(default_factory=dict, description="e.g. the prompt of a seq2seq kind")
    base_model: str
    base_fingerprint: str
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    modules_to_save: list[str] = Field(default_factory=list)
    lora: dict[str, Any]
    max_length: int
    doc_stride: int = 32
    parameters: ParameterCounts
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    routing: dict[str, Any] = Field(default_factory=dict)
    example_inputs: list[Any] = Field(default_factory=list, description="training inputs, for semantic routing")
    files: dict[str, str] = Field(default_factory=dict, description="file name -> sha256")
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    mtlora_version: str = ""

    @property
    def version(self) -> str:
        """This save of the adapter, by its time and its files' checksums: the manifest's own rewrites (metrics
        recorded, routing hints taken) keep it, and a save of other weights under the same name changes it."""
        saved = json.dumps([self.created_at, sorted(self.files.items())])
        return hashlib.sha256(saved.encode()).hexdigest()[:16]

    def head_kwargs(self) -> dict[str, Any]:
        """`model_kwargs` with JSON's string keys turned back into the int keys transformers expects."""
        kwargs = dict(self.model_kwargs)
        if "id2label" in kwargs:
            kwargs["id2label"] = {int(k): v for k, v in kwargs["id2label"].items()}
        return kwargs
