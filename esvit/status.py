"""``esvit status``: where every run of a workflow config stands, read from the files the pipeline writes.

Per run: its state (not started / queued or running on Slurm with the job id / running here / done / failed
with the job's own error), epoch and step, the last loss, images/s, an ETA, a collapse flag, and which of its
evaluation results exist, are missing or are stale. Nothing is locked or written, so it can run from a login
node while the jobs run: the run folder's lock tells a local run, ``<run>/slurm/job.json`` and
``squeue`` / ``sacct`` a Slurm one, ``log.jsonl`` the progress.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import re
import shutil
import struct
import sys
import time
import typing
from pathlib import Path
from typing import Any

from esvit.config import PipelineConfig

# Written by `esvit bench infer`; the report shows its throughputs beside the paper's.
BENCH_INFER = "results/bench/infer.jsonl"

__all__ = [
    "eval_models",
    "eval_results",
    "imported",
    "pretrained_runs",
    "release_names",
    "split_names",
    "wildcard_regex",
    "shard_manifest",
    "shard_targets",
    "pretrain_targets",
    "eval_targets",
    "eval_splits",
    "eval_feature_files",
    "run_shard_manifests",
    "pretrain_inputs",
    "checkpoint_inputs",
    "model_args",
    "extract_args",
    "viz_dataset",
    "viz_manifest",
    "viz_targets",
    "report_inputs",
    "launch_args",
    "report_args",
    "shard_settings_json",
    "run_status",
    "status_table",
    "RunStatus",
    "as_dicts",
]


def _multilabel(cfg: PipelineConfig, dataset: str) -> bool:
    from esvit.data.sources import SOURCES

    return bool(getattr(SOURCES[cfg.datasets[dataset].source], "entry", {}).get("multilabel"))


def imported(run) -> bool:
    """A released checkpoint (a named release, or a file in the official or timm layout) that the workflow
    converts to this project's format first (results/imported/{run}/final.pth)."""
    return bool(run.release or (run.checkpoint and run.checkpoint_format in ("official", "timm")))


def eval_models(cfg: PipelineConfig) -> dict[str, dict[str, Any]]:
    """Every model the workflow evaluates, name -> {arch, image_size, checkpoint (None: random init)}: each
    run's final teacher (or its released / imported checkpoint) and, with ``eval.random_init_baseline``, the
    architecture at random initialisation as ``{run}_random``, once per (arch, image size): runs that differ only
    in their training settings (an ablation, a second seed) share one random baseline, named after the first."""
    from esvit.train.config import load_train_config

    models: dict[str, dict[str, Any]] = {}
    randoms: dict[tuple[str, int], str] = {}
    for name, run in cfg.runs.items():
        if run.config:
            train = load_train_config(run.config, run.overrides)
            spec = {"arch": train.model.arch, "image_size": train.crops.global_size}
            ckpt = f"results/pretrain/{name}/final.pth"
        else:
            spec = {"arch": run.arch, "image_size": run.image_size}
            ckpt = f"results/imported/{name}/final.pth" if imported(run) else run.checkpoint
        models[name] = {**spec, "checkpoint": ckpt}
        key = (spec["arch"], spec["image_size"])
        if cfg.eval.random_init_baseline and key not in randoms:
            randoms[key] = f"{name}_random"
    for (arch, size), name in randoms.items():
        models[name] = {"arch": arch, "image_size": size, "checkpoint": None}
    return models


def eval_results(cfg: PipelineConfig, models: list[str] | None = None) -> list[tuple[str, str, str]]:
    """Every (model, eval, dataset) the workflow evaluates: each of ``models`` (default: ``eval_models``) on
    each evaluation dataset with k-NN (not multi-label sets) and the probe, and on each linear dataset with the
    linear protocol and the k-NN. ``results/{eval}/{model}/{dataset}/metrics.json`` holds each."""
    out = []
    for model in eval_models(cfg) if models is None else models:
        for dataset in cfg.eval.datasets:
            for ev in ("knn", "probe"):
                if not (ev == "knn" and _multilabel(cfg, dataset)):
                    out.append((model, ev, dataset))
        for dataset in cfg.eval.linear_datasets:  # ImageNet: the linear protocol and the k-NN (the paper's two)
            out.append((model, "linear", dataset))
            if dataset not in cfg.eval.datasets and not _multilabel(cfg, dataset):
                out.append((model, "knn", dataset))
    return out


# ------------------------------------------------------------------------------------- the workflow's plan
# What the Snakemake rules plan, from a validated config: the target lists, the inputs and arguments of a job.
# The rule files only wire these to rules; `esvit status` checks the same lists.


