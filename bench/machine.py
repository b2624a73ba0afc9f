"""One description of the machine a benchmark ran on, for bench/RESULTS.md."""

from __future__ import annotations

import os
import platform


def describe() -> dict:
    import numpy as np
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem_gb = None
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": mem_gb, "gpu": gpu,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__}


def write_results(path: str | None, results: dict) -> dict:
    """Write a benchmark's results as JSON when a path was given; returns them unchanged."""
    if path:
        import json

        with open(path, "w") as f:
            json.dump(results, f, indent=2)
    return results
