"""Promises of issue 13 that are not one bad input's line (those are rows of docs/errors.md):
an unexpected exception is one line and exit 1 (traceback only under --debug); an update that
makes the weights non-finite is caught and never evaluated as a result; a checkpoint's content
digest catches a changed byte while files without one still load; files respect the umask;
config.yaml records every effective value; `eval` uses the run's own test-attack settings;
`--version` and help texts."""
import json
import os

import pytest
import torch
import yaml

from zerograd import cli, load_config, train
from zerograd.checkpoint import load_checkpoint, save_checkpoint
from zerograd.cli import build_parser, main
from zerograd.errors import ConfigError
from zerograd.files import atomic_write
from zerograd.methods import METHODS
from zerograd.training.nanguard import nonfinite

TINY = ["epochs=1", "model_args.width=2", "val_size=20", "train_subset=64", "test_n=10",
        "test_restarts=1", "test_pgd_steps=2", "val_pgd_steps=1"]


def test_an_unexpected_exception_is_one_line_and_exit_1(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_presets", lambda args: 1 / 0)
    assert main(["presets"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("zerograd: internal error: ZeroDivisionError")
    assert main(["--debug", "presets"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_version_and_help_show_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("zerograd 0.")
    text = build_parser().format_help()
    assert "diagnostics and reports." in " ".join(text.split())  # the description, whole
    sub = next(a for a in build_parser()._subparsers._group_actions if a.choices)
    assert "(default: 256)" in sub.choices["eval"].format_help()
    assert "(default: 128)" in sub.choices["bench"].format_help()


def test_non_finite_weights_are_caught_and_never_evaluated(tmp_path):
    """lr_max=1e30: every update overflows the weights; the guard rolls back, then stops, and
    the evaluation is of the last resume point (finite), saying so."""
    run = train(load_config("quickstart", [*TINY, "epochs=2", "batch_size=8", "lr_max=1e30"]), tmp_path / "r", quiet=True)
    assert nonfinite(None, run.model, grads=False) is None
    events = [m for m in run.history if m.get("event") == "nonfinite"]
    assert events and events[-1]["action"] == "stop"
    assert run.result["stopped"] and run.result["checkpoint"] == "last"
    for name in os.listdir(tmp_path / "r" / "checkpoints"):
        weights = load_checkpoint(tmp_path / "r" / "checkpoints" / name)["model"]
        assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_nonfinite_names_the_weights():
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    assert nonfinite(torch.tensor(1.0), model, grads=False) == "weights"
    assert nonfinite(torch.tensor(1.0), model, grads=False, weights=False) is None


def test_the_content_digest_catches_a_changed_value_and_old_files_still_load(tmp_path):
    state = {"model": {"w": torch.arange(4.0)}, "epoch": 3}
    save_checkpoint(tmp_path / "a.pt", state)
    loaded = load_checkpoint(tmp_path / "a.pt")
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and "sha256" not in loaded
    raw = torch.load(tmp_path / "a.pt", weights_only=True)
    raw["model"]["w"][1] = 7.0  # another value, the digest kept
    torch.save(raw, tmp_path / "b.pt")
    with pytest.raises(ConfigError, match="does not match the SHA-256"):
        load_checkpoint(tmp_path / "b.pt")
    torch.save(state, tmp_path / "old.pt")  # written before digests: loads, unverified
    assert load_checkpoint(tmp_path / "old.pt")["epoch"] == 3


def test_files_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "f", b"x")
        assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        atomic_write(tmp_path / "g", b"x")
        assert (tmp_path / "g").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_config_yaml_records_every_effective_value_and_eval_uses_the_runs_attack(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--preset", "quickstart", "--quiet", "--out", str(out),
                 *[a for s in TINY for a in ("--set", s)], "--set", "test_alpha=0.5"]) == 0
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert recorded["method_args"] == METHODS.defaults("zerograd") | {"q": recorded["method_args"]["q"]}
    assert recorded["model_args"]["width"] == 2 and len(recorded["model_args"]) > 1
    capsys.readouterr()
    assert main(["eval", str(out), "--no-checks", "--json", "--n", "10"]) == 0
    attack = json.loads(capsys.readouterr().out)["attack"]
    assert (attack["steps"], attack["restarts"], attack["alpha"]) == (2, 1, 0.5)


def test_keep_epoch_checkpoints_k_keeps_the_last_k(tmp_path):
    train(load_config("quickstart", [*TINY, "epochs=3", "keep_epoch_checkpoints=1"]), tmp_path / "r", quiet=True)
    names = sorted(os.listdir(tmp_path / "r" / "checkpoints"))
    assert names == ["best.pt", "epoch-3.pt", "last.pt"]
