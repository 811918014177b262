"""The Snakemake side: the dry run lists the expected jobs, the shard rule runs for real, bad configs stop it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from esvit.data.shards import verify_shards
from tests.conftest import REPO, env_with_python

SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]


def snakemake(
    workdir: Path, *args: str, config: dict | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    cmd = [*SNAKEMAKE, "--directory", str(workdir)]
    if config is not None:
        path = workdir / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        cmd += ["--configfile", str(path)]
    return subprocess.run(
        [*cmd, *args], cwd=workdir, env=env_with_python(), capture_output=True, text=True, timeout=timeout
    )


def job_counts(output: str) -> dict[str, int]:
    """Parse the 'Job stats' table of a (dry) run."""
    table = output.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m.group(1) != "total"}


def small_config() -> dict:
    return {
        "data_dir": "data",
        "datasets": {
            "digits": {"source": "digits", "splits": ["train", "test"]},
            "mnist5k": {"source": "mnist5k", "splits": ["test"]},
        },
        "shard": {"max_samples": 400},
    }


def test_dry_run_of_the_default_config_lists_one_shard_job_per_dataset_split(tmp_path):
    default = yaml.safe_load((REPO / "configs/config.yaml").read_text())
    if not Path(default["datasets"]["fashion_mnist"]["root"]).is_dir():
        default["datasets"].pop("fashion_mnist")
        default["eval"]["datasets"] = [d for d in default["eval"]["datasets"] if d != "fashion_mnist"]
        default["eval"].pop("correspondence_dataset", None)
        for run in default["runs"].values():
            run["dataset"] = "mnist5k"
            run["mix"] = [d for d in run.get("mix", []) if d != "mnist5k"]
    for run in default["runs"].values():
        run["config"] = str(REPO / run["config"])
    proc = snakemake(tmp_path, "-n", "--cores", "2", config=default)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    expected = sum(len(d.get("splits", ["train", "test"])) for d in default["datasets"].values())
    counts = job_counts(proc.stdout + proc.stderr)
    assert counts["write_shards"] == expected
    assert counts["pretrain_model"] == len(default["runs"])


@pytest.mark.parametrize("profile", ["local", "slurm", "cluster_profiles/local", "cluster_profiles/slurm"])
def test_profile_dry_run_from_the_repo_root_as_users_type_it(profile):
    """`snakemake --profile slurm -n` (and local; the long paths keep working) on the embedded default, from the
    repo root, exactly as the README says it."""
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", profile, "-n"],
        cwd=REPO,
        env=env_with_python(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    # a fresh clone plans everything from the shards on; a tree that ran part of it plans the rest
    assert "Nothing to be done" in out or job_counts(out).get("all") == 1, out


def test_a_config_file_stands_alone_from_the_repo_root(tmp_path):
    """`--configfile X` plans what X names and nothing of the embedded default (no demo pretraining, no demo
    datasets): Snakemake would merge X over the default's runs and datasets."""
    config = tmp_path / "only_digits.yaml"
    config.write_text(
        yaml.safe_dump(
            {"data_dir": str(tmp_path / "data"), **{k: v for k, v in small_config().items() if k != "data_dir"}}
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", "local", "-n", "--configfile", str(config)],
        cwd=REPO,
        env=env_with_python(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    counts = job_counts(out)
    assert counts.get("write_shards") == 3 and "pretrain_model" not in counts and "extract_features" not in counts, (
        counts
    )


def test_shard_rule_runs_for_real_and_then_is_up_to_date(tmp_path):
    proc = snakemake(tmp_path, "--cores", "2", config=small_config())
    assert proc.returncode == 0, proc.stderr[-3000:]
    for ds, split in (("digits", "train"), ("digits", "test"), ("mnist5k", "test")):
        out = tmp_path / "data" / "shards" / ds / split
        assert verify_shards(out) == [], (ds, split)
        log = (tmp_path / "results" / "logs" / "shard" / ds / f"{split}.log").read_text()
        assert f"{ds}/{split}:" in log and "images/s" in log
    assert (tmp_path / "results" / "benchmarks" / "shard" / "digits" / "train.tsv").is_file()
    again = snakemake(tmp_path, "-n", "--cores", "2", config=small_config())
    assert "Nothing to be done" in again.stdout + again.stderr


def test_bad_config_stops_snakemake_with_the_key_named(tmp_path):
    cfg = small_config()
    cfg["shard"]["max_sampels"] = 3
    proc = snakemake(tmp_path, "-n", "--cores", "1", config=cfg)
    assert proc.returncode != 0
    assert "shard: unknown key 'max_sampels'. Did you mean 'max_samples'?" in proc.stdout + proc.stderr


def test_lint_has_no_findings_beyond_software_deployment():
    proc = subprocess.run(
        [*SNAKEMAKE, "--lint"], cwd=REPO, env=env_with_python(), capture_output=True, text=True, timeout=300
    )
    findings = re.findall(r"^\s+\* (.+?):?$", proc.stdout + proc.stderr, re.M)
    assert [f for f in findings if "conda environment or container" not in f] == []


TINY_TRAIN = {
    "model": {"arch": "swin_pico", "out_dim": 256, "hidden_dim": 64, "bottleneck_dim": 32},
    "crops": {"global_size": 32, "local_size": [16], "local_number": [2]},
    "optim": {"batch_size_per_device": 8, "epochs": 1, "warmup_epochs": 0},
    "data": {"num_workers": 0, "samples_per_epoch": 32},
    "run": {"tensorboard": False, "threads": 2},
}


@pytest.mark.slow
def test_whole_pipeline_runs_for_real_and_a_forced_rerun_touches_nothing_else(tmp_path):
    """shard -> pretrain (2 runs) -> features -> k-NN + probe, then single-target reruns."""
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY_TRAIN))
    cfg = small_config()
    cfg["runs"] = {
        "tiny_a": {"config": str(tmp_path / "tiny.yaml"), "dataset": "digits"},
        "tiny_b": {
            "config": str(tmp_path / "tiny.yaml"),
            "dataset": "digits",
            "overrides": ["loss.region_loss_weight=0"],
        },
    }
    cfg["eval"] = {"datasets": ["digits"], "random_init_baseline": False, "workers": 0}
    proc = snakemake(tmp_path, "--cores", "2", config=cfg)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for run in ("tiny_a", "tiny_b"):
        done = yaml.safe_load((tmp_path / "results" / "pretrain" / run / "done.json").read_text())
        assert done["global_step"] == 4 and done["arch"] == "swin_pico"
    assert yaml.safe_load((tmp_path / "results/pretrain/tiny_b/done.json").read_text())["region_loss_weight"] == 0
    for run in ("tiny_a", "tiny_b"):
        for ev in ("knn", "probe"):
            m = yaml.safe_load((tmp_path / "results" / ev / run / "digits" / "metrics.json").read_text())
            assert m["run"] == run and m["n_test"] == 359 and 0 < m["value"] <= 100
    summary = (tmp_path / "results" / "report" / "summary.md").read_text()
    assert "| digits | accuracy |" in summary and "tiny_a" in summary and "tiny_b" in summary
    corr = yaml.safe_load((tmp_path / "results" / "viz" / "tiny_a" / "correspondence.json").read_text())
    # swin_pico at its 32-px training resolution ends at one token: one candidate, matched trivially (chance 100 %)
    assert corr["regions_per_view"] == 1 and corr["chance"] == 100.0 == corr["accuracy"] and corr["image_size"] == 32
    rep = snakemake(tmp_path, "--cores", "1", "--report", str(tmp_path / "report.zip"), config=cfg)
    assert rep.returncode == 0, rep.stderr[-3000:]
    import zipfile

    names = "\n".join(zipfile.ZipFile(tmp_path / "report.zip").namelist())
    for f in ("summary.csv", "report.html", "transfer_bars.png", "accuracy_vs_throughput.png", "training_curves.png"):
        assert f in names, names
    again = snakemake(tmp_path, "-n", "--cores", "2", "results/pretrain/tiny_a/final.pth", "-f", config=cfg)
    assert job_counts(again.stdout + again.stderr) == {"pretrain_model": 1}
    again = snakemake(tmp_path, "-n", "--cores", "2", "results/probe/tiny_b/digits/metrics.json", "-f", config=cfg)
    assert job_counts(again.stdout + again.stderr) == {"fit_linear_probe": 1}
    # targets before --forcerun (it takes every name after it): the README's order reruns that one probe
    again = snakemake(
        tmp_path,
        "-n",
        "--cores",
        "2",
        "results/probe/tiny_b/digits/metrics.json",
        "--forcerun",
        "fit_linear_probe",
        config=cfg,
    )
    assert job_counts(again.stdout + again.stderr) == {"fit_linear_probe": 1}
    # one dataset again for real, then a plain run re-aggregates: the report and nothing else
    report_before = (tmp_path / "results/report/summary.csv").stat().st_mtime
    forced = snakemake(tmp_path, "--cores", "1", "results/probe/tiny_b/digits/metrics.json", "-f", config=cfg)
    assert forced.returncode == 0, forced.stderr[-3000:]
    plan = snakemake(tmp_path, "-n", "--cores", "1", config=cfg)
    assert job_counts(plan.stdout + plan.stderr) == {"build_report": 1, "all": 1}
    rerun = snakemake(tmp_path, "--cores", "1", config=cfg)
    assert rerun.returncode == 0 and (tmp_path / "results/report/summary.csv").stat().st_mtime > report_before


def test_eval_fans_out_per_model_and_dataset(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY_TRAIN))
    cfg = small_config()
    cfg["datasets"]["mnist5k"]["splits"] = ["train", "test"]
    cfg["runs"] = {"tiny_a": {"config": str(tmp_path / "tiny.yaml"), "dataset": "digits", "mix": ["mnist5k"]}}
    cfg["eval"] = {"datasets": ["digits", "mnist5k"]}
    proc = snakemake(tmp_path, "-n", "-p", "--cores", "2", config=cfg)
    counts = job_counts(proc.stdout + proc.stderr)
    models, datasets = 2, 2  # tiny_a and tiny_a_random
    assert counts["extract_features"] == models * datasets * 2  # train + test
    assert counts["classify_knn"] == counts["fit_linear_probe"] == models * datasets
    assert counts["pretrain_model"] == 1 and counts["write_shards"] == 4
    out = proc.stdout + proc.stderr
    assert "--random-init --arch swin_pico --image-size 32" in out
    assert "--checkpoint results/pretrain/tiny_a/final.pth --image-size 32" in out
    assert "--shards data/shards/digits/train,data/shards/mnist5k/train" in out  # the pretraining mix


