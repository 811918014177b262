"""The package's import graph is a DAG (scripts/import_graph.py), and the checker finds the cycles it must."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "import_graph.py"


@pytest.fixture(scope="module")
def graph_tool():
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_package_has_no_import_cycle(graph_tool):
    graph = graph_tool.import_graph()
    assert "esvit.config" in graph and "esvit.fields" in graph["esvit.config"]
    assert graph_tool.cycles(graph) == []
    # the bottom layer imports nothing of the package: errors first, then the config field machinery over it
    assert graph["esvit.errors"] == set()
    assert graph["esvit.fields"] == {"esvit.errors"}


def test_checker_counts_function_level_imports_but_not_type_checking(graph_tool, tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import thing\n")
    (pkg / "b.py").write_text(
        textwrap.dedent("""
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from pkg.c import Other
        def thing():
            from pkg import a  # hidden from Python at import time, still a cycle
            return a
    """)
    )
    (pkg / "c.py").write_text("from . import b\n")
    graph = graph_tool.import_graph(pkg)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg.b"}}
    assert graph_tool.cycles(graph) == [["pkg.a", "pkg.b"]]


def test_checker_counts_the_package_init_an_import_runs(graph_tool, tmp_path):
    """`import pkg.sub.m` from outside pkg.sub runs pkg/sub/__init__.py: a cycle through it is one."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub import m, n\n")
    (pkg / "sub" / "m.py").write_text("from pkg.sub import n\n")  # inside the package: its __init__ already runs
    (pkg / "sub" / "n.py").write_text("from pkg.config import X\n")
    (pkg / "config.py").write_text("from pkg.sub.m import Y\n")
    graph = graph_tool.import_graph(pkg)
    assert graph["pkg.sub.m"] == {"pkg.sub.n"}
    assert graph["pkg.config"] == {"pkg.sub", "pkg.sub.m"}
    assert graph_tool.cycles(graph) == [["pkg.config", "pkg.sub", "pkg.sub.m", "pkg.sub.n"]]


def test_command_prints_layers_and_exits_zero():
    out = subprocess.run([sys.executable, str(SCRIPT), "--layers"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    assert first.startswith("layer 0:") and "esvit.errors" in first.split()
    assert "0 cycles" in out.stderr


def test_checker_counts_a_submodule_importing_a_name_from_its_own_package(graph_tool, tmp_path):
    """`from pkg import helper` in pkg/a.py while pkg/__init__.py imports a: a cycle that works only by import order."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("def helper():\n    pass\n\nfrom pkg import a\n")
    (pkg / "a.py").write_text("from pkg import helper\n")
    graph = graph_tool.import_graph(pkg)
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg"}}
    assert graph_tool.cycles(graph) == [["pkg", "pkg.a"]]
