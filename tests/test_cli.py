"""The command line: `eval --json` gives the documented keys, a non-empty run folder is not
overwritten, `methods` and `presets` list the registries. (Bad input: tests/test_errors.py.)"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zerograd.cli import main

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run_cli(*args, cwd=None):
    """`python -m zerograd ...` on this checkout's sources."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "zerograd", *args], check=False, capture_output=True,
                          text=True, cwd=cwd, timeout=300, env=env)


def test_train_then_eval_json(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", "quickstart", "--quiet", "--out", str(out), "--set", "epochs=2",
                 "--set", "test_restarts=1", "--set", "test_pgd_steps=5"]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--n", "50", "--steps", "5", "--restarts", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"clean_acc", "robust_acc", "n", "attack", "checkpoint"} <= set(result)
    assert result["n"] == 50 and result["attack"]["restarts"] == 2
    assert result["robust_acc"] <= result["clean_acc"]
    assert result["attack"]["eps"] == pytest.approx(0.2)
    # a non-empty run folder is not overwritten
    assert main(["train", "--preset", "quickstart", "--quiet", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_methods_and_presets_list_the_registries(capsys):
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    for name in ("zerograd", "multigrad", "fgsm_rs", "n_fgsm", "pgd", "q=0.35", "n=3", "alpha=1.25"):
        assert name in text
    assert main(["presets"]) == 0
    assert "cifar10-zerograd" in capsys.readouterr().out