def test_transfer_config_is_planned_verbatim_before_anything_is_downloaded():
    """`snakemake --configfile configs/transfer.yaml --profile local -n` from a fresh clone, as the config's header
    says: nothing downloaded yet. Per release a download and an import; per downloadable set a download; per
    dataset the extraction of each split, a k-NN (not for multi-label VOC) and a probe that reads the val split if
    any; the sets needing a manual step are named in a warning, not a failure."""
    cfg = yaml.safe_load((REPO / "configs/transfer.yaml").read_text())
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--configfile", "configs/transfer.yaml", "--profile", "local", "-n", "-p"],
        cwd=REPO,
        env=env_with_python(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    counts = job_counts(out)
    runs, sets = len(cfg["runs"]), len(cfg["eval"]["datasets"])
    assert (
        sets == 18
        and counts["download_release"] == counts["import_checkpoint"] == runs
        and "pretrain_model" not in counts
    )
    assert counts["download_dataset"] == sum(bool(d.get("download")) for d in cfg["datasets"].values()) == 14
    assert counts["fit_linear_probe"] == runs * sets and counts["classify_knn"] == runs * (sets - 1 + 1)  # + ImageNet
    assert counts["train_linear_protocol"] == runs  # ImageNet
    n_splits = sum(len(cfg["datasets"][d]["splits"]) for d in cfg["datasets"])
    assert counts["extract_features"] == runs * n_splits and counts["write_shards"] == n_splits
    assert "--metric 11point_mAP --val results/features/esvit_swin_tiny_w7/voc2007/val.pt" in out
    assert "--dataset fgvc_aircraft --metric mean_per_class --val" in out
    assert re.search(r"--dataset cifar10 --metric accuracy +--device auto +>", out)  # no val split: 20 % of train
    assert "esvit download release swin_tiny_supervised" in out and "--format timm" in out
    assert "results/knn/esvit_swin_tiny_w7/imagenet/metrics.json" in out  # the paper's ImageNet k-NN
    for manual in ("imagenet", "stanford_cars", "fer2013", "resisc45", "pcam"):
        assert f"esvit: warning: datasets.{manual}.root" in out


def test_a_release_is_downloaded_through_the_mirror_once_and_checked_before_use(tmp_path, file_server):
    """runs.<name>.release with download.mirror at a local server holding an official-layout file at the
    release's URL path: downloaded with progress in its log and recorded; the plan then imports it without
    downloading again; damaged on disk later, the import refuses it (checked against the record before use)."""
    from esvit.download import load_releases
    from tests.conftest import official_checkpoint

    url = load_releases()["swin_tiny_w7_vr"]["url"]
    body = official_checkpoint(tmp_path, "official_layout_swin_vr").read_bytes()  # saved by the official code itself
    file_server.files["/" + url.split("://", 1)[1]] = body
    cfg = small_config()
    cfg["download"] = {"mirror": file_server.url}
    cfg["runs"] = {"released": {"release": "swin_tiny_w7_vr"}}
    cfg["eval"] = {"datasets": ["digits"], "random_init_baseline": False, "workers": 0}
    ckpt = "data/downloads/releases/swin_tiny_w7_vr.pth"
    proc = snakemake(tmp_path, "--cores", "1", ckpt, config=cfg)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / ckpt).read_bytes() == body and (tmp_path / f"{ckpt}.json").is_file()
    assert "100%" in (tmp_path / "results/logs/download/release/swin_tiny_w7_vr.log").read_text()
    assert len(file_server.requests) == 1
    plan = snakemake(tmp_path, "-n", "--cores", "1", "results/imported/released/final.pth", config=cfg)
    assert job_counts(plan.stdout + plan.stderr) == {"import_checkpoint": 1}
    with open(tmp_path / ckpt, "r+b") as f:  # damaged on disk after the download
        f.truncate(len(body) - 10)
    proc = snakemake(tmp_path, "--cores", "1", "results/imported/released/final.pth", config=cfg)
    log = (tmp_path / "results/logs/import/released.log").read_text()
    assert proc.returncode != 0 and not (tmp_path / "results/imported/released/final.pth").exists()
    assert "swin_tiny_w7_vr.pth" in log and f"expected {len(body):,}" in log and "Traceback" not in log
    assert len(file_server.requests) == 1


