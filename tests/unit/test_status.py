"""`esvit status` against real runs: a local pretraining seen while it runs and when done, a failed run with its
error, a collapsing run, missing and stale evaluation results, a release not yet downloaded."""

from __future__ import annotations

import json

import yaml

from tests.conftest import REPO, run_cli
from tests.conftest import status_config as _config
from tests.conftest import status_rows as _status
from tests.conftest import write_metrics as _metrics


def _started_run(res, name: str, log: str) -> None:
    """A run folder with a checkpoint, no lock holder, and its pretrain_model rule's log."""
    (res / "pretrain" / name).mkdir(parents=True)
    (res / "pretrain" / name / "checkpoint.pth").write_bytes(b"x")
    (res / "logs/pretrain").mkdir(parents=True, exist_ok=True)
    (res / "logs/pretrain" / f"{name}.log").write_text(log)


def test_failed_collapsing_stale_and_not_downloaded_runs(tmp_path):
    demo = str(REPO / "configs/pretrain/demo.yaml")
    config = _config(
        tmp_path,
        {
            "crashed": {"config": demo, "dataset": "digits"},
            "collapsing": {"config": demo, "dataset": "digits"},
            "evaluated": {"config": demo, "dataset": "digits"},
            "released": {"release": "swin_tiny_w7_vr"},
        },
    )
    res = tmp_path / "results"
    _started_run(res, "crashed", "pretrain: epoch 3\nesvit: error: loss is nan at epoch 3, step 40; stopped\n")
    collapsing = res / "pretrain/collapsing"
    collapsing.mkdir(parents=True)
    signal = "teacher entropy 5.50 near log K = 5.55 (uniform outputs)"
    (collapsing / "log.jsonl").write_text(
        json.dumps({"epoch": 2, "step": 12, "loss": 5.5, "img_s": 10.0, "collapse": signal}) + "\n"
    )
    evaluated = res / "pretrain/evaluated"
    evaluated.mkdir(parents=True)
    (evaluated / "done.json").write_text("{}")
    (evaluated / "final.pth").write_bytes(b"weights")
    _metrics(
        res, "knn", "evaluated", "digits", 90.0, evaluated / "final.pth", sha="0" * 64
    )  # computed from other weights
    rows = {r["run"]: r for r in _status(tmp_path, config)}
    assert rows["crashed"]["state"] == "failed" and "loss is nan at epoch 3" in rows["crashed"]["error"]
    assert rows["collapsing"]["collapse"] == signal and rows["collapsing"]["state"] == "stopped"
    assert rows["evaluated"]["state"] == "done" and rows["evaluated"]["stale"] == ["knn/evaluated/digits"]
    assert rows["evaluated"]["missing"] == ["probe/evaluated/digits"]
    assert rows["released"]["state"] == "not downloaded" and rows["released"]["where"] == "release swin_tiny_w7_vr"
    table = run_cli("status", "--config", config, "--results", str(res), cwd=tmp_path).stdout
    assert "COLLAPSE?" in table and f"collapsing: collapse suspected at step 12: {signal}" in table
    assert "crashed: failed: esvit: error: loss is nan" in table and "evaluated: stale results" in table


