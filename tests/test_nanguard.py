"""The NaN guard: `nonfinite` tells loss from gradient; a NaN injected into the loss or a
weight gradient at a chosen step never reaches the weights; policy "rollback" reloads the last
good checkpoint exactly with the learning rate times nan_lr_factor (in memory without a run
folder), "stop" ends the run keeping and evaluating the best checkpoint, and
nan_max_rollbacks bounds the retries. Every case is logged as an event."""

import pytest
import torch

from zerograd import Hook, load_config, train
from zerograd.checkpoint import load_checkpoint
from zerograd.runfolder import RunFolder
from zerograd.schedules import cyclic
from zerograd.training.nanguard import nonfinite
from zerograd.training.state import TrainState

SETS = ["epochs=3", "model_args.width=8", "test_n=60", "test_restarts=1", "test_pgd_steps=5",
        "val_size=100", "val_pgd_steps=3"]
STEPS = 21  # per epoch, as in test_resume


class InjectNaN(Hook):
    """After optimizer step `at` (and the `times - 1` after it), make the next training
    step's loss NaN (a forward hook) or one weight gradient NaN (a tensor hook)."""

    def __init__(self, at, where="loss", times=1):
        self.at, self.where, self.left = at, where, times

    def on_step(self, state):
        if state.step >= self.at and self.left > 0:
            self.left -= 1
            if self.where == "loss":  # the training forward: its input needs no gradient
                def poison(module, inputs, out):
                    if inputs[0].requires_grad:  # the attack's forward
                        return None
                    handle.remove()
                    return out * float("nan")

                handle = state.model.register_forward_hook(poison)
            else:
                p = next(state.model.parameters())
                handle = p.register_hook(lambda g: (handle.remove(), g * float("nan"))[1])


def finite(model) -> bool:
    return all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_nonfinite_names_what_is_not_finite():
    model = torch.nn.Linear(3, 2)
    loss = model(torch.ones(1, 3)).sum()
    loss.backward()
    assert nonfinite(loss, model) is None
    model.weight.grad[0, 0] = float("inf")
    assert nonfinite(loss, model) == "gradient"
    assert nonfinite(loss, model, grads=False) is None
    assert nonfinite(loss * float("nan"), model) == "loss"


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_rollback_reloads_last_good_checkpoint_with_lower_lr(tmp_path, where, monkeypatch):
    restored = {}
    original = TrainState.load_weights

    def spy(state, ckpt, source):
        original(state, ckpt, source)
        restored.update(source=str(source), weights={k: v.clone() for k, v in state.model.state_dict().items()})

    monkeypatch.setattr(TrainState, "load_weights", spy)
    last = tmp_path / "r" / "checkpoints" / "last.pt"
    cfg = load_config("quickstart", SETS + ["nan_lr_factor=0.25"])
    run = train(cfg, tmp_path / "r", quiet=True, callbacks=[InjectNaN(STEPS + 5, where)])
    events = [m for m in run.history if m.get("event") == "nonfinite"]
    assert len(events) == 1
    e = events[0]
    assert (e["what"], e["action"], e["to_epoch"], e["to_step"], e["lr_scale"]) == (where, "rollback", 1, STEPS, 0.25)
    assert e["step"] == STEPS + 5  # the step that would have been taken was not
    assert restored["source"] == str(last)
    saved = load_checkpoint(tmp_path / "r" / "checkpoints" / "epoch-1.pt")["model"]
    assert all(torch.equal(saved[k], restored["weights"][k]) for k in saved)
    epochs = [m for m in run.history if "train/loss" in m]
    assert [m["epoch"] for m in epochs] == [1, 2, 3] and finite(run.model)
    total = 3 * STEPS
    assert epochs[1]["lr"] == pytest.approx(0.25 * cyclic(2 * STEPS - 1, total, 0.1))
    assert load_checkpoint(last)["schedule"]["lr_scale"] == 0.25
    assert [m.get("event") for m in RunFolder(tmp_path / "r").read_metrics()].count("nonfinite") == 1


def test_rollback_without_a_run_folder_uses_the_state_kept_in_memory():
    run = train(load_config("quickstart", SETS), quiet=True, callbacks=[InjectNaN(STEPS + 2)])
    (e,) = [m for m in run.history if m.get("event") == "nonfinite"]
    assert (e["action"], e["to_step"]) == ("rollback", STEPS)
    assert finite(run.model) and run.history[-1]["epoch"] == 3


def test_stop_policy_keeps_and_evaluates_the_best_checkpoint(tmp_path):
    cfg = load_config("quickstart", SETS + ["nan_policy=stop"])
    run = train(cfg, tmp_path / "r", quiet=True, callbacks=[InjectNaN(STEPS + 3, "gradient")])
    (e,) = [m for m in run.history if m.get("event") == "nonfinite"]
    assert (e["what"], e["action"], e["epoch"]) == ("gradient", "stop", 2)
    assert [m["epoch"] for m in run.history if "train/loss" in m] == [1]
    ckpts = tmp_path / "r" / "checkpoints"
    assert not (ckpts / "epoch-2.pt").exists()
    best = load_checkpoint(ckpts / "best.pt")
    assert best["epoch"] == 1 and run.result["checkpoint"] == "best"
    assert all(torch.equal(best["model"][k], v) for k, v in run.model.state_dict().items())


def test_rollbacks_are_bounded_then_the_run_stops(tmp_path):
    cfg = load_config("quickstart", SETS + ["nan_max_rollbacks=2"])
    run = train(cfg, tmp_path / "r", quiet=True, callbacks=[InjectNaN(STEPS + 1, times=10)])
    events = [m for m in run.history if m.get("event") == "nonfinite"]
    assert [e["action"] for e in events] == ["rollback", "rollback", "stop"]
    assert [e["lr_scale"] for e in events[:2]] == [0.5, 0.25]
    assert finite(run.model)
