"""The ``esvit`` console script (also ``python -m esvit``).

Each pipeline stage is one subcommand; Snakemake rules call them with explicit paths. Known errors (a bad
config, missing data, a broken shard) print one line, ``esvit: error: ...``, and exit non-zero without a
traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from esvit import __version__

__all__ = ["main", "build_parser"]

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None] = lambda p: None):
    """Register a subcommand: ``configure(parser)`` adds its arguments, the decorated function runs it."""

    def register(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = (help, configure, run)
        return run

    return register


# ------------------------------------------------------------------------------------------------- shard


def _shard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/config.yaml", help="workflow config (default: %(default)s)")
    p.add_argument("--dataset", help="dataset name (a key of the config's `datasets`, or any name with --source)")
    p.add_argument("--split", help="split to shard (default: every split of the dataset)")
    p.add_argument("--out", help="output folder (default: {data_dir}/shards/{dataset}/{split})")
    p.add_argument("--workers", type=int, help="worker processes (overrides shard.workers)")
    p.add_argument("--verify", metavar="DIR", help="check the shard set in DIR against its manifest and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    g = p.add_argument_group("without a config file (how the Snakemake rule calls it)")
    g.add_argument("--source", help="data source name (`esvit sources`); replaces --config")
    g.add_argument("--root", help="raw files of the source")
    g.add_argument("--options", default="{}", help="source options as JSON")
    g.add_argument("--shard-settings", default="{}", help="the config's `shard` block as JSON")
    g.add_argument("--data-dir", default="data", help="data_dir (cache for prepared raw files)")
    p.add_argument("overrides", nargs="*", help="config overrides, key.sub=value")


@command("shard", "write WebDataset shards + manifest from a data source, or --verify a shard set", _shard_args)
def run_shard(args: argparse.Namespace) -> int:
    import json

    from esvit.config import ConfigError, _did_you_mean, load_config
    from esvit.data.shards import ShardSettings, verify_shards, write_shards
    from esvit.data.sources import get_source

    if args.verify:
        problems = verify_shards(args.verify)
        for line in problems:
            print(f"BAD {line}", file=sys.stderr)
        if problems:
            print(f"esvit: error: {args.verify}: {len(problems)} problem(s); rerun `esvit shard` for it", file=sys.stderr)
            return 1
        print(f"{args.verify}: OK")
        return 0
    if not args.dataset:
        raise UsageError("--dataset is required (or --verify DIR)")
    if args.source:
        try:
            options, shard = json.loads(args.options), json.loads(args.shard_settings)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--options / --shard-settings must be JSON ({exc})") from None
        entry = {"source": args.source, "root": args.root or None, "options": options}
        if args.split:
            entry["splits"] = [args.split]
        data = {"data_dir": args.data_dir, "datasets": {args.dataset: entry}, "shard": shard}
        cfg = load_config(data, args.overrides)
    else:
        cfg = load_config(args.config, args.overrides)
    if args.dataset not in cfg.datasets:
        raise ConfigError(
            f"--dataset {args.dataset!r} is not in the config's datasets ({', '.join(cfg.datasets)})."
            f"{_did_you_mean(args.dataset, cfg.datasets)}"
        )
    ds = cfg.datasets[args.dataset]
    if args.split and args.split not in ds.splits:
        raise UsageError(f"--split {args.split!r} is not among datasets.{args.dataset}.splits ({', '.join(ds.splits)})")
    splits = [args.split] if args.split else ds.splits
    sc = cfg.shard
    settings = ShardSettings(
        max_samples=sc.max_samples,
        max_bytes=int(sc.max_mb * 1e6),
        workers=args.workers or sc.workers,
        seed=sc.seed,
        max_bad_fraction=sc.max_bad_fraction,
        check=sc.check,
    )
    source = get_source(ds.source, ds.root, ds.options, cache_dir=str(Path(cfg.data_dir) / "raw" / args.dataset))
    for split in splits:
        out = Path(args.out) if args.out and len(splits) == 1 else Path(cfg.data_dir) / "shards" / args.dataset / split
        write_shards(source, args.dataset, split, out, settings, progress=not args.no_progress)
    return 0


# ----------------------------------------------------------------------------------------------- sources


@command("sources", "list the registered data sources and their options")
def run_sources(args: argparse.Namespace) -> int:
    from esvit.data.sources import SOURCES

    for name, cls in sorted(SOURCES.items()):
        opts = ", ".join(f"{k}={v!r}" for k, v in cls.options.items()) or "-"
        print(f"{name:14s} {cls.doc}\n{'':14s} options: {opts}; root: {'required' if cls.needs_root else 'none'}")
    return 0


# ---------------------------------------------------------------------------------------------- pretrain


def _pretrain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="training config YAML (a diff on the paper defaults); none = the defaults")
    p.add_argument("--shards", help="training shard folder (sets data.shards)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, log.jsonl, config.yaml, final.pth, done.json")
    p.add_argument("--launcher", choices=["local"], default="local", help="local: this process (CPU or one GPU, or torchrun)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    p.add_argument("overrides", nargs="*", help="training-config overrides, key.sub=value")


@command("pretrain", "EsViT self-supervised pretraining (resumes from <out>/checkpoint.pth)", _pretrain_args)
def run_pretrain(args: argparse.Namespace) -> int:
    import logging

    from esvit.train.config import load_train_config
    from esvit.train.loop import train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    overrides = list(args.overrides) + ([f"data.shards={args.shards}"] if args.shards else [])
    cfg = load_train_config(args.config, overrides)
    final = train(cfg, args.out, show_progress=not args.no_progress)
    print(f"pretrain: {final}")
    return 0


# ------------------------------------------------------------------------------------------------- bench


def _bench_args(p: argparse.ArgumentParser) -> None:
    from esvit.bench import add_arguments

    add_arguments(p)


@command("bench", "throughput benchmarks; each prints JSON lines and appends to results/bench/<name>.jsonl", _bench_args)
def run_bench(args: argparse.Namespace) -> int:
    from esvit.bench import run

    return run(args)


# -------------------------------------------------------------------------------------------------- main


class UsageError(ValueError):
    """Wrong command-line arguments."""


def _training_errors() -> tuple[type[Exception], ...]:
    if "esvit.train.loop" not in sys.modules:  # only imported (with torch) when a command needed it
        return ()
    from esvit.train.loop import TrainingError
    from esvit.train.state import CheckpointError

    return (TrainingError, CheckpointError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="esvit",
        description="EsViT pipeline: shard -> pretrain -> extract -> knn / probe -> report.",
    )
    parser.add_argument("--version", action="version", version=f"esvit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help, configure, _) in COMMANDS.items():
        configure(sub.add_parser(name, help=help, description=help))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    from esvit.config import ConfigError
    from esvit.data.shards import ShardError
    from esvit.data.sources import SourceError

    try:
        return COMMANDS[args.command][2](args)
    except (ConfigError, UsageError) as exc:
        print(f"esvit: error: {exc}", file=sys.stderr)
        return 2
    except (ShardError, SourceError, FileNotFoundError, *_training_errors()) as exc:  # evaluated when raised
        print(f"esvit: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("esvit: interrupted; finished work is kept and a rerun continues from it", file=sys.stderr)
        return 130