def test_stopped_runs_garbage_records_and_a_missing_results_folder(tmp_path):
    """An interrupted run is stopped, not failed; log lines that are not records, a metrics file that is not
    JSON and a broken job record are skipped (stdout stays one JSON object per run); a results folder that
    does not exist is warned about."""
    demo = str(REPO / "configs/pretrain/demo.yaml")
    config = _config(
        tmp_path, {"interrupted": {"config": demo, "dataset": "digits"}, "odd": {"config": demo, "dataset": "digits"}}
    )
    missing = run_cli("status", "--config", config, "--results", str(tmp_path / "resutls"), "--json", cwd=tmp_path)
    assert missing.returncode == 0 and "results folder" in missing.stderr and "does not exist" in missing.stderr
    res = tmp_path / "results"
    _started_run(res, "interrupted", "INFO pretrain: epoch 1/8\nesvit: interrupted; finished work is kept\n")
    odd = res / "pretrain/odd"
    (odd / "slurm").mkdir(parents=True)
    (odd / "slurm/job.json").write_text('{"job_')
    (odd / "log.jsonl").write_text('5\n[1]\n{"step": 3, "epoch": 0, "loss": "nan"}\n{"step": 4, "epo')
    bad = res / "knn/odd/digits/metrics.json"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x80\x81 not json")
    proc = run_cli("status", "--config", config, "--results", str(res), "--json", cwd=tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    rows = {r["run"]: r for r in (json.loads(line) for line in proc.stdout.splitlines())}
    assert rows["interrupted"]["state"] == "stopped" and rows["interrupted"]["error"] is None
    assert rows["odd"]["step"] == 3 and rows["odd"]["loss"] is None and "skipping unreadable" in proc.stderr


def test_runs_of_one_architecture_share_one_random_baseline(tmp_path):
    """An ablation (same training config, other region weight or seed) is evaluated once at random
    initialisation; another architecture or image size gets its own."""
    from esvit.config import load_config
    from esvit.status import eval_models, eval_results

    (tmp_path / "pico.yaml").write_text(
        yaml.safe_dump({"model": {"arch": "swin_pico"}, "crops": {"global_size": 32, "local_size": [16]}})
    )
    (tmp_path / "nano.yaml").write_text(
        yaml.safe_dump({"model": {"arch": "swin_nano"}, "crops": {"global_size": 64, "local_size": [16]}})
    )
    run = {"config": str(tmp_path / "pico.yaml"), "dataset": "digits"}
    cfg = load_config(
        {
            "datasets": {"digits": {"source": "digits", "splits": ["train", "test"]}},
            "runs": {
                "vr": run,
                "v": {**run, "overrides": ["loss.region_loss_weight=0"]},
                "vr_seed1": {**run, "overrides": ["run.seed=1"]},
                "big": {**run, "overrides": ["crops.global_size=64"]},
                "nano": {"config": str(tmp_path / "nano.yaml"), "dataset": "digits"},
            },
            "eval": {"datasets": ["digits"]},
        }
    )
    models = eval_models(cfg)
    randoms = {name: m for name, m in models.items() if m["checkpoint"] is None}
    assert randoms == {
        "vr_random": {"arch": "swin_pico", "image_size": 32, "checkpoint": None},
        "big_random": {"arch": "swin_pico", "image_size": 64, "checkpoint": None},
        "nano_random": {"arch": "swin_nano", "image_size": 64, "checkpoint": None},
    }
    assert models["v"] == {"arch": "swin_pico", "image_size": 32, "checkpoint": "results/pretrain/v/final.pth"}
    assert {m for m, _, _ in eval_results(cfg)} == set(models) and len(eval_results(cfg)) == 2 * len(models)


def _plan_config(tmp_path, **eval_):
    """A config with a pretrained run (plus one continuing from it), a supervised release, an official release, and
    datasets with and without a val split."""
    from esvit.config import load_config

    (tmp_path / "pico.yaml").write_text(
        yaml.safe_dump({"model": {"arch": "swin_pico"}, "crops": {"global_size": 32, "local_size": [16]}})
    )
    pico = str(tmp_path / "pico.yaml")
    return load_config(
        {
            "data_dir": "my data/",
            "datasets": {
                "digits": {"source": "digits", "splits": ["train", "test"]},
                "pets": {"source": "image_folder", "root": "images", "splits": ["train", "val", "test"]},
                "heldout": {"source": "image_folder", "root": "images", "splits": ["train", "val"]},
            },
            "shard": {"max_samples": 400, "max_mb": 12.5},
            "runs": {
                "base": {"config": pico, "dataset": "digits", "mix": ["pets"]},
                "cont": {"config": pico, "dataset": "digits", "continual_from": {"run": "base", "epoch": 1}},
                "released": {"release": "swin_tiny_w7_vr"},
                "supervised": {"release": "swin_tiny_supervised"},
            },
            "eval": {"datasets": ["pets", "heldout"], "linear_datasets": ["digits"], **eval_},
        },
        check_paths=False,
    )


def test_the_workflow_plan_targets_inputs_and_arguments(tmp_path):
    """What the rules wire: target lists, each job's inputs and arguments, the report's baseline."""
    from esvit import status as plan

    cfg = _plan_config(tmp_path)
    models = plan.eval_models(cfg)
    assert plan.pretrained_runs(cfg) == ["base", "cont"]
    assert plan.release_names(cfg) == ["swin_tiny_supervised", "swin_tiny_w7_vr"]
    assert plan.split_names(cfg) == ["test", "train", "val"]
    assert plan.shard_manifest(cfg, "digits", "train") == "my data/shards/digits/train/manifest.json"
    assert len(plan.shard_targets(cfg)) == 7
    assert plan.shard_targets(cfg)[-1] == "my data/shards/heldout/val/manifest.json"
    assert plan.pretrain_targets(cfg) == ["results/pretrain/base/final.pth", "results/pretrain/cont/final.pth"]
    assert plan.eval_targets(cfg) == [f"results/{ev}/{m}/{d}/metrics.json" for m, ev, d in plan.eval_results(cfg)]
    assert plan.eval_targets(cfg, ["base"]) == [
        "results/knn/base/pets/metrics.json",
        "results/probe/base/pets/metrics.json",
        "results/knn/base/heldout/metrics.json",
        "results/probe/base/heldout/metrics.json",
        "results/linear/base/digits/metrics.json",
        "results/knn/base/digits/metrics.json",
    ]
    # test split: test, else val; a val split beside a test split is the probe's validation split
    assert plan.eval_splits(cfg, "digits") == ("train", None, "test")
    assert plan.eval_splits(cfg, "pets") == ("train", "val", "test")
    assert plan.eval_splits(cfg, "heldout") == ("train", None, "val")
    assert plan.eval_feature_files(cfg, "base", "pets") == {
        "train": "results/features/base/pets/train.pt",
        "test": "results/features/base/pets/test.pt",
        "val": "results/features/base/pets/val.pt",
    }
    assert plan.eval_feature_files(cfg, "base", "heldout") == {
        "train": "results/features/base/heldout/train.pt",
        "test": "results/features/base/heldout/val.pt",
    }
    assert plan.run_shard_manifests(cfg, "base") == [
        "my data/shards/digits/train/manifest.json",
        "my data/shards/pets/train/manifest.json",
    ]
    assert plan.pretrain_inputs(cfg, "base") == {
        "manifest": ["my data/shards/digits/train/manifest.json", "my data/shards/pets/train/manifest.json"]
    }
    assert plan.pretrain_inputs(cfg, "cont")["base"] == "results/pretrain/base/done.json"
    # a model with a checkpoint, and one at random initialisation: what extraction and the diagnostic read
    assert plan.checkpoint_inputs(models, "released") == {"checkpoint": "results/imported/released/final.pth"}
    assert plan.checkpoint_inputs(models, "base_random") == {}
    assert plan.model_args(models, "base") == ["--checkpoint", "results/pretrain/base/final.pth"]
    assert plan.model_args(models, "base_random") == ["--random-init", "--arch", "swin_pico"]
    assert plan.extract_args(models, "base_random") == ["--random-init", "--arch", "swin_pico", "--image-size", "32"]
    assert plan.extract_args(models, "released")[-2:] == ["--image-size", "224"]
    # the diagnostic: on the first evaluation dataset's held-out split, for every model
    assert plan.viz_dataset(cfg) == "pets" and plan.viz_manifest(cfg) == "my data/shards/pets/test/manifest.json"
    assert plan.viz_targets(cfg) == [f"results/viz/{m}/correspondence.json" for m in models]
    assert plan.viz_targets(cfg, ["base"]) == ["results/viz/base/correspondence.json"]
    assert plan.report_args(cfg) == ["--baseline", "supervised"]  # the supervised release, as the paper counts


def test_the_plan_without_evaluation_sets_releases_or_runs(tmp_path):
    from esvit import status as plan

    cfg = _plan_config(tmp_path, correspondence_dataset="heldout")
    assert plan.viz_dataset(cfg) == "heldout" and plan.viz_manifest(cfg).endswith("/heldout/val/manifest.json")
    cfg = _plan_config(tmp_path, datasets=[])
    assert plan.viz_dataset(cfg) == "digits"  # the first linear dataset
    cfg = _plan_config(tmp_path, datasets=[], linear_datasets=[])
    assert plan.viz_dataset(cfg) is None and plan.viz_targets(cfg) == [] and plan.eval_targets(cfg) == []
    del cfg.runs["supervised"]
    assert plan.report_args(cfg) == []  # the report's own default baseline
    # wildcard constraints: longest name first (`x_random` before `x`); a name no file has when there are none
    assert plan.wildcard_regex(["base", "base_random", "cont"]) == "base_random|base|cont"
    assert plan.wildcard_regex([], "no_runs") == "no_runs"


def test_the_report_reads_what_the_plan_declares_and_the_bench_file_only_when_it_exists(tmp_path, monkeypatch):
    from esvit import status as plan

    cfg = _plan_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    inputs = plan.report_inputs(cfg)
    assert inputs["metrics"] == plan.eval_targets(cfg) and inputs["viz"] == plan.viz_targets(cfg)
    assert [p.removesuffix(".png") for p in inputs["viz_png"]] == [p.removesuffix(".json") for p in inputs["viz"]]
    assert inputs["pretrain_done"] == [p.replace("final.pth", "done.json") for p in plan.pretrain_targets(cfg)]
    assert inputs["bench"] == []
    (tmp_path / "results/bench").mkdir(parents=True)
    (tmp_path / plan.BENCH_INFER).write_text("{}\n")
    assert plan.report_inputs(cfg)["bench"] == [plan.BENCH_INFER]
    assert plan.launch_args(cfg) == ["--launcher", "local"]
    cfg.launcher = "slurm"
    assert plan.launch_args(cfg) == ["--launcher", "slurm", "--site", cfg.launch_site]


def test_the_shard_settings_are_the_config_block_with_whole_numbers_as_written(tmp_path):
    """The shard rule's --shard-settings JSON: every key of the `shard` block, in order; whole numbers as
    integers, as a YAML config writes them (the rule's params, which Snakemake's params trigger compares)."""
    from esvit import status as plan
    from esvit.config import load_config

    cfg = _plan_config(tmp_path)
    assert json.loads(plan.shard_settings_json(cfg)) == {
        "max_samples": 400,
        "max_mb": 12.5,
        "workers": 2,
        "seed": 0,
        "max_bad_fraction": 0.001,
        "check": "header",
    }
    shipped = load_config(REPO / "configs/config.yaml", check_paths=False)
    assert plan.shard_settings_json(shipped) == (
        '{"max_samples": 10000, "max_mb": 1024, "workers": 2, "seed": 0, "max_bad_fraction": 0.001, "check": "header"}'
    )
