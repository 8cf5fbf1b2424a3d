"""Reading task data from files or the `datasets` hub."""

from mtlora.data.readers import Row, read_rows
from mtlora.data.splits import SPLITS, TaskData, check_split, load_task_data

__all__ = ["SPLITS", "Row", "TaskData", "check_split", "load_task_data", "read_rows"]
