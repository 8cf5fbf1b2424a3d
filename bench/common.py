"""What the benches share: cutting a task down to fewer rows than the project reads, and keeping the rows
of an earlier run that a partial rerun does not repeat."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mtlora.config import TaskConfig

# A bench's runs are short and thrown away: a checkpoint would only cost the time to write it.
NO_CHECKPOINTS = 10**9


def limited(task: TaskConfig, train_rows: int | None = None, scored_rows: dict[str, int | None] | None = None,
            **training: Any) -> TaskConfig:
    """`task` on a seeded sample of `train_rows` training rows and of `scored_rows[split]` rows of each split
    named there (None leaves a split as the project reads it), with the `training` settings given changed.
    A multitask task reads its parts' data: only its training settings change."""
    changed = task.training.model_copy(update=training)
    if task.data is None:
        return task.model_copy(update={"training": changed})
    splits = {split: getattr(task.data, split).model_copy(update={"limit": rows})
              for split, rows in (scored_rows or {}).items() if rows is not None and getattr(task.data, split)}
    if train_rows is not None:
        splits["train"] = task.data.train.model_copy(update={"limit": train_rows})
    return task.model_copy(update={"data": task.data.model_copy(update=splits), "training": changed})


def merged_rows(out: Path, rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any],
                field: str = "rows") -> list[dict[str, Any]]:
    """The rows under `field` of the JSON at `out`, each replaced in its place by this run's row of the same
    `key`, then this run's other rows."""
    if not out.is_file():
        return rows
    return list(({key(row): row for row in json.loads(out.read_text())[field]} | {key(row): row for row in rows})
                .values())
