"""The catastrophic-overfitting guard: the detector fires on a synthetic accuracy stream with a
collapse (and on the collapse's epoch) and stays quiet on healthy, noisy or diverging ones;
its state survives a plain-dict round trip; its options are checked before any work; and in
a real run a CO verdict rolls back to exactly the saved weights with q raised by the step,
stops for a method without q, and gives up after max_rollbacks."""
import json
from unittest import mock

import pytest
import torch

from zerograd import ConfigError, load_config, train
from zerograd.checkpoint import load_checkpoint
from zerograd.detector import Detector
from zerograd.options import GuardOptions
from zerograd.runfolder import RunFolder
from zerograd.training import loop as loop_module
from zerograd.training.guard import Guard
from zerograd.training.state import TrainState

FAST = ["epochs=3", "test_restarts=1", "test_pgd_steps=5", "model_args.width=8", "diagnostics.fgsm_val=false"]


def first_flag(stream, **kw):
    det = Detector(**kw)
    for i, (pgd, fgsm) in enumerate(stream, 1):
        if det.update(pgd, fgsm):
            return i
    return None


def test_detector_fires_at_the_collapse_and_not_before():
    # PGD rises to 0.40, then collapses at the 6th value while FGSM accuracy goes up (CO)
    stream = [(0.20, 0.30), (0.30, 0.40), (0.36, 0.45), (0.40, 0.50), (0.38, 0.52), (0.05, 0.85), (0.0, 0.9)]
    assert first_flag(stream) == 6


def test_detector_quiet_on_healthy_noisy_and_diverging_streams():
    healthy = [(0.2, 0.3), (0.3, 0.4), (0.28, 0.38), (0.35, 0.45), (0.33, 0.41), (0.4, 0.5)]
    assert first_flag(healthy) is None
    # a 40% dip is below the default 50% drop
    assert first_flag([(0.4, 0.5), (0.25, 0.5)]) is None
    # both PGD and FGSM collapse: divergence, not CO
    assert first_flag([(0.4, 0.5), (0.1, 0.12)]) is None
    # nothing learnt yet: no verdict below min_best
    assert first_flag([(0.04, 0.05), (0.0, 0.9)]) is None
    # without FGSM accuracy the PGD criterion alone decides
    assert first_flag([(0.4, None), (0.1, None)]) == 2


def test_detector_thresholds_are_configurable():
    stream = [(0.4, 0.5), (0.25, 0.6)]
    assert first_flag(stream, drop=0.3) == 2
    assert first_flag(stream, drop=0.5) is None
    # the default FGSM rule (0.5) flags a collapse in which FGSM accuracy dips to 60 % of its
    # value at the best; the stricter 0.8 hides it (as it did in docs/reproduction.md)
    assert first_flag([(0.4, 0.5), (0.1, 0.3)]) == 2
    assert first_flag([(0.4, 0.5), (0.1, 0.3)], fgsm_hold=0.8) is None


def test_guard_state_is_a_plain_dict_that_round_trips():
    g = Guard(GuardOptions(enabled=True, drop=0.4))
    g.detectors["epoch"].update(0.3, 0.4)
    g.healthy_epoch, g.events = 4, 1
    d = g.state_dict()
    assert json.loads(json.dumps(d)) == d  # plain data only
    h = Guard(GuardOptions(enabled=True, drop=0.4))
    h.load_state_dict(d)
    assert h.state_dict() == d
    k = Guard(GuardOptions(enabled=True, drop=0.3))  # changed deliberately on resume
    k.load_state_dict(d)
    assert k.opt.drop == 0.3 and k.healthy_epoch == 4  # the config's options, the saved memory