def _data_dir(cfg: PipelineConfig) -> str:
    return cfg.data_dir.rstrip("/")


def pretrained_runs(cfg: PipelineConfig) -> list[str]:
    """The runs pretrained here (those with a training config), in config order."""
    return [name for name, run in cfg.runs.items() if run.config]


def release_names(cfg: PipelineConfig) -> list[str]:
    """The released checkpoints the config names (``runs.<name>.release``), sorted, each once."""
    return sorted({run.release for run in cfg.runs.values() if run.release})


def split_names(cfg: PipelineConfig) -> list[str]:
    """Every split name of the config's datasets, sorted, each once."""
    return sorted({split for ds in cfg.datasets.values() for split in ds.splits})


def wildcard_regex(names: typing.Iterable[str], none: str = "no_names") -> str:
    """A wildcard constraint that matches one of ``names``: the longest first, as a regex alternation takes the
    first alternative that matches (``x_random`` before ``x``); ``none``, a name no file has, when there are
    none."""
    return "|".join(sorted(names, key=len, reverse=True)) or none


def shard_manifest(cfg: PipelineConfig, dataset: str, split: str) -> str:
    """The manifest of one shard set, ``{data_dir}/shards/{dataset}/{split}/manifest.json``: written last, so
    its presence means the set is complete (docs/design.md)."""
    return f"{_data_dir(cfg)}/shards/{dataset}/{split}/manifest.json"


def shard_targets(cfg: PipelineConfig) -> list[str]:
    """The manifest of every split of every dataset."""
    return [shard_manifest(cfg, name, split) for name, ds in cfg.datasets.items() for split in ds.splits]


def pretrain_targets(cfg: PipelineConfig) -> list[str]:
    """The final checkpoint of every run pretrained here."""
    return [f"results/pretrain/{run}/final.pth" for run in pretrained_runs(cfg)]


def eval_targets(cfg: PipelineConfig, models: list[str] | None = None) -> list[str]:
    """The metrics JSON of every (model, eval, dataset) of :func:`eval_results` (``models``: as there): the list
    ``esvit status`` checks."""
    return [f"results/{ev}/{model}/{dataset}/metrics.json" for model, ev, dataset in eval_results(cfg, models)]


def eval_splits(cfg: PipelineConfig, dataset: str) -> tuple[str, str | None, str]:
    """(train, val or None, test) split names of an evaluation dataset.

    Args:
        cfg: the workflow config.
        dataset: a key of ``cfg.datasets`` with a train and a test (or val) split.

    Returns:
        The test split is ``test``, else ``val``; a ``val`` split next to a ``test`` split is the probe's
        validation split (None: the probe holds out 20 % of train).
    """
    splits = cfg.datasets[dataset].splits
    test = "test" if "test" in splits else "val"
    return "train", ("val" if test == "test" and "val" in splits else None), test


def eval_feature_files(cfg: PipelineConfig, model: str, dataset: str) -> dict[str, str]:
    """The cached features a k-NN, probe or linear job reads: ``train``, ``test`` and (if any) ``val``."""
    train, val, test = eval_splits(cfg, dataset)
    base = f"results/features/{model}/{dataset}"
    return {"train": f"{base}/{train}.pt", "test": f"{base}/{test}.pt"} | ({"val": f"{base}/{val}.pt"} if val else {})


def run_shard_manifests(cfg: PipelineConfig, run: str) -> list[str]:
    """The manifests of the shard sets a pretraining run reads: its dataset's, then those of any mixed in."""
    spec = cfg.runs[run]
    return [shard_manifest(cfg, name, spec.split) for name in [spec.dataset, *spec.mix]]


def pretrain_inputs(cfg: PipelineConfig, run: str) -> dict[str, Any]:
    """What a pretraining run reads: its shard manifests (``manifest``) and, in continual mode, the run it
    continues from (``base``: its ``done.json``, so its checkpoint<epoch>.pth is there)."""
    spec = cfg.runs[run]
    inputs: dict[str, Any] = {"manifest": run_shard_manifests(cfg, run)}
    if spec.continual_from is not None:
        inputs["base"] = f"results/pretrain/{spec.continual_from.run}/done.json"
    return inputs


def checkpoint_inputs(models: dict[str, dict[str, Any]], model: str) -> dict[str, str]:
    """``{"checkpoint": path}`` for an evaluated model with a checkpoint; ``{}`` for one at random init.

    Args:
        models: :func:`eval_models` of the config.
        model: a key of ``models``.
    """
    ckpt = models[model]["checkpoint"]
    return {"checkpoint": ckpt} if ckpt else {}


