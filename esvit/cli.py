"""The ``esvit`` console script (also ``python -m esvit``).

Each pipeline stage is one subcommand; Snakemake rules call them with explicit paths. Known errors (a bad
config, missing data, a broken shard) print one line, ``esvit: error: ...``, and exit non-zero without a
traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from esvit import __version__
from esvit.errors import EsvitError, UsageError

__all__ = ["main", "build_parser"]

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None] = lambda p: None):
    """Register a subcommand: ``configure(parser)`` adds its arguments, the decorated function runs it."""

    def register(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = (help, configure, run)
        return run

    return register


def _positive(kind: type = int):
    """argparse type: a number > 0."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number > 0 (got {text!r})") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0 (got {text})")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0 (got {text!r})") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (got {text})")
    return value


def _default(section: str, name: str):
    """The workflow config's default of ``<section>.<name>`` (``section`` "": top level), which the matching
    option defaults to, so a command typed by hand runs as the rule does (esvit/defaults.py)."""
    from esvit import config
    from esvit.defaults import field_default

    cls = {"": config.PipelineConfig, "datasets": config.DatasetConfig, "eval": config.EvalConfig}[section]
    return field_default(cls, name)


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated integers, e.g. 10,20,100,200 (got {text!r})"
        ) from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"every k must be >= 1 (got {text})")
    return ks


# ------------------------------------------------------------------------------------------------- shard


def _shard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/config.yaml", help="workflow config (default: %(default)s)")
    p.add_argument("--dataset", help="dataset name (a key of the config's `datasets`, or any name with --source)")
    p.add_argument("--split", help="split to shard (default: every split of the dataset)")
    p.add_argument(
        "--out",
        help="output folder: the shard set with --split, else <out>/<split>/ for every split "
        "(default: {data_dir}/shards/{dataset}/{split})",
    )
    p.add_argument("--workers", type=_positive(int), help="worker processes (overrides shard.workers)")
    p.add_argument("--verify", metavar="DIR", help="check the shard set in DIR against its manifest and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    g = p.add_argument_group("without a config file (how the Snakemake rule calls it)")
    g.add_argument("--source", help="data source name (`esvit sources`); replaces --config")
    g.add_argument("--root", help="raw files of the source")
    g.add_argument("--options", default="{}", help="source options as JSON")
    g.add_argument("--shard-settings", default="{}", help="the config's `shard` block as JSON")
    g.add_argument("--data-dir", default=_default("", "data_dir"), help="data_dir (cache for prepared raw files)")
    p.add_argument("overrides", nargs="*", help="config overrides, key.sub=value")


@command("shard", "write WebDataset shards + manifest from a data source, or --verify a shard set", _shard_args)
def run_shard(args: argparse.Namespace) -> int:
    import json

    from esvit.config import load_config
    from esvit.data.shards import shard_dataset, verify_shards

    if args.verify:
        problems = verify_shards(args.verify)
        for line in problems:
            print(f"BAD {line}", file=sys.stderr)
        if problems:
            print(
                f"esvit: error: {args.verify}: {len(problems)} problem(s); rerun `esvit shard` for it", file=sys.stderr
            )
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
    shard_dataset(cfg, args.dataset, args.split, args.out, args.workers, progress=not args.no_progress)
    return 0


# ----------------------------------------------------------------------------------------------- sources


@command("sources", "list the registered data sources and their options")
def run_sources(args: argparse.Namespace) -> int:
    from esvit.data.sources import SOURCES

    for name, cls in sorted(SOURCES.items()):
        opts = ", ".join(f"{k}={v!r}" for k, v in cls.options.items()) or "-"
        print(f"{name:14s} {cls.doc}\n{'':14s} options: {opts}; root: {'required' if cls.needs_root else 'none'}")
    return 0


# ---------------------------------------------------------------------------------------------- download


def _download_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "what",
        choices=["release", "dataset", "list"],
        help="release: a released checkpoint (esvit/resources/releases.yaml); dataset: a transfer set torchvision "
        "can fetch (esvit/resources/datasets.yaml); list: both tables",
    )
    p.add_argument("name", nargs="?", help="the release or dataset key, e.g. swin_tiny_w7_vr, cifar10")
    p.add_argument(
        "--out", help="release: the file to write (its size and sha256 are recorded next to it as <out>.json)"
    )
    p.add_argument("--root", help="dataset: the folder to unpack it under (the dataset's root in the workflow config)")
    p.add_argument(
        "--mirror", help="a site mirror laid out as wget -x saves (<mirror>/<host>/<path>): a URL or a folder"
    )
    p.add_argument(
        "--cache",
        help="a shared download folder (<cache>/<host>/<path>); verified files there are linked, not downloaded",
    )
    p.add_argument("--record", help="dataset: write what was fetched (URLs, files, md5) to this JSON file when done")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


