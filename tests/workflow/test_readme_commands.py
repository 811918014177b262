"""The README's commands, exactly as written: every `snakemake` command is dry-run from the repo root, every
`esvit` command line is parsed by the real CLI parser (a renamed option or subcommand fails here), and every
file path the README names exists."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import REPO, env_with_python

README = (REPO / "README.md").read_text()


def _commands(prefix: str) -> list[tuple[str, bool]]:
    """Commands starting with ``prefix`` in the README, each with whether it is a whole command line: lines of
    ```bash blocks (continuations joined, comments dropped; whole) and inline code spans (a span may name a
    command with only some of its options, e.g. `esvit pretrain --launcher slurm`)."""
    found = {}
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()
            if line.startswith(prefix + " "):
                found[line] = True
    for span in re.findall(r"`([^`\n]+)`", README):
        if span.startswith(prefix + " ") and span.strip() not in found:
            found[span.strip()] = False
    return list(found.items())


SNAKEMAKE = _commands("snakemake")
ESVIT = _commands("esvit")


def test_the_readme_has_the_commands_users_type():
    commands = [c for c, _ in SNAKEMAKE]
    assert "snakemake --profile slurm" in commands and "snakemake --profile local" in commands
    assert any("configs/transfer.yaml" in c for c in commands) and any("configs/paper.yaml" in c for c in commands)
    assert sum(whole for _, whole in ESVIT) >= 15


@pytest.mark.parametrize("command,whole", SNAKEMAKE, ids=[c for c, _ in SNAKEMAKE])
def test_every_snakemake_command_in_the_readme_plans(command, whole):
    args = shlex.split(command)[1:]
    if "--report" in args:  # a report of finished results: planned as the run that makes them
        i = args.index("--report")
        del args[i : i + 2]
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", *args, "-n"],
        cwd=REPO,
        env=env_with_python(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{command}\n{out[-3000:]}"
    assert "Job stats" in out or "Nothing to be done" in out


@pytest.mark.parametrize("command,whole", ESVIT, ids=[c for c, _ in ESVIT])
def test_every_esvit_command_in_the_readme_parses(command, whole, monkeypatch):
    """Parsed by the CLI's own parser: an unknown subcommand, option or choice fails; a span that names a
    command with some of its options may leave required ones out (a code-block line may not)."""
    import argparse

    from esvit.cli import build_parser

    def error(self, message):
        raise ValueError(message)

    monkeypatch.setattr(argparse.ArgumentParser, "error", error)
    text = re.sub(r"\[([^\]]*)\]", r"\1", command)  # optional parts shown as [a=b]: parsed too
    args = shlex.split(text)[1:]
    if args and args[-1] == "..." and not (len(args) > 1 and args[-2].startswith("-")):
        args = args[:-1]  # "esvit bench ...": more to come, not a value
    try:
        ns, extra = build_parser().parse_known_args(args)
    except ValueError as exc:
        if whole or not re.search(r"the following arguments are required|expected one argument", str(exc)):
            pytest.fail(f"{command}: the CLI refuses it: {exc}")
        return
    assert ns.command, command
    assert all(re.match(r"^[A-Za-z_][\w.]*=", e) for e in extra), f"{command}: unknown arguments {extra}"


def test_every_repo_path_the_readme_names_exists():
    paths = set(
        re.findall(r"`((?:configs|docs|scripts|benchmarks|workflow|tests|esvit|cluster_profiles)/[\w./-]+)`", README)
    )
    assert len(paths) > 10
    missing = sorted(p for p in paths if not (REPO / p.rstrip("/")).exists())
    assert not missing, missing
