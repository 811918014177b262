"""`esvit bench` entries run at toy sizes: one JSON line on stdout, the same line appended to <out>/<name>.jsonl,
the machine described. (The figures themselves are measured at full size by hand, never asserted.)"""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli


@pytest.mark.parametrize(
    "name,args,key",
    [
        ("infer", ["--archs", "swin_pico,swin_nano", "--batch", "4", "--size", "64", "--steps", "1"], "img_s"),
        ("extract", ["--archs", "swin_pico:32", "--batch", "128", "--workers", "0"], "swin_pico@32_img_s"),
        (
            "probe",
            ["--n", "2000", "--dim", "32", "--classes", "5", "--n-test", "1000", "--separation", "0.5"],
            "speedup",
        ),
        (
            "loader",
            [
                "--images",
                "24",
                "--batches",
                "1",
                "--batch",
                "4",
                "--locals",
                "2",
                "--global-size",
                "64",
                "--local-size",
                "32",
                "--repeats",
                "1",
            ],
            "ratio",
        ),
        (
            "train",
            [
                "--arch",
                "swin_pico",
                "--batch",
                "2",
                "--global-size",
                "64",
                "--local-size",
                "32",
                "--locals",
                "2",
                "--out-dim",
                "256",
                "--steps",
                "1",
            ],
            "fraction_of_peak",
        ),
    ],
)
def test_bench_writes_one_json_line_with_the_machine(name, args, key, tmp_path):
    proc = run_cli("bench", "--out", str(tmp_path), name, *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    assert line["bench"] == name and key in line and {"cpu", "cores", "torch"} <= set(line["machine"])
    assert json.loads((tmp_path / f"{name}.jsonl").read_text().splitlines()[-1]) == line
    if name == "infer":
        assert set(line["img_s"]) == {"swin_pico", "swin_nano"} and min(line["img_s"].values()) > 0
    if name == "probe":
        assert abs(line["ours_acc"] - line["sklearn_acc"]) <= 1.0  # 1,000 test samples
    if name == "loader":
        assert line["reference_img_s"] > 0 and line["fast_img_s"] > 0 and line["per"] == "core"
    if name == "train":
        assert line["gflop_per_step"] > 0 and 0 < line["fraction_of_peak"] < 1.5


def test_batch_auto_runs_and_halves_until_a_batch_fits(tmp_path):
    """`--batch auto` (what benchmarks/gpu.sh runs) reaches the measurement; the search halves on out-of-memory."""
    import torch

    from esvit.bench.train import largest_batch

    proc = run_cli(
        "bench",
        "--out",
        str(tmp_path),
        "train",
        "--arch",
        "swin_pico",
        "--batch",
        "auto",
        "--max-batch",
        "2",
        "--global-size",
        "64",
        "--local-size",
        "32",
        "--locals",
        "2",
        "--out-dim",
        "256",
        "--steps",
        "1",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["batch"] == 2
    tried, released = [], []

    def fits(batch):
        tried.append(batch)
        if batch > 24:
            raise torch.OutOfMemoryError("CUDA out of memory")

    assert (
        largest_batch(fits, 128, lambda: released.append(1)) == 16 and tried == [128, 64, 32, 16] and len(released) == 3
    )
    with pytest.raises(SystemExit, match="even batch 1 does not fit"):
        largest_batch(lambda b: (_ for _ in ()).throw(torch.OutOfMemoryError("oom")), 4)


def test_the_step_memory_is_what_the_step_allocates_at_once():
    """The allocator-level peak of a function against tensors of known size: 32 MB and 24 MB alive at once (a
    freed 16 MB block before a new 8 MB one does not add up), whatever the process held before, also when the
    allocations happen inside an op's own code (an autograd Function, a profiler scope: the chunked loss)."""
    import torch

    from esvit.bench.train import allocator_peak_gb

    held = torch.ones(4_000_000)  # allocated before: not counted

    def work():
        a = torch.ones(4_000_000)  # 16 MB
        b = a * 2  # 32 MB alive
        del a
        c = torch.ones(2_000_000)  # 24 MB alive
        del b, c

    class Inner(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            for _ in range(3):  # 16 MB at a time, freed inside the op
                t = x.expand(4_000_000).clone()
                del t
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return g

    def scoped():
        with torch.profiler.record_function("outer"):
            work()

    assert allocator_peak_gb(work) == pytest.approx(0.032, rel=1e-3)
    assert allocator_peak_gb(scoped) == pytest.approx(0.032, rel=1e-3)
    assert allocator_peak_gb(lambda: Inner.apply(torch.ones(1, requires_grad=True))) == pytest.approx(0.016, rel=1e-3)
    assert held.sum() > 0


def test_bench_train_compares_the_heads_and_breaks_the_step_down(tmp_path):
    """`--no-chunked-heads` runs the whole-logits path (recorded as such), and `--breakdown` times every part of
    the step; the parts add up to about one step."""
    lines = []
    for heads in ([], ["--no-chunked-heads"]):
        proc = run_cli(
            "bench",
            "--out",
            str(tmp_path),
            "train",
            "--arch",
            "swin_pico",
            "--batch",
            "2",
            "--global-size",
            "64",
            "--local-size",
            "32",
            "--locals",
            "2",
            "--out-dim",
            "2048",
            "--steps",
            "2",
            "--breakdown",
            *heads,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert [line["chunked_heads"] for line in lines] == [True, False] and lines[1]["chunk_rows"] is None
    for line in lines:
        parts = line["parts_s"]
        assert set(parts) == {
            "teacher",
            "backbone_forward",
            "heads_forward",
            "loss",
            "heads_loss_backward",
            "backbone_backward",
            "other",
            "optimizer",
            "ema",
        }
        assert min(parts.values()) >= 0 and 0 < sum(parts.values()) < 3 * line["step_s"] + 1
        assert line["step_peak_gb"] > 0


def test_every_help_page_prints_and_every_option_says_what_it_does():
    """`--help` of `esvit`, of each command and of each benchmark renders (argparse formats help texts with %:
    a stray percent sign in a docstring used to crash `esvit bench --help`), and no option lacks a help text."""
    import argparse
    import contextlib
    import io

    from esvit.bench import BENCHES
    from esvit.cli import build_parser

    parser = build_parser()
    commands = [a for a in parser._subparsers._group_actions[0].choices]  # every subcommand
    pages = [[]] + [[c] for c in commands] + [["bench", name] for name in BENCHES]
    for page in pages:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
            parser.parse_args([*page, "--help"])
        assert exit_.value.code == 0 and "usage:" in out.getvalue(), page

    def silent(p: argparse.ArgumentParser, path: str):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from silent(sub, f"{path} {name}")
            elif not action.help and not isinstance(action, argparse._HelpAction):
                yield f"{path} {'/'.join(action.option_strings) or action.dest}"

    assert list(silent(parser, "esvit")) == []


def test_the_side_by_side_scripts_parse_and_explain_themselves():
    """benchmarks/heads.sh (bash syntax, a clear refusal of an unknown argument) and official_step.py (--help runs
    without the official checkout, --official is required). Their measurements take a checkout and ~15 minutes."""
    import subprocess
    import sys

    from tests.conftest import REPO, env_with_python

    assert subprocess.run(["bash", "-n", "benchmarks/heads.sh"], cwd=REPO).returncode == 0
    proc = subprocess.run(["bash", "benchmarks/heads.sh", "--bogus"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown argument --bogus" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "benchmarks/official_step.py", "--help"],
        cwd=REPO,
        env=env_with_python(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and "--official" in proc.stdout and "microsoft/esvit" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "benchmarks/official_step.py"], cwd=REPO, env=env_with_python(), capture_output=True, text=True
    )
    assert proc.returncode == 2 and "--official" in proc.stderr
