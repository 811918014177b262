"""``esvit bench``: every throughput figure the project quotes, measured by one command.

Each benchmark compares side by side in one run on one machine and prints one JSON line (also appended to
``results/bench/<name>.jsonl``) that describes the machine, so a ratio is never a number from two machines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

__all__ = ["add_arguments", "run", "machine", "BENCHES"]

BENCHES: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], dict]]] = {}


def benchmark(name: str, configure: Callable[[argparse.ArgumentParser], None]):
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


def _emit(name: str, record: dict, out_dir: Path) -> None:
    record = {"bench": name, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **record, "machine": machine()}
    line = json.dumps(record)
    print(line, flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f"{name}.jsonl", "a") as f:
        f.write(line + "\n")


# ----------------------------------------------------------------------------------------------- entry


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="results/bench", help="folder for the JSON-lines files (default %(default)s)")
    sub = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name, (configure, fn) in BENCHES.items():
        configure(sub.add_parser(name, help=(fn.__doc__ or "").strip().splitlines()[0].replace("%", "%%")))


def run(args: argparse.Namespace) -> int:
    _, fn = BENCHES[args.bench]
    _emit(args.bench, fn(args), Path(args.out))
    return 0


# the benchmarks register themselves on import
from esvit.bench import evaluation, loader, shard, train  # noqa: E402,F401
