"""Run a function in a fresh Python process and return its result.

Benchmarks that compare methods run each one this way: in a single long process the first method pays
the warm-up (allocator growth, oneDNN kernel creation for each new shape) and later ones ride on it,
and memory freed by one method is not returned to the system before the next one's peak is read.
"""

from __future__ import annotations

import multiprocessing
import re
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def run_isolated(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` in a new process (spawned, so nothing is inherited); its exceptions propagate."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context, max_tasks_per_child=1) as pool:
        return pool.submit(function, *args).result()


def peak_memory_mb() -> float:
    """The peak memory of this process so far: allocated GPU memory on CUDA, else the resident high-water mark."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024