def test_a_dataset_download_that_fails_its_checksum_stops_only_that_dataset(tmp_path, file_server):
    """datasets.<name>.download: true runs the download_dataset rule before its shards; files on the mirror that
    are not torchvision's (its md5 differs) are refused, nothing of that set is sharded, the others go on."""
    from tests.conftest import serve_fake_mnist as _fake_mnist

    _fake_mnist(file_server)
    cfg = small_config()
    cfg["datasets"]["mnist"] = {"source": "mnist", "root": "data/transfer/mnist", "download": True}
    cfg["download"] = {"mirror": file_server.url, "cache": str(tmp_path / "cache")}
    proc = snakemake(tmp_path, "--cores", "1", "--keep-going", config=cfg)
    assert proc.returncode != 0
    log = (tmp_path / "results/logs/download/dataset/mnist.log").read_text()
    assert (
        "train-images-idx3-ubyte.gz" in log
        and "expected f68b3c2dcbeaaa9fbdd348bbdeb94873" in log
        and "Traceback" not in log
    )
    assert not (tmp_path / "data/shards/mnist").exists() and not list(
        (tmp_path / "data/transfer/mnist").rglob("*-ubyte")
    )
    assert (tmp_path / "data/shards/digits/train/manifest.json").is_file()  # --keep-going: the others are done