def model_args(models: dict[str, dict[str, Any]], model: str) -> list[str]:
    """The arguments naming an evaluated model (``esvit extract``, ``esvit viz``): ``--checkpoint`` and its
    file, or ``--random-init --arch`` and its architecture."""
    spec = models[model]
    if spec["checkpoint"]:
        return ["--checkpoint", spec["checkpoint"]]
    return ["--random-init", "--arch", spec["arch"]]


def extract_args(models: dict[str, dict[str, Any]], model: str) -> list[str]:
    """``esvit extract``'s arguments naming the model (:func:`model_args`) and its image size."""
    return [*model_args(models, model), "--image-size", str(models[model]["image_size"])]


def viz_dataset(cfg: PipelineConfig) -> str | None:
    """The dataset whose held-out images the correspondence diagnostic (``esvit viz``) uses:
    ``eval.correspondence_dataset``, else the first evaluation dataset, else the first linear one (None: none,
    and no diagnostic)."""
    return cfg.eval.correspondence_dataset or next(iter([*cfg.eval.datasets, *cfg.eval.linear_datasets]), None)


def viz_manifest(cfg: PipelineConfig) -> str:
    """The manifest of the shard set the diagnostic draws from: :func:`viz_dataset`'s test split."""
    dataset = viz_dataset(cfg)
    return shard_manifest(cfg, dataset, eval_splits(cfg, dataset)[2])


def viz_targets(cfg: PipelineConfig, models: list[str] | None = None) -> list[str]:
    """The correspondence diagnostic of every evaluated model (``models``, default :func:`eval_models`); none
    without a :func:`viz_dataset`."""
    if not viz_dataset(cfg):
        return []
    return [f"results/viz/{model}/correspondence.json" for model in (eval_models(cfg) if models is None else models)]


def report_inputs(cfg: PipelineConfig, models: list[str] | None = None) -> dict[str, list[str]]:
    """Every file ``esvit report`` reads in the workflow, by its option: the metrics records, the correspondence
    results (JSON and figure), the finished runs' ``done.json`` and, when ``esvit bench infer`` has written it,
    the throughput file (only then: a plan must not wait for a benchmark nobody ran)."""
    viz = viz_targets(cfg, models)
    return {
        "metrics": eval_targets(cfg, models),
        "viz": viz,
        "viz_png": [str(Path(p).with_suffix(".png")) for p in viz],
        "pretrain_done": [f"results/pretrain/{run}/done.json" for run in pretrained_runs(cfg)],
        "bench": [p for p in [BENCH_INFER] if Path(p).is_file()],
    }


def launch_args(cfg: PipelineConfig) -> list[str]:
    """``esvit pretrain``'s launcher options in the workflow: Slurm with the site file, or local."""
    return ["--launcher", "slurm", "--site", cfg.launch_site] if cfg.launcher == "slurm" else ["--launcher", "local"]


def report_args(cfg: PipelineConfig) -> list[str]:
    """``esvit report``'s ``--baseline``, the run it counts transfer wins against: the first supervised release
    (a release in timm's format), as the paper counts them; none (``[]``) leaves the report's own default, a
    random initialisation."""
    baseline = [name for name, run in cfg.runs.items() if run.release and run.checkpoint_format == "timm"]
    return ["--baseline", baseline[0]] if baseline else []


def shard_settings_json(cfg: PipelineConfig) -> str:
    """The config's ``shard`` block as the JSON ``esvit shard --shard-settings`` reads. Whole numbers are written
    as integers (``1024``, not ``1024.0``) as the YAML writes them, so the shard rule's params, and with them
    Snakemake's params rerun trigger, do not depend on how the config was read."""
    values = dataclasses.asdict(cfg.shard)
    return json.dumps({k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in values.items()})


@dataclasses.dataclass
class RunStatus:
    run: str
    state: str  # not started | queued | running | done | failed | downloaded | imported | given
    where: str = ""  # "Slurm job 123 (RUNNING)", "pid 42 on node1", ...
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    loss: float | None = None
    img_s: float | None = None
    eta_s: float | None = None
    collapse: str | None = None
    error: str | None = None
    results_done: int = 0
    results_total: int = 0
    missing: list[str] = dataclasses.field(default_factory=list)
    stale: list[str] = dataclasses.field(default_factory=list)


_FLOCK = "hhqqii"  # struct flock on Linux: type, whence, start, len, pid (+ padding)