@pytest.mark.parametrize("override, fragment", [
    ("guard.drop=1.5", "guard.drop=1.5 is invalid"),
    ("guard.action=rewind", "guard.action='rewind' is invalid: must be one of rollback, stop, log"),
    ("guard.no_q=explode", "guard.no_q='explode'"),
    ("guard.q_step=abc", "guard.q_step='abc' has the wrong type"),
    ("guard.dorp=0.5", "unknown key guard.dorp (did you mean 'drop'?)"),
])
def test_bad_guard_options_are_one_line_config_errors(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config("quickstart", [override])
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_rollback_needs_epoch_checkpoints(tmp_path):
    with pytest.raises(ConfigError, match="keep_epoch_checkpoints"):
        train(load_config("quickstart", ["guard.enabled=true", "keep_epoch_checkpoints=false"]),
              tmp_path / "r", quiet=True)
    assert not (tmp_path / "r").exists()  # nothing written


def scripted_validation(stream):
    """Validation that reports a scripted CO stream of (PGD, FGSM) accuracies, keyed by how
    many epochs have been validated, so the guard's reaction can be tested on real weights."""
    calls = iter(range(10**6))

    def validation_metrics(state):
        pgd, fgsm = stream[min(next(calls), len(stream) - 1)]
        return {"val/clean_acc": 0.5, "val/pgd_acc": pgd, "val/fgsm_acc": fgsm}

    return validation_metrics


def run_with_scripted_co(tmp_path, overrides, stream):
    cfg = load_config("quickstart", FAST + ["guard.enabled=true"] + overrides)
    with mock.patch.object(loop_module, "validation_metrics", scripted_validation(stream)):
        return train(cfg, tmp_path / "r", quiet=True)


def spy_on_rollbacks(monkeypatch) -> dict:
    """Record the weights and epoch right after each reload of a checkpoint."""
    restored = {}
    original = TrainState.load_weights

    def spy(state, ckpt, source):
        original(state, ckpt, source)
        restored["weights"] = {k: v.clone() for k, v in state.model.state_dict().items()}
        restored["epoch"] = state.epoch
        restored["source"] = str(source)

    monkeypatch.setattr(TrainState, "load_weights", spy)
    return restored


def test_co_rolls_back_to_exactly_the_saved_weights_and_raises_q(tmp_path, monkeypatch):
    restored = spy_on_rollbacks(monkeypatch)
    # epoch 1 healthy (0.4), epoch 2 collapses; after the rollback everything is healthy again
    run = run_with_scripted_co(tmp_path, ["method_args.q=0.25", "guard.q_step=0.1"],
                               [(0.4, 0.5), (0.05, 0.9), (0.4, 0.5)])
    saved = load_checkpoint(tmp_path / "r" / "checkpoints" / "epoch-1.pt")["model"]
    assert restored["epoch"] == 1
    for k, v in saved.items():
        assert torch.equal(restored["weights"][k], v), k
    assert run.cfg.method_args["q"] == pytest.approx(0.35)
    events = [m for m in RunFolder(run.dir).read_metrics() if m.get("event") == "rollback"]
    assert len(events) == 1
    e = events[0]
    assert e["to_epoch"] == 1 and e["co/epoch"] == 2 and e["co/detected"] == 1
    assert e["co/pgd_acc"] == 0.05 and e["co/best_pgd_acc"] == 0.4
    assert e["method_args"]["q"] == pytest.approx(0.35)
    assert [m["epoch"] for m in run.history if "train/loss" in m] == [1, 2, 2, 3]


def test_repeated_co_gives_up_after_max_rollbacks(tmp_path):
    run = run_with_scripted_co(tmp_path, ["epochs=6", "guard.max_rollbacks=2", "guard.q_step=0.1"],
                               [(0.4, 0.5)] + [(0.01, 0.9)] * 20)
    events = [m for m in run.history if m.get("event")]
    assert [e["event"] for e in events] == ["rollback", "rollback", "stop"]
    assert "max_rollbacks" in events[-1]["reason"]
    assert [e["method_args"]["q"] for e in events[:2]] == pytest.approx([0.45, 0.55])
    assert (run.dir / "eval.json").is_file()  # the run ends cleanly


def test_method_without_q_stops_or_lowers_alpha(tmp_path):
    stream = [(0.4, 0.5), (0.05, 0.9), (0.4, 0.5)]
    run = run_with_scripted_co(tmp_path / "a", ["method=fgsm_rs"], stream)
    events = [m for m in run.history if m.get("event")]
    assert [e["event"] for e in events] == ["stop"] and "has no q" in events[0]["reason"]
    assert max(m["epoch"] for m in run.history if "train/loss" in m) == 2
    run = run_with_scripted_co(tmp_path / "b", ["method=fgsm_rs", "method_args.alpha=2.0",
                                                "guard.no_q=lower_alpha", "guard.alpha_factor=0.5"], stream)
    events = [m for m in run.history if m.get("event")]
    assert [e["event"] for e in events] == ["rollback"] and run.cfg.method_args["alpha"] == 1.0


def test_log_action_only_records_the_event(tmp_path):
    run = run_with_scripted_co(tmp_path, ["guard.action=log"], [(0.4, 0.5), (0.05, 0.9), (0.05, 0.9)])
    assert not [m for m in run.history if m.get("event")]
    flagged = [m["epoch"] for m in run.history if m.get("co/detected")]
    assert flagged == [2, 3]


def test_within_epoch_check_fires_at_its_step_and_rolls_back(tmp_path, monkeypatch):
    """Every-k-steps checks: the subset's PGD accuracy collapses from the 3rd check on while
    FGSM holds; the guard rolls back to the last healthy epoch at that step."""

    calls = {"pgd": 0}

    def scripted(self, state, n):
        calls["pgd"] += 1
        return (0.4 if calls["pgd"] < 3 else 0.0), 0.5

    monkeypatch.setattr(Guard, "measure", scripted)
    cfg = load_config("quickstart", FAST + ["guard.enabled=true", "guard.every=8", "guard.check_n=50",
                                            "guard.max_rollbacks=1"])
    run = train(cfg, tmp_path / "r", quiet=True)
    events = [m for m in run.history if m.get("event")]
    assert events[0]["event"] == "rollback" and events[0]["co/source"] == "step"
    assert events[0]["co/step"] == 24 and events[0]["co/epoch"] == 2  # 20 steps per epoch
    assert events[0]["to_epoch"] == 1 and events[-1]["event"] == "stop"


@pytest.mark.parametrize("to, margin, expected",
                         [(None, 0, 2), ("best", 0, 1), ("healthy", 0, 2), ("healthy", 1, 1)])
def test_rollback_target_is_the_best_or_the_last_healthy_epoch(tmp_path, to, margin, expected):
    # best PGD at epoch 1, epoch 2 lower but not collapsed, epoch 3 collapsed; by default
    # (to=None) the guard goes back to epoch 2, the epoch right before CO (paper, Sec. 5.2)
    chosen = [] if to is None else [f"guard.rollback_to={to}"]
    run = run_with_scripted_co(tmp_path, ["epochs=3", *chosen, f"guard.margin={margin}",
                                          "guard.max_rollbacks=1"],
                               [(0.4, 0.5), (0.3, 0.5), (0.05, 0.9), (0.4, 0.5), (0.4, 0.5)])
    events = [m for m in run.history if m.get("event") == "rollback"]
    assert [e["to_epoch"] for e in events] == [expected]
