"""``esvit bench``: every throughput figure the project quotes, measured by one command.

Each benchmark compares side by side in one run on one machine and prints one JSON line (also appended to
``results/bench/<name>.jsonl``) that describes the machine, so a ratio is never a number from two machines.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from esvit.bench import evaluation, loader, shard, train  # noqa: F401  (each registers its benchmarks)
from esvit.bench.registry import BENCHES, emit, machine

__all__ = ["add_arguments", "run", "machine", "BENCHES"]


# ----------------------------------------------------------------------------------------------- entry


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="results/bench", help="folder for the JSON-lines files (default %(default)s)")
    sub = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name, (configure, fn) in BENCHES.items():
        configure(sub.add_parser(name, help=(fn.__doc__ or "").strip().splitlines()[0].replace("%", "%%")))


def run(args: argparse.Namespace) -> int:
    _, fn = BENCHES[args.bench]
    emit(args.bench, fn(args), Path(args.out))
    return 0
