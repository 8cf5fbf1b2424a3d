"""What a bench ran on, for its JSON: results from different machines are not comparable, and
`platform.processor()` says only "x86_64" on Linux. Library versions too: under tokenizers 0.23.2 a
QA context gave fewer windows, so fewer rows to answer."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import tokenizers
import torch
import transformers

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def machine() -> dict[str, Any]:
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    return {"cpu": model, "cpu_flags": [flag for flag in CPU_FLAGS if flag in flags], "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
