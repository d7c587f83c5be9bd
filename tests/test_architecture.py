"""Checks of the layout docs/architecture.md describes: imports only go downward (the
import-linter contracts in pyproject.toml, function-level imports included), and only the CLI
and the applications print."""
import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "zerograd"
PRINTING = {"cli.py", "train.py", "evaluate.py", "export.py", "report.py", "reproduce.py", "bench.py",
            "selftest.py", "measure.py"}


def test_imports_follow_the_layers():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}  # this checkout's package, not another
    lint = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    proc = subprocess.run([sys.executable, "-c", lint], cwd=ROOT, env=env, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "2 kept, 0 broken" in proc.stdout


def test_only_the_cli_and_applications_print():
    printing = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if str(rel) in PRINTING:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                printing.append(f"{rel}:{node.lineno}")
    assert printing == []


def test_no_module_imports_inside_functions_except_optional_packages():
    """Function-level imports hide dependencies; only optional third-party packages may be
    imported late (matplotlib, tensorboard, scipy, sklearn, tqdm)."""
    optional = {"matplotlib", "torch.utils.tensorboard", "scipy.io", "sklearn.datasets", "tqdm"}
    late = []
    for path in PACKAGE.rglob("*.py"):
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom):
                    name = "." * node.level + (node.module or "")
                elif isinstance(node, ast.Import):
                    name = node.names[0].name
                else:
                    continue
                if not any(name == o or name.startswith(o + ".") for o in optional):
                    late.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {name}")
    assert late == []


def test_every_benchmark_script_imports_with_the_current_layout():
    """Benchmarks are not run by the tests; this catches one whose `zerograd.*` imports a
    change of modules broke (reliability_cost.py once imported two modules that had moved)."""
    scripts = sorted((ROOT / "benchmarks").glob("*.py"))
    assert scripts
    code = ("import importlib.util, sys\n"
            "for path in sys.argv[1:]:\n"
            "    spec = importlib.util.spec_from_file_location('bench_' + path.rsplit('/', 1)[-1][:-3], path)\n"
            "    spec.loader.exec_module(importlib.util.module_from_spec(spec))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", code, *map(str, scripts)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