@command(
    "download",
    "download a released checkpoint or a transfer dataset (resumable, verified, mirror / cache aware)",
    _download_args,
)
def run_download(args: argparse.Namespace) -> int:
    from esvit.download import DownloadError, fetch_dataset, fetch_release, known_entry, load_releases

    if args.what == "list":
        from esvit.data.transfer import load_registry

        for name, entry in load_releases().items():
            print(f"release  {name:22s} {entry['arch']:15s} {entry['tasks']:10s} {entry['url']}")
        for name, entry in load_registry().items():
            how = f"torchvision {entry['class']}" if entry.get("auto_download") else f"by hand: {entry['download']}"
            print(f"dataset  {name:22s} {how}")
        return 0
    if not args.name:
        raise UsageError(f"esvit download {args.what} needs a name (esvit download list shows them)")
    from esvit.data.transfer import load_registry

    try:  # the name first, before what else the command needs
        known_entry(load_releases() if args.what == "release" else load_registry(), args.name, args.what)
    except DownloadError as exc:
        raise UsageError(str(exc)) from None
    where = args.out if args.what == "release" else args.root
    if not where:
        raise UsageError(f"esvit download {args.what} needs {'--out FILE' if args.what == 'release' else '--root DIR'}")
    options = {"mirror": args.mirror, "cache": args.cache, "progress": not args.no_progress}
    if args.what == "release":
        print(f"download: {fetch_release(args.name, args.out, **options)}")
        return 0
    fetched = fetch_dataset(args.name, args.root, **options)
    if args.record:
        from esvit.atomic import atomic_write_json

        atomic_write_json(args.record, {"dataset": args.name, "root": args.root, "files": fetched})
    print(f"download: {args.name} under {args.root} ({len(fetched)} files fetched)")
    return 0


# ------------------------------------------------------------------------------------------------ status


def _status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", default="configs/config.yaml", help="the workflow config whose runs to show (default %(default)s)"
    )
    p.add_argument("--results", default="results", help="the results folder the workflow writes (default %(default)s)")
    p.add_argument("--json", action="store_true", help="one JSON object per run instead of the table")


@command(
    "status",
    "every run of a workflow config: state (Slurm job, running, done, failed), progress, ETA, collapse, results",
    _status_args,
)
def run_status_cmd(args: argparse.Namespace) -> int:
    import json

    from esvit.config import load_config
    from esvit.status import as_dicts, run_status, status_table

    rows = run_status(load_config(args.config, check_paths=False), args.results)
    if args.json:
        for row in as_dicts(rows):
            print(json.dumps(row))
    else:
        print(status_table(rows))
    return 0


# ---------------------------------------------------------------------------------------------- pretrain


def _pretrain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="training config YAML (a diff on the paper defaults); none = the defaults")
    p.add_argument("--shards", help="training shard folder (sets data.shards)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, log.jsonl, config.yaml, final.pth, done.json")
    p.add_argument(
        "--launcher",
        choices=["local", "slurm"],
        help="local: this process (CPU or one GPU, or each torchrun process); slurm: submit a submitit job "
        "(launch.* settings) and follow it; default: the config's launch.launcher",
    )
    p.add_argument(
        "--site",
        help="site file of launch settings (partition, account, ...), e.g. cluster_profiles/slurm/submitit.yaml",
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="start afresh even if <out> holds a run: the old folder is "
        "renamed to <out>.old-<time>, never deleted (a run resumes only with its own training settings)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    p.add_argument("overrides", nargs="*", help="training-config overrides, key.sub=value")


def _move_aside(run: Path) -> None:
    """``--restart``: rename a run folder out of the way (refused while a process holds it)."""
    import os

    from esvit.lock import move_aside

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError(
            "--restart renames the run folder, which one process must do: rename it yourself (or use "
            "--launcher slurm, whose launcher does it), then start the distributed run"
        )
    old = move_aside(run)
    if old is not None:
        print(f"pretrain: --restart: the previous run is kept in {old}", flush=True)


@command("pretrain", "EsViT self-supervised pretraining (resumes from <out>/checkpoint.pth)", _pretrain_args)
def run_pretrain(args: argparse.Namespace) -> int:
    import logging

    from esvit.train.config import load_train_config
    from esvit.train.loop import train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    overrides = list(args.overrides) + ([f"data.shards={args.shards}"] if args.shards else [])
    if args.launcher:
        overrides.append(f"launch.launcher={args.launcher}")
    cfg = load_train_config(args.config, overrides, site=args.site)
    if args.restart:
        _move_aside(Path(args.out))
    if cfg.launch.launcher == "slurm":
        from esvit.launch.submit import launch_slurm

        final = launch_slurm(cfg, args.out)
    else:
        final = train(cfg, args.out, show_progress=not args.no_progress)
    print(f"pretrain: {final}")
    return 0


# ------------------------------------------------------------------------------------------------ eval


def _extract_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="an esvit checkpoint (final.pth, checkpoint.pth); omit with --random-init")
    p.add_argument("--random-init", action="store_true", help="evaluate a randomly initialised --arch (baseline)")
    p.add_argument("--arch", help="architecture (required with --random-init)")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed of --random-init")
    p.add_argument("--shards", required=True, help="shard folder of one split")
    p.add_argument("--out", required=True, help="feature cache file (.pt)")
    p.add_argument(
        "--image-size", type=_positive(int), help="eval crop size (default: the run's global crop size, else 224)"
    )
    p.add_argument(
        "--batch-size",
        type=_positive(int),
        default=_default("eval", "batch_size"),
        help="images per batch (default %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=_non_negative_int,
        default=_default("eval", "workers"),
        help="data-loader workers, 0: in this process (default %(default)s)",
    )
    p.add_argument(
        "--device",
        default=_default("eval", "device"),
        help="auto (the GPU when one is visible), cpu, cuda or cuda:N (default %(default)s)",
    )
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bar (or periodic progress lines off a terminal)"
    )