@pytest.mark.slow
def test_released_checkpoint_is_imported_and_evaluated_without_pretraining(tmp_path):
    """runs.<name>.checkpoint: an official-layout checkpoint -> import -> features -> k-NN, probe, linear."""
    from tests.conftest import official_checkpoint

    released = official_checkpoint(tmp_path, "official_layout_swin_vr")  # saved by the official code itself
    cfg = small_config()
    cfg["runs"] = {"released": {"checkpoint": str(released), "arch": "swin_test_w7", "image_size": 32}}
    cfg["eval"] = {
        "datasets": ["digits"],
        "linear_datasets": ["digits"],
        "linear_epochs": 3,
        "random_init_baseline": False,
        "workers": 0,
    }
    proc = snakemake(tmp_path, "--cores", "2", config=cfg)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for ev in ("knn", "probe", "linear"):
        m = yaml.safe_load((tmp_path / "results" / ev / "released" / "digits" / "metrics.json").read_text())
        assert m["run"] == "released" and m["arch"] == "swin_test_w7" and m["n_test"] == 359 and 0 < m["value"] <= 100
        assert m["checkpoint"] == "results/imported/released/final.pth"
    assert not (tmp_path / "results" / "pretrain").exists()


def continual_config() -> dict:
    """Two paper presets chained as the released Swin-T/W14 was made: view-only, then view + region from epoch 200."""
    cfg = small_config()
    paper = REPO / "configs" / "paper"
    cfg["runs"] = {
        "t14_view": {"config": str(paper / "swin_tiny_w14_view.yaml"), "dataset": "digits"},
        "t14": {
            "config": str(paper / "swin_tiny_w14.yaml"),
            "dataset": "digits",
            "continual_from": {"run": "t14_view", "epoch": 200},
        },
    }
    cfg["eval"] = {"random_init_baseline": False}
    return cfg


