"""Checks of the loop's events and hooks (zerograd.training.events): metrics are merged, one
action is chosen (a Stop over a Rollback, else the first) and every other one is logged, ranks
agree only at events where some hook may act, and a callback that is not a Hook is refused
before any work."""
from types import SimpleNamespace

import pytest

from zerograd import ConfigError, Hook, Rollback, Stop, load_config, train
from zerograd.training.events import EPOCH_END, EPOCH_START, STEP_END, Hooks


class Answer(Hook):
    def __init__(self, answer, acts_on=(STEP_END, EPOCH_END)):
        self.answer, self.acts_on = answer, acts_on

    def on_step(self, state):
        return self.answer


STATE = SimpleNamespace(epoch=3, step=17)


def test_metrics_merge_and_a_stop_wins_over_rollbacks_which_are_logged():
    logged = []
    hooks = Hooks([Answer({"a": 1}), Answer(Rollback(1, reason="r1")), Answer({"b": 2}),
                   Answer(Stop("s")), Answer(Rollback(2, reason="r2"))], emit=logged.append)
    fired = hooks.fire(STEP_END, STATE)
    assert fired.metrics == {"a": 1, "b": 2}
    assert isinstance(fired.action, Stop) and fired.action.reason == "s"
    assert [(r["event"], r["action"], r["reason"], r["by"]) for r in logged] == [
        ("superseded", "Rollback", "r1", "s"), ("superseded", "Rollback", "r2", "s")]
    assert all((r["epoch"], r["step"]) == (3, 17) for r in logged)


def test_first_rollback_wins_when_there_is_no_stop():
    logged = []
    hooks = Hooks([Answer(Rollback(1, reason="first")), Answer(Rollback(0, reason="second"))],
                  emit=logged.append)
    assert hooks.fire(STEP_END, STATE).action.reason == "first"
    assert [r["reason"] for r in logged] == ["second"]


def test_ranks_agree_once_per_event_and_only_where_a_hook_may_act():
    calls = []

    def from_main(action):
        calls.append(action)
        return action

    hooks = Hooks([Answer(None, acts_on=(EPOCH_END,)), Answer(None, acts_on=(EPOCH_END,))],
                  from_main=from_main)
    hooks.fire(STEP_END, STATE)
    hooks.fire(EPOCH_START, STATE)
    assert calls == []  # no hook acts there: no collective
    hooks.fire(EPOCH_END, STATE)
    assert calls == [None]  # one collective for the event, not one per hook


def test_a_callback_that_is_not_a_hook_is_refused_before_any_work(tmp_path):
    class Plain:
        def on_step(self, state):
            return None

    with pytest.raises(ConfigError, match="Plain is not a zerograd.Hook"):
        train(load_config("quickstart"), tmp_path / "r", callbacks=[Plain()], quiet=True)
    assert not (tmp_path / "r").exists()
