"""The benchmark registry: each benchmark module registers its entry with :func:`benchmark`, and every record
is written with a description of the machine (:func:`machine`) by :func:`emit`."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["BENCHES", "benchmark", "machine", "emit"]

BENCHES: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], dict]]] = {}


def benchmark(name: str, configure: Callable[[argparse.ArgumentParser], None]):
    """Register the decorated function as benchmark ``name``; ``configure`` adds its command-line options."""

    def register(fn: Callable[[argparse.Namespace], dict]):
        BENCHES[name] = (configure, fn)
        return fn

    return register


def machine() -> dict[str, Any]:
    """CPU model, core count, threads, library versions, device."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}
    try:
        import torch

        info.update(torch=torch.__version__, threads=torch.get_num_threads())
        info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except ImportError:
        pass
    return info


def emit(name: str, record: dict, out_dir: Path) -> None:
    record = {"bench": name, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **record, "machine": machine()}
    line = json.dumps(record)
    print(line, flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f"{name}.jsonl", "a") as f:
        f.write(line + "\n")