def test_requesting_a_continual_run_plans_its_view_only_run_first(tmp_path):
    proc = snakemake(tmp_path, "-n", "-p", "--cores", "1", "results/pretrain/t14/final.pth", config=continual_config())
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert job_counts(out)["pretrain_model"] == 2
    shells = [ln for ln in out.splitlines() if "esvit pretrain" in ln]
    assert len(shells) == 2 and "--out results/pretrain/t14_view" in shells[0], shells  # the base run first
    assert "run.keep_epochs=[200]" in shells[0]  # the base run keeps the checkpoint the continual run starts from
    assert "run.continual_from=results/pretrain/t14_view/checkpoint0200.pth" in shells[1]


@pytest.mark.parametrize(
    "cont,expected",
    [
        ({"run": "t14_vew", "epoch": 200}, "runs.t14.continual_from.run: 't14_vew' is not another pretraining run"),
        ({"run": "t14_view", "epoch": 400}, "runs.t14.continual_from.epoch 400: run 't14_view' trains only 300 epochs"),
        ({"run": "t14_view"}, "runs.t14.continual_from: missing required key 'epoch'"),
    ],
)
def test_a_bad_continual_link_stops_the_plan_naming_the_key(tmp_path, cont, expected):
    cfg = continual_config()
    cfg["runs"]["t14"]["continual_from"] = cont
    proc = snakemake(tmp_path, "-n", "--cores", "1", config=cfg)
    assert proc.returncode != 0 and expected in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_evaluation_rules_pass_the_device(tmp_path):
    """Extraction, probes and the linear protocol get `--device` from eval.device (auto: the GPU a job sees)."""
    cfg = small_config()
    cfg["datasets"]["mnist5k"]["splits"] = ["train", "test"]
    cfg["runs"] = {"r": {"checkpoint": str(REPO / "README.md"), "arch": "swin_pico", "checkpoint_format": "esvit"}}
    cfg["eval"] = {
        "datasets": ["digits"],
        "linear_datasets": ["mnist5k"],
        "random_init_baseline": False,
        "device": "cuda:1",
    }
    proc = snakemake(tmp_path, "-n", "-p", "--cores", "1", config=cfg)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    shells = [ln for ln in out.splitlines() if "python -m esvit" in ln]
    for cmd in ("extract", "probe", "linear"):
        lines = [ln for ln in shells if f"esvit {cmd} " in ln]
        assert lines and all("--device cuda:1" in ln for ln in lines), (cmd, lines)
    cfg["eval"]["device"] = "gpu"
    bad = snakemake(tmp_path, "-n", "--cores", "1", config=cfg)
    assert (
        bad.returncode != 0 and "eval.device must be auto, cpu, cuda or cuda:N (got 'gpu')" in bad.stdout + bad.stderr
    )