@command("extract", "cache frozen teacher features (pooled + last-4-blocks) of one shard set", _extract_args)
def run_extract(args: argparse.Namespace) -> int:
    from esvit.eval.evaluate import pick_device
    from esvit.eval.features import extract, load_backbone

    if bool(args.checkpoint) == args.random_init:
        raise UsageError("give exactly one of --checkpoint or --random-init")
    backbone, meta = load_backbone(args.checkpoint, args.arch, seed=args.seed)
    size = args.image_size or meta.get("train_crop_size", 224)
    device = pick_device(args.device, "extract")
    from esvit.lock import RunLock

    with RunLock(args.out, "feature cache", folder=False):
        res = extract(
            backbone,
            args.shards,
            args.out,
            meta,
            image_size=size,
            batch_size=args.batch_size,
            num_workers=args.workers,
            device=device,
            show_progress=not args.no_progress,
        )
    print(
        f"extract: {len(res['keys'])} samples, pooled {tuple(res['pooled'].shape)}, "
        f"last blocks {tuple(res['last_blocks'].shape)} -> {args.out}"
    )
    return 0


def _metrics_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train", required=True, help="train feature cache")
    p.add_argument("--test", required=True, help="test feature cache")
    p.add_argument("--out", required=True, help="metrics JSON")
    p.add_argument("--run", required=True, help="run name (for the report)")
    p.add_argument("--dataset", required=True, help="dataset name (for the report)")


def _knn_args(p: argparse.ArgumentParser) -> None:
    _metrics_args(p)
    p.add_argument(
        "--ks",
        type=_ks,
        default=",".join(map(str, _default("eval", "knn_ks"))),
        help="k values, comma-separated (default %(default)s)",
    )
    p.add_argument(
        "--temperature",
        type=_positive(float),
        default=_default("eval", "knn_temperature"),
        help="vote weights exp(sim / T) (default %(default)s)",
    )


@command("knn", "weighted k-NN on cached features -> metrics JSON", _knn_args)
def run_knn(args: argparse.Namespace) -> int:
    from esvit.eval.evaluate import evaluate_knn

    evaluate_knn(args.train, args.test, args.out, args.run, args.dataset, args.ks, args.temperature)
    return 0


def _probe_args(p: argparse.ArgumentParser) -> None:
    _metrics_args(p)
    p.add_argument(
        "--metric",
        default=_default("datasets", "metric"),
        choices=["accuracy", "mean_per_class", "11point_mAP"],
        help="the dataset's metric (esvit/resources/datasets.yaml; the rules pass it): %(choices)s (default "
        "%(default)s)",
    )
    p.add_argument("--val", help="validation feature cache (default: a stratified 20 %% of train)")
    p.add_argument(
        "--device",
        default=_default("eval", "device"),
        help="auto (the GPU when one is visible), cpu, cuda or cuda:N (default %(default)s)",
    )