def _lock_holder(run_dir: Path) -> dict | None:
    """The holder of ``<run>/.lock`` when a process holds it (a run training here), else None. Asks the kernel
    (F_GETLK) without taking the lock, so a run starting at that moment is never refused because of it."""
    path = run_dir / ".lock"
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0, 0)
        try:
            l_type = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, query))[0]
        except OSError:  # no locking on this file system: nothing to tell
            return None
        if l_type == fcntl.F_UNLCK:
            return None
        try:
            holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        except ValueError:
            holder = {}
        return holder if isinstance(holder, dict) else {}
    finally:
        os.close(fd)


def _slurm(run_dir: Path) -> tuple[str, str] | None:
    """(job id, Slurm state) of the run's newest submitted job, if it was submitted through Slurm."""
    record = run_dir / "slurm" / "job.json"
    if not record.is_file():
        return None
    try:
        job_id = str(json.loads(record.read_text())["job_id"])
    except (ValueError, KeyError, TypeError):
        return None
    state = ""
    if shutil.which("squeue"):
        from esvit.launch.submit import job_state

        state = job_state(job_id)
    return job_id, state or "unknown to Slurm"


def _log(run_dir: Path) -> list[dict]:
    path = run_dir / "log.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being written
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            out.append({k: v for k, v in record.items() if not (k in _NUMBERS and not isinstance(v, (int, float)))})
    return out


_NUMBERS = ("epoch", "loss", "img_s", "teacher_entropy")


def _steps_per_epoch(records: list[dict]) -> int | None:
    """Steps of one epoch, from the log: the last record of epoch 0 is written at its last step."""
    first = [r["step"] for r in records if r.get("epoch") == 0]
    return max(first) if first and any(r.get("epoch", 0) >= 1 for r in records) else None


def _last_error(log: Path) -> str | None:
    if not log.is_file():
        return None
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("esvit: error:") or re.match(r"^[\w.]*(Error|Exception)\b", ln)]
    return errors[-1] if errors else None  # an interrupted run (esvit: interrupted ...) is stopped, not failed