def test_values_with_spaces_and_quotes_reach_the_commands_intact(tmp_path):
    """Every value a rule puts on a command line is shell-quoted: a data_dir with a space and a quote works, and
    a quote in a run override is part of the override (refused by the config check), never shell code."""
    cfg = small_config()
    cfg["data_dir"] = "my data/it's here"
    cfg["datasets"] = {"digits": {"source": "digits", "splits": ["train"]}}
    cfg["runs"] = {
        "r": {
            "config": str(REPO / "configs/pretrain/demo.yaml"),
            "dataset": "digits",
            "overrides": ["run.continual_from=x'; touch pwned; echo 'y"],
        }
    }
    cfg["eval"] = {"random_init_baseline": False}
    proc = snakemake(tmp_path, "--cores", "1", "results/pretrain/r/final.pth", config=cfg)
    assert proc.returncode != 0  # the pretrain_model rule fails on the override's path...
    assert verify_shards(tmp_path / "my data" / "it's here" / "shards" / "digits" / "train") == []  # ...after sharding
    assert not (tmp_path / "pwned").exists()  # ...and no shell ran it
    log = (tmp_path / "results" / "logs" / "pretrain" / "r.log").read_text()
    assert "checkpoint \"x'; touch pwned; echo 'y\" does not exist" in log, log


@pytest.mark.slow
def test_a_rule_text_change_reruns_nothing_and_a_training_config_change_is_refused_not_resumed(tmp_path):
    """With the profiles' rerun-triggers: after an upgrade that only changes a rule's text, a finished run is up
    to date; a changed training config reruns the pretrain_model rule, whose resume then refuses the other settings
    (naming them) instead of writing the old weights under the new config."""
    import shutil

    wf = tmp_path / "wf"
    wf.mkdir()
    for part in ("Snakefile", "workflow", "configs"):
        (shutil.copytree if (REPO / part).is_dir() else shutil.copy)(REPO / part, wf / part)
    triggers = yaml.safe_load((REPO / "cluster_profiles/local/config.yaml").read_text())["rerun-triggers"]
    assert triggers == yaml.safe_load((REPO / "cluster_profiles/slurm/config.yaml").read_text())["rerun-triggers"]
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY_TRAIN))
    cfg = small_config()
    cfg["runs"] = {"r": {"config": str(tmp_path / "tiny.yaml"), "dataset": "digits"}}
    cfg["eval"] = {"random_init_baseline": False}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))

    def sm(*args):
        cmd = [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(wf / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--configfile",
            str(tmp_path / "config.yaml"),
            "--cores",
            "2",
            *args,
            "--rerun-triggers",
            *triggers,
            "--",
            "results/pretrain/r/final.pth",
        ]
        return subprocess.run(cmd, cwd=tmp_path, env=env_with_python(), capture_output=True, text=True, timeout=600)

    assert sm().returncode == 0
    rule = wf / "workflow" / "rules" / "pretrain.smk"
    rule.write_text(rule.read_text().replace('"python -m esvit pretrain', '"python  -m esvit pretrain'))  # cosmetic
    again = sm("-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, again.stdout + again.stderr
    changed = dict(TINY_TRAIN, optim={**TINY_TRAIN["optim"], "warmup_epochs": 1})
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(changed))
    plan = sm("-n")
    assert plan.returncode == 0 and job_counts(plan.stdout + plan.stderr).get("pretrain_model") == 1
    run = sm()
    assert run.returncode != 0
    log = (tmp_path / "results" / "logs" / "pretrain" / "r.log").read_text()
    assert "optim.warmup_epochs: 0 -> 1" in log and "--restart" in log, log[-2000:]