@command("probe", "L2 logistic-regression probe with the lambda search -> metrics JSON", _probe_args)
def run_probe_cmd(args: argparse.Namespace) -> int:
    from esvit.eval.evaluate import evaluate_probe

    evaluate_probe(args.train, args.test, args.out, args.run, args.dataset, args.metric, args.val, args.device)
    return 0


def _linear_args(p: argparse.ArgumentParser) -> None:
    _metrics_args(p)
    p.add_argument(
        "--mode",
        choices=["fast", "paper"],
        default=_default("eval", "linear_mode"),
        help="fast: cached centre-crop features; paper: augmented views through the frozen backbone",
    )
    p.add_argument("--shards", help="training shard folder (paper mode)")
    p.add_argument(
        "--epochs", type=_positive(int), default=_default("eval", "linear_epochs"), help="epochs (default %(default)s)"
    )
    p.add_argument(
        "--batch-size",
        type=_positive(int),
        default=_default("eval", "linear_batch_size"),
        help="images per step (default %(default)s)",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=_default("eval", "linear_lr"),
        help="base lr, scaled by batch / 256 (default %(default)s)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the head's initialisation and the data order (default %(default)s)"
    )
    p.add_argument(
        "--workers",
        type=_non_negative_int,
        default=_default("eval", "workers"),
        help="data-loader workers (paper mode)",
    )
    p.add_argument(
        "--device",
        default=_default("eval", "device"),
        help="auto (the GPU when one is visible), cpu, cuda or cuda:N (default %(default)s)",
    )
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bar (or periodic progress lines off a terminal)"
    )


@command("linear", "the ImageNet linear protocol (SGD on the last-4-blocks features) -> metrics JSON", _linear_args)
def run_linear(args: argparse.Namespace) -> int:
    from esvit.eval.evaluate import evaluate_linear

    evaluate_linear(
        args.train,
        args.test,
        args.out,
        args.run,
        args.dataset,
        mode=args.mode,
        shards=args.shards,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        workers=args.workers,
        device=args.device,
        show_progress=not args.no_progress,
    )
    return 0


# -------------------------------------------------------------------------------------------- report


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--results",
        default="results",
        help="results folder (default %(default)s). By hand (no --metrics) "
        "the report reads every metrics JSON, run folder, correspondence record and bench/infer.jsonl under "
        "it; with --metrics it only names the folder (the default --out; recorded checkpoint paths are "
        "relative to its parent)",
    )
    p.add_argument("--out", help="output folder (default <results>/report)")
    p.add_argument(
        "--baseline",
        help="run the transfer table counts wins against, as the paper counts them against the supervised Swin-T "
        "(default: a run named *supervised*, else the first *_random run)",
    )
    g = p.add_argument_group("the files to read, and nothing else (how the Snakemake rule calls it)")
    g.add_argument(
        "--metrics",
        nargs="*",
        metavar="JSON",
        help="metrics JSONs (results/{knn,probe,linear}/<model>/<dataset>/metrics.json)",
    )
    g.add_argument(
        "--runs",
        nargs="*",
        default=[],
        metavar="PATH",
        help="runs pretrained here: each run's folder or its done.json (log.jsonl, config.yaml and "
        "checkpoints beside it)",
    )
    g.add_argument(
        "--viz", nargs="*", default=[], metavar="JSON", help="correspondence.json of esvit viz (its PNG beside it)"
    )
    g.add_argument(
        "--bench", nargs="*", default=[], metavar="JSONL", help="esvit bench infer records (the throughput figure)"
    )


@command("report", "tables beside the paper, plots and report.html from every metrics JSON", _report_args)
def run_report(args: argparse.Namespace) -> int:
    from esvit.errors import ReportError
    from esvit.report.build import ReportInputs, build_report

    try:
        if args.metrics is not None:
            inputs = ReportInputs.given(args.results, args.metrics, args.runs, args.viz, args.bench)
        elif args.runs or args.viz or args.bench:
            raise UsageError("--runs, --viz and --bench name the files of a report given its --metrics")
        elif not Path(args.results).is_dir():
            raise UsageError(f"results folder {args.results!r} does not exist; run the pipeline first (make demo)")
        else:
            inputs = ReportInputs.scan(args.results)
        files = build_report(inputs, args.out, args.baseline)
    except ReportError as exc:
        raise UsageError(str(exc)) from None
    print(f"report: {files['report.html']} ({', '.join(sorted(files))})")
    return 0


