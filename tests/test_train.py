"""The training loop end to end on scikit-learn's digits (offline): robust accuracy well
above chance, bitwise repeatability under a seed, the run folder's contents, callbacks'
actions (stop, rolling back to exactly the saved weights), and a short run on the shared
CIFAR-10 copy."""
import json

import torch

from zerograd import Hook, Rollback, Stop, load_config, train
from zerograd.checkpoint import load_checkpoint
from zerograd.runfolder import RunFolder

from .test_guard import spy_on_rollbacks

FAST = ["epochs=3", "test_restarts=1", "test_pgd_steps=10", "model_args.width=8"]


def test_quickstart_learns_robustly(tmp_path):
    run = train(load_config("quickstart", ["epochs=12", "test_restarts=2", "test_pgd_steps=20"]),
                tmp_path / "run", quiet=True)
    assert run.result["clean_acc"] > 0.9
    assert run.result["robust_acc"] > 0.3  # chance is 0.1
    folder = run.dir
    for name in ("config.yaml", "metrics.jsonl", "eval.json", "checkpoints/last.pt",
                 "checkpoints/best.pt", "checkpoints/epoch-0.pt", "checkpoints/epoch-12.pt"):
        assert (folder / name).is_file(), name
    epochs = [m for m in RunFolder(folder).read_metrics() if "train/loss" in m]
    assert [m["epoch"] for m in epochs] == list(range(1, 13))
    assert {"val/clean_acc", "val/pgd_acc", "lr", "train/acc"} <= set(epochs[-1])
    # what each epoch cost: its steps, then validation and diagnostics, timed apart
    assert all(m["time/epoch_s"] > 0 and m["time/epoch_end_s"] > 0 for m in epochs)
    assert json.loads((folder / "eval.json").read_text())["n"] == 360
    best = load_checkpoint(folder / "checkpoints" / "best.pt")
    assert best["best_val_pgd"] == max(m["val/pgd_acc"] for m in epochs)


def test_same_seed_same_weights_bitwise():
    cfg = load_config("quickstart", FAST + ["method=multigrad"])
    a, b = train(cfg, quiet=True), train(cfg, quiet=True)
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    c = train(load_config("quickstart", FAST + ["method=multigrad", "seed=1"]), quiet=True)
    assert not torch.equal(next(iter(a.model.parameters())), next(iter(c.model.parameters())))


class StopAfter(Hook):
    def __init__(self, steps):
        self.steps = steps

    def on_step(self, state):
        return Stop("enough") if state.step >= self.steps else None


def test_stop_action_ends_the_run_and_is_logged(tmp_path):
    run = train(load_config("quickstart", FAST), tmp_path / "r", quiet=True, callbacks=[StopAfter(5)])
    events = [m for m in run.history if m.get("event") == "stop"]
    assert events and events[0]["step"] == 5
    assert max(m.get("epoch", 0) for m in run.history if "train/loss" in m) == 1


class RollbackOnce(Hook):
    """At the end of epoch 2, roll back to epoch 1 with a larger q; remember the weights."""

    def __init__(self):
        self.done = False
        self.after_restore = None

    def on_epoch(self, state):
        if state.epoch == 2 and not self.done:
            self.done = True
            return Rollback(epoch=1, method_args={"q": 0.5}, reason="test")
        if state.epoch == 2 and self.done and self.after_restore is None:
            self.after_restore = state.cfg.method_args["q"]
        return None


def test_rollback_restores_saved_weights_and_raises_q(tmp_path, monkeypatch):
    restored = spy_on_rollbacks(monkeypatch)
    cb = RollbackOnce()
    run = train(load_config("quickstart", FAST + ["method_args.q=0.2"]), tmp_path / "r",
                quiet=True, callbacks=[cb])
    saved = load_checkpoint(tmp_path / "r" / "checkpoints" / "epoch-1.pt")["model"]
    assert restored["epoch"] == 1
    for k, v in saved.items():
        assert torch.equal(restored["weights"][k], v), k
    assert cb.after_restore == 0.5 and run.cfg.method_args["q"] == 0.5
    events = [m for m in run.history if m.get("event") == "rollback"]
    assert len(events) == 1 and events[0]["to_epoch"] == 1 and events[0]["method_args"]["q"] == 0.5
    assert [m["epoch"] for m in run.history if "train/loss" in m] == [1, 2, 2, 3]


def test_short_cifar10_run_on_the_shared_copy(tmp_path, shared_data):
    cfg = load_config("cifar10-zerograd", [
        f"data_dir={shared_data}", "model=small_cnn", "model_args.width=16", "epochs=4",
        "train_subset=2000", "val_size=128", "test_n=256", "test_restarts=1", "test_pgd_steps=5",
        "batch_size=64", "lr_max=0.1"])
    run = train(cfg, tmp_path / "c", quiet=True)
    assert run.result["n"] == 256
    assert run.result["clean_acc"] > 0.16  # chance is 0.1 (2.5 standard errors above it at n=256)
    assert run.result["robust_acc"] <= run.result["clean_acc"]
