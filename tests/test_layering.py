"""The package's import graph, read from the source (ast, every import: module level and inside functions):
no import circle, and ``fsvfm/util`` a leaf layer that imports nothing of the package outside itself."""
from __future__ import annotations

import ast
import graphlib
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fsvfm.util.errors import UserError

PACKAGE = Path(__file__).resolve().parents[1] / "fsvfm"


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _target(name: str, modules: set[str]) -> str | None:
    """The package module an imported dotted name loads: the longest prefix that is a module of ours."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(path: Path, modules: set[str], root: Path = PACKAGE) -> set[str]:
    """The package modules ``path`` imports anywhere in its body (``from fsvfm.util import dist`` is
    ``fsvfm.util.dist``; relative imports resolved)."""
    here = module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {t for n in names if n.startswith("fsvfm") and (t := _target(n, modules)) and t != here}
    return found


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in files}
    return {module_name(p): imports_of(p, modules) for p in files}


def test_the_walk_sees_both_kinds_of_import(tmp_path):
    """The reader itself: module-level, function-level and relative imports all count."""
    pkg = tmp_path / "fsvfm"
    (pkg / "util").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "util" / "__init__.py").write_text("")
    (pkg / "util" / "a.py").write_text("def f():\n    from fsvfm import top\n")
    (pkg / "util" / "b.py").write_text("from . import a\nfrom .a import f\n")
    (pkg / "top.py").write_text("import fsvfm.util.b\n")
    modules = {"fsvfm", "fsvfm.util", "fsvfm.util.a", "fsvfm.util.b", "fsvfm.top"}
    assert imports_of(pkg / "util" / "a.py", modules, pkg) == {"fsvfm.top"}
    assert imports_of(pkg / "util" / "b.py", modules, pkg) == {"fsvfm.util.a"}
    assert imports_of(pkg / "top.py", modules, pkg) == {"fsvfm.util.b"}


def test_no_import_circle():
    graph = import_graph()
    assert len(graph) > 40  # the whole package was read
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        raise AssertionError(f"import circle: {' -> '.join(e.args[1])}") from None
    assert set(order) == set(graph)


def test_util_imports_nothing_above_it():
    upward = {m: sorted(t for t in targets if not t.startswith("fsvfm.util"))
              for m, targets in import_graph().items() if m.startswith("fsvfm.util")}
    assert {m: t for m, t in upward.items() if t} == {}
    assert len(upward) > 15


def test_the_package_imports_no_test_or_tool_code():
    """The generated-data fixture (tools/synthetic_data.py) and the test helpers stay outside the package."""
    outside = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            bad = [n for n in names if n.split(".")[0] in ("tools", "tests", "benchmarks")]
            if bad:
                outside[module_name(path)] = bad
    assert outside == {}
    assert not (PACKAGE / "data" / "synthetic.py").exists()


@pytest.mark.slow
def test_importing_pretraining_loads_no_face_stack():
    """A fresh interpreter: pre-training's program loads neither dlib nor OpenCV (the face stack of
    preprocessing and of visualize's photo cropping) nor matplotlib (visualize's figures)."""
    code = ("import sys, fsvfm.main_pretrain; "
            "print(' '.join(m for m in ('dlib', 'cv2', 'matplotlib', 'fsvfm.preprocess', 'fsvfm.visualize', "
            "'fsvfm.pretrain_runner') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["fsvfm.pretrain_runner"]  # the probe itself sees what it loads


@pytest.mark.slow
def test_the_diff_test_program_loads_no_fas_code():
    """Task entries import lazily: the DiFF test program loads its own task module, not FAS's."""
    code = ("import sys, fsvfm.main_test_DiFF; "
            "print(' '.join(m for m in ('fsvfm.tasks.dfd', 'fsvfm.tasks.fas', 'fsvfm.models_fas', 'fsvfm.data.fas') "
            "if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["fsvfm.tasks.dfd"]


ENTRY_MISTAKES = {  # program -> (a mistake only main() can see, the one line it must print)
    "main_pretrain": ([], "no pre-training data: give at least one --pretrain_data_path"),
    "main_finetune_DfD": (["--train", "somewhere"], "--train needs --val too"),
    "main_finetune_FAS": (["--config", "M"], "give --pt_model (a pre-training checkpoint) or --scratch"),
    "main_test_DfD": ([], "--resume FINE_TUNED_CHECKPOINT is required"),
    "main_test_DiFF": ([], "--resume FINE_TUNED_CHECKPOINT is required"),
    "main_test_FAS": (["--config", "M"], "--resume FINE_TUNED_CHECKPOINT is required"),
}


@pytest.mark.parametrize("name", sorted(ENTRY_MISTAKES))
def test_every_entry_point_has_the_same_shape(name, capsys):
    """``get_args_parser()``, ``main(args)`` (the library entry: the mistake propagates as a ``UserError``) and
    ``cli(argv)`` (the same mistake as one ``error:`` line, exit code 2)."""
    module = importlib.import_module(f"fsvfm.{name}")
    extra, message = ENTRY_MISTAKES[name]
    argv = ["--device", "cpu", *extra]
    with pytest.raises(UserError, match=re.escape(message)):
        module.main(module.get_args_parser().parse_args(argv))
    with pytest.raises(SystemExit) as stop:
        module.cli(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and ": error: " in err[-1] and message in err[-1]