def _pretrain_state(name: str, run_dir: Path, results: Path, st: RunStatus) -> None:
    if (run_dir / "done.json").is_file():
        st.state = "done"
        if (run_dir / "slurm" / "job.json").is_file():
            st.where = f"Slurm job {json.loads((run_dir / 'slurm' / 'job.json').read_text())['job_id']}"
        return
    holder = _lock_holder(run_dir) if run_dir.is_dir() else None
    slurm = _slurm(run_dir) if run_dir.is_dir() and holder is None else None
    if holder is not None:  # training right now (here, or in a Slurm job on a node sharing this file system)
        st.state = "running"
        job = f", Slurm job {holder['slurm_job']}" if holder.get("slurm_job") else ""
        st.where = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}{job}"
    elif slurm:
        job_id, state = slurm
        st.where = f"Slurm job {job_id} ({state})"
        if state in ("PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "RESV_DEL_HOLD"):
            st.state = "queued"
        elif state in ("RUNNING", "COMPLETING", "SUSPENDED", "STAGE_OUT", "RESIZING"):
            st.state = "running"
        elif state.startswith(
            ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE")
        ):
            from esvit.launch.submit import job_error

            st.state, st.error = "failed", f"{state}: {job_error(run_dir / 'slurm', job_id)}"
        elif state == "COMPLETED":  # the job ended without finishing the run (a stop it asked for): resumable
            st.state = "stopped"
        else:
            st.state = "submitted"
    elif (run_dir / "checkpoint.pth").is_file() or (run_dir / "log.jsonl").is_file():
        st.state = "stopped"  # started, not running now, not finished: a rerun resumes it
        st.error = _last_error(results / "logs" / "pretrain" / f"{name}.log")
        if st.error:
            st.state = "failed"
    else:
        st.state = "not started"


def run_status(cfg: PipelineConfig, results: str | Path = "results") -> list[RunStatus]:
    """The status of every run in ``cfg``, read from ``results`` (see the module docstring)."""
    from esvit.train.config import load_train_config

    results = Path(results)
    if not results.is_dir():
        print(
            f"esvit: warning: results folder {str(results)!r} does not exist: nothing has run here yet (or check "
            "--results)",
            file=sys.stderr,
        )
    expected = eval_results(cfg)
    metrics = _metrics(results)
    out = []
    for name, run in cfg.runs.items():
        st = RunStatus(name, "")
        if run.config:
            run_dir = results / "pretrain" / name
            _pretrain_state(name, run_dir, results, st)
            records = _log(run_dir)
            try:
                st.epochs = load_train_config(run.config, run.overrides).optim.epochs
            except Exception:  # a config changed since: the status still shows what the log says
                st.epochs = None
            if records:
                last = records[-1]
                st.epoch, st.step, st.loss, st.img_s = (
                    last.get("epoch"),
                    last.get("step"),
                    last.get("loss"),
                    last.get("img_s"),
                )
                st.collapse = last.get("collapse")
                per_epoch = _steps_per_epoch(records)
                if st.state in ("running", "queued", "submitted") and per_epoch and st.epochs and last.get("img_s"):
                    secs_per_step = _secs_per_step(records)
                    left = st.epochs * per_epoch - last["step"]
                    st.eta_s = max(left, 0) * secs_per_step if secs_per_step is not None else None
        elif run.release:
            imported = results / "imported" / name / "final.pth"
            got = Path(cfg.download.release_file(cfg.data_dir, run.release))
            st.state = "imported" if imported.is_file() else "downloaded" if got.is_file() else "not downloaded"
            st.where = f"release {run.release}"
        else:
            imported = results / "imported" / name / "final.pth"
            st.state = "imported" if imported.is_file() else "given"
            st.where = str(run.checkpoint)
        mine = [e for e in expected if e[0] in (name, f"{name}_random")]
        st.results_total = len(mine)
        for model, ev, dataset in mine:
            key = (model, ev, dataset)
            label = f"{ev}/{model}/{dataset}"
            if key not in metrics:
                st.missing.append(label)
            else:
                st.results_done += 1
                if metrics[key]:
                    st.stale.append(label)
        out.append(st)
    return out


def _secs_per_step(records: list[dict]) -> float | None:
    """Seconds per step over the last records (wall clock, data waits included)."""
    stamped = []
    for r in records[-20:]:
        if isinstance(r.get("time_s"), (int, float)):
            stamped.append((r["step"], float(r["time_s"])))
        elif isinstance(r.get("time"), str):
            try:
                stamped.append((r["step"], time.mktime(time.strptime(r["time"], "%Y-%m-%dT%H:%M:%S"))))
            except ValueError:
                continue
    if len(stamped) < 2 or stamped[-1][0] <= stamped[0][0] or stamped[-1][1] <= stamped[0][1]:
        return None
    return (stamped[-1][1] - stamped[0][1]) / (stamped[-1][0] - stamped[0][0])


def _metrics(results: Path) -> dict[tuple[str, str, str], bool]:
    """(model, eval, dataset) -> stale, for every metrics JSON under ``results``."""
    from esvit.report.tables import collect_metrics, mark_stale

    df = collect_metrics(results)
    if df.empty:
        return {}
    df = mark_stale(df, results)
    return {(r.run, r.eval, r.dataset): bool(r.stale) for r in df.itertuples()}


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    h, m = divmod(int(seconds) // 60, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{int(seconds) % 60:02d}s"


def status_table(rows: list[RunStatus]) -> str:
    """The status as a fixed-width table, then one line per failure, collapse, missing or stale result."""
    head = ["run", "state", "where", "epoch", "step", "loss", "img/s", "ETA", "results", "stale"]
    lines = []
    for r in rows:
        # the log's epoch counts from 0: the table shows the epoch being trained, 1-based, of how many
        epoch = (
            f"{r.epoch + 1}/{r.epochs}"
            if r.epoch is not None and r.epochs
            else (str(r.epoch + 1) if r.epoch is not None else "—")
        )
        state = r.state + (" (COLLAPSE?)" if r.collapse else "")
        lines.append(
            [
                r.run,
                state,
                r.where or "—",
                epoch,
                str(r.step) if r.step is not None else "—",
                f"{r.loss:.4f}" if r.loss is not None else "—",
                f"{r.img_s:.1f}" if r.img_s is not None else "—",
                _fmt_eta(r.eta_s),
                f"{r.results_done}/{r.results_total}",
                str(len(r.stale)),
            ]
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(head)]
    text = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    text += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    for r in rows:
        if r.error:
            text.append(f"{r.run}: failed: {r.error}")
        if r.collapse:
            text.append(f"{r.run}: collapse suspected at step {r.step}: {r.collapse}")
        if r.missing and r.state in ("done", "imported", "given"):
            text.append(f"{r.run}: missing results: {', '.join(r.missing[:6])}{' ...' if len(r.missing) > 6 else ''}")
        if r.stale:
            text.append(f"{r.run}: stale results (their checkpoint changed since): {', '.join(r.stale[:6])}")
    return "\n".join(text)


def as_dicts(rows: list[RunStatus]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(r) for r in rows]
