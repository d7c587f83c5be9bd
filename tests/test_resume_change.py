"""Checks of a deliberate change on resume (`zerograd train --resume RUN --set key=value`):
allowed keys change the rest of the run and are recorded in config.yaml and as a
'config_change' event; any other key, or a hand edit of config.yaml, is refused before any
work."""
import pytest
import yaml

from zerograd import ConfigError, load_config, train
from zerograd.cli import main
from zerograd.runfolder import RunFolder, resume_config

from .conftest import Crash, CrashAt

SETS = ["epochs=3", "train_subset=256", "val_size=64", "test_n=32", "test_restarts=1",
        "test_pgd_steps=2", "method_args.q=0.2"]
STEPS = 4  # 256 / 64


def crashed_run(tmp_path):
    cfg = load_config("quickstart", SETS + ["batch_size=64"])
    with pytest.raises(Crash):
        train(cfg, tmp_path / "r", quiet=True, callbacks=[CrashAt(STEPS + 2)])
    return tmp_path / "r"


def test_allowed_change_is_applied_and_recorded(tmp_path, capsys):
    run = crashed_run(tmp_path)
    assert main(["train", "--resume", str(run), "--set", "method_args.q=0.5", "--quiet"]) == 0
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert recorded["method_args"]["q"] == 0.5 and "environment" in recorded
    records = RunFolder(run).read_metrics()
    (change,) = [r for r in records if r.get("event") == "config_change"]
    assert change["changes"]["method_args"]["from"]["q"] == 0.2
    assert change["changes"]["method_args"]["to"]["q"] == 0.5
    assert [r["epoch"] for r in records if "train/loss" in r] == [1, 2, 3]


def test_fixed_keys_and_hand_edits_are_refused_and_nothing_changes(tmp_path):
    run = crashed_run(tmp_path)
    before = (run / "metrics.jsonl").read_bytes(), (run / "config.yaml").read_bytes()
    with pytest.raises(ConfigError, match="cannot change lr_max"):
        resume_config(run, overrides=["lr_max=0.5"])
    text = (run / "config.yaml").read_text().replace("q: 0.2", "q: 0.6")
    (run / "config.yaml").write_text(text)
    with pytest.raises(ConfigError, match="another config"):
        train(resume_config(run)[0], run, quiet=True, resume=True)
    assert (run / "metrics.jsonl").read_bytes() == before[0]
