"""The command line: bad input exits 2 with one line and writes nothing; `eval --json` gives
the documented keys; `methods` and `presets` list the registries."""
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


@pytest.mark.parametrize("args, message", [
    (["train", "--preset", "quickstar"], "unknown preset 'quickstar' (did you mean 'quickstart'?)"),
    (["train", "--preset", "quickstart", "--set", "eps=0"], "eps=0.0 is invalid"),
    (["train", "--preset", "quickstart", "--set", "method_args.q=1"], "method_args.q=1.0 is invalid"),
    (["train", "--preset", "quickstart", "--set", "method=fgsmrs"], "did you mean 'fgsm_rs'"),
    (["train", "--preset", "quickstart", "--set", "batch_size=0"], "batch_size=0 is invalid"),
    (["train", "--preset", "quickstart", "--set", "device=cuda"], "not available"),
    (["train", "--preset", "cifar10-zerograd", "--data-dir", "/nonexistent-zg"], "cifar"),
    (["eval", "/nonexistent-zg/run"], "does not exist"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, args, message, monkeypatch):
    from zerograd import data

    monkeypatch.setattr(data, "_fetch", lambda url, dest: (_ for _ in ()).throw(OSError("offline")))
    out = tmp_path / "out"
    code = main(args + (["--out", str(out)] if args[0] == "train" else []))
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("zerograd: error: ") and message in err
    assert len(err.splitlines()) == 1
    assert not out.exists()


def test_subprocess_error_has_no_traceback(tmp_path):
    proc = run_cli("train", "--preset", "quickstart", "--set", "epochs=-1", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == "zerograd: error: epochs=-1 is invalid: must be >= 1"
    assert not (tmp_path / "o").exists()


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