def _viz_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="an esvit checkpoint; omit with --random-init")
    p.add_argument(
        "--random-init",
        action="store_true",
        help="the architecture at random initialisation (with --arch), the baseline",
    )
    p.add_argument("--arch", help="architecture (required with --random-init)")
    p.add_argument("--shards", required=True, help="shard folder to draw images from")
    p.add_argument(
        "--n", type=_positive(int), default=512, help="images for the correspondence accuracy (default %(default)s)"
    )
    p.add_argument("--image-size", type=_positive(int), default=224, help="view size (default %(default)s)")
    p.add_argument("--out", required=True, help="output folder: correspondence.json + correspondence.png")


@command("viz", "matched regions of two views and the correspondence accuracy diagnostic", _viz_args)
def run_viz(args: argparse.Namespace) -> int:
    from esvit.eval.correspondence import run_correspondence

    if bool(args.checkpoint) == args.random_init:
        raise UsageError("give exactly one of --checkpoint or --random-init")
    res = run_correspondence(args.checkpoint, args.arch, args.shards, args.n, args.image_size, args.out)
    print(
        f"viz: correspondence accuracy {res['accuracy']:.1f} % over {res['pairs']} images "
        f"({res['regions_per_view']} regions per view) -> {Path(args.out)}"
    )
    return 0


# ------------------------------------------------------------------------------------------- interop


def _import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--official",
        required=True,
        help="the checkpoint to import: an official EsViT checkpoint.pth (microsoft/esvit), or timm weights with "
        "--format timm",
    )
    p.add_argument("--arch", required=True, help="its architecture, e.g. swin_tiny_w7, swin_base_w14")
    p.add_argument("--out", required=True, help="the converted checkpoint, usable by esvit extract --checkpoint")
    p.add_argument(
        "--key",
        default="teacher",
        choices=["teacher", "student"],
        help="which network's backbone (default %(default)s, as the paper evaluates)",
    )
    p.add_argument(
        "--format",
        default="official",
        choices=["official", "timm"],
        help="official: microsoft/esvit's checkpoint.pth; timm: a timm state dict (.safetensors or .pth), e.g. a "
        "supervised Swin (default %(default)s)",
    )


@command(
    "import", "convert an official EsViT checkpoint (teacher backbone) or timm weights for esvit extract", _import_args
)
def run_import(args: argparse.Namespace) -> int:
    from esvit.models.checkpoint import import_official

    print(f"import: {import_official(args.official, args.arch, args.out, args.key, args.format)}")
    return 0


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="an esvit checkpoint (final.pth)")
    p.add_argument("--out", required=True, help="backbone state dict for timm")
    p.add_argument(
        "--key",
        default="teacher",
        choices=["teacher", "student"],
        help="which network's backbone (default %(default)s, as the paper evaluates)",
    )


@command(
    "export", "write a checkpoint's backbone as a timm state dict (timm.create_model(..., num_classes=0))", _export_args
)
def run_export(args: argparse.Namespace) -> int:
    from esvit.models.checkpoint import export_backbone

    out, name = export_backbone(args.checkpoint, args.out, args.key)
    print(f"export: {out}  (timm.create_model({name!r}, num_classes=0, checkpoint_path={str(out)!r}))")
    return 0


# ------------------------------------------------------------------------------------------------- bench


def _bench_args(p: argparse.ArgumentParser) -> None:
    from esvit.bench import add_arguments

    add_arguments(p)


@command(
    "bench", "throughput benchmarks; each prints JSON lines and appends to results/bench/<name>.jsonl", _bench_args
)
def run_bench(args: argparse.Namespace) -> int:
    from esvit.bench import run

    return run(args)


# -------------------------------------------------------------------------------------------------- main


def _one_line(exc: BaseException) -> str:
    """The error's own message: an error raised in a data-loader worker comes back wrapped with the worker's
    traceback ("Caught X in DataLoader worker ... Original Traceback ..."), whose last line is the message."""
    text = str(exc)
    if "Original Traceback" in text:
        last = [ln for ln in text.strip().splitlines() if ln.strip()][-1]
        head, _, rest = last.partition(": ")
        text = rest if rest and head.rsplit(".", 1)[-1] == type(exc).__name__ else last
    return text


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
    args, extra = parser.parse_known_args(argv)
    if extra:  # `a=1 --out R b=2`: overrides after an option are overrides too; anything else is an error
        if hasattr(args, "overrides") and all(re.match(r"^[A-Za-z_][\w.]*=", e) for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not args.command:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command][2](args)
    except BrokenPipeError:  # `esvit status | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except EsvitError as exc:
        print(f"esvit: error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except FileNotFoundError as exc:  # a path given on the command line
        print(f"esvit: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("esvit: interrupted; finished work is kept and a rerun continues from it", file=sys.stderr)
        return 130
