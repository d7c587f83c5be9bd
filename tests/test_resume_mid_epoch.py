"""Mid-epoch resume points (`checkpoint_every_steps`, `checkpoint_every_minutes`): a run
killed inside an epoch resumes from the last such point, bitwise equal to a run that never
stopped (weights, metrics records without wall times, the epochs' checkpoints, eval.json), with
the diagnostics' in-epoch state, the probe and augmentation in play; writing them changes
nothing in the run; with the options off the checkpoints are what they were; a crash while one
is written keeps the previous last.pt; a NaN rollback goes back to the mid-epoch point."""
import os

import pytest
import torch

from zerograd import load_config, train
from zerograd.checkpoint import load_checkpoint
from zerograd.data import StreamedSplit
from zerograd.runfolder import RunFolder
from zerograd.training import loop

from .conftest import Crash, CrashAt
from .test_nanguard import InjectNaN
from .test_resume import SETS, STEPS_PER_EPOCH, Counter, comparable, eval_without_time, same_weights

EVERY3 = ["checkpoint_every_steps=3"]


def crash_and_resume(tmp_path, sets, crash_step, callbacks=lambda: [Counter()]):
    """(uninterrupted run, the crashed run's last.pt, resumed run); both run folders under tmp_path."""
    cfg = load_config("quickstart", SETS + sets)
    whole = train(cfg, tmp_path / "whole", quiet=True, callbacks=callbacks())
    with pytest.raises(Crash):
        train(cfg, tmp_path / "cut", quiet=True, callbacks=[*callbacks(), CrashAt(crash_step)])
    point = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    resumed = train(cfg, tmp_path / "cut", quiet=True, callbacks=callbacks(), resume=True)
    return whole, point, resumed


def assert_same_runs(tmp_path, whole, resumed) -> None:
    assert same_weights(whole.model.state_dict(), resumed.model.state_dict())
    for name in ("last.pt", "best.pt", "epoch-1.pt", "epoch-2.pt", "epoch-3.pt"):
        a = load_checkpoint(tmp_path / "whole" / "checkpoints" / name)
        b = load_checkpoint(tmp_path / "cut" / "checkpoints" / name)
        assert same_weights(a["model"], b["model"]) and a["step"] == b["step"], name
    assert comparable(RunFolder(tmp_path / "cut").read_metrics()) == comparable(RunFolder(tmp_path / "whole").read_metrics())
    assert comparable(resumed.history) == comparable(whole.history)
    assert eval_without_time(tmp_path / "cut") == eval_without_time(tmp_path / "whole")


@pytest.mark.parametrize("extra", [
    [],  # the default diagnostics: weight updates and perturbation norms (in-epoch state)
    ["augment=true", "rotate=10", "diagnostics.probe=16", "diagnostics.every=4"],  # probe: step records
    ["stream=true", "loader_workers=1", "augment=true", "diagnostics.probe=16"],  # a streamed split
])
def test_crash_mid_epoch_resumes_from_the_mid_epoch_point_bitwise(tmp_path, extra):
    crash = STEPS_PER_EPOCH + 11  # epoch 2, batch 11; the last point before it: step 30, batch 9
    whole, point, resumed = crash_and_resume(tmp_path, EVERY3 + extra, crash)
    assert (point["epoch"], point["step"], point["in_epoch"]["batch"]) == (2, STEPS_PER_EPOCH + 9, 9)
    assert point["callbacks"]["Counter"]["steps"] == STEPS_PER_EPOCH + 9
    assert set(point["in_epoch"]["callbacks"]) == {"WeightUpdate", "PerturbationNorms"}
    assert point["in_epoch"]["totals"]["seen"] == 9 * 64
    if "stream=true" in extra:  # the resumed epoch skips batches of a loader, not of a tensor
        assert isinstance(resumed.data.train, StreamedSplit) and isinstance(whole.data.train, StreamedSplit)
    if "diagnostics.every=4" in extra:  # step-level records before the point are covered
        assert point["records"] == 7 + 1  # probe records at steps 4, 8, ..., 28 and epoch 1
    assert_same_runs(tmp_path, whole, resumed)


def test_a_crash_in_the_last_epoch_resumes_its_rest(tmp_path):
    """The point is in the last epoch: state.epoch == epochs, yet the epoch is unfinished."""
    whole, point, resumed = crash_and_resume(tmp_path, EVERY3, 2 * STEPS_PER_EPOCH + 5)
    assert (point["epoch"], point["in_epoch"]["batch"]) == (3, 3)
    assert_same_runs(tmp_path, whole, resumed)


def test_writing_resume_points_changes_nothing_and_off_is_as_before(tmp_path):
    cfg = load_config("quickstart", SETS)
    off = train(cfg, tmp_path / "off", quiet=True)
    on = train(load_config("quickstart", SETS + ["checkpoint_every_steps=2"]), tmp_path / "on", quiet=True)
    assert same_weights(off.model.state_dict(), on.model.state_dict())
    assert comparable(off.history) == comparable(on.history)
    for name in ("epoch-0.pt", "epoch-1.pt", "last.pt"):
        ckpt = load_checkpoint(tmp_path / "off" / "checkpoints" / name)
        assert "in_epoch" not in ckpt  # the option off: epoch-end checkpoints as before
    keys = set(load_checkpoint(tmp_path / "off" / "checkpoints" / "last.pt"))
    assert keys == set(load_checkpoint(tmp_path / "on" / "checkpoints" / "last.pt"))


def test_minutes_with_a_fake_clock(tmp_path, monkeypatch):
    """Every call of the clock advances 10 s: with 0.5 minutes a point follows every third step."""
    ticks = iter(range(0, 10**6, 10))
    monkeypatch.setattr(loop, "clock", lambda: next(ticks))
    saves = []
    real = loop.ResumePoints.save

    def spy(self, number, *args):
        saves.append(self.state.step)
        real(self, number, *args)

    monkeypatch.setattr(loop.ResumePoints, "save", spy)
    crash = STEPS_PER_EPOCH + 11
    whole, point, resumed = crash_and_resume(tmp_path, ["checkpoint_every_minutes=0.5"], crash)
    assert saves[:6] == [3, 6, 9, 12, 15, 18]  # the uninterrupted run's first epoch
    assert point["in_epoch"]["batch"] in range(1, 11) and point["epoch"] == 2
    assert_same_runs(tmp_path, whole, resumed)


def test_a_crash_while_a_resume_point_is_written_keeps_the_previous_one(tmp_path, monkeypatch):
    """The second mid-epoch write of last.pt dies between its bytes and its rename."""
    real, calls = os.replace, []

    def dies(src, dst):
        if str(dst).endswith("last.pt"):
            calls.append(dst)
            if len(calls) == 3:  # the start point, step 3, then step 6 dies
                raise Crash
        return real(src, dst)

    monkeypatch.setattr(os, "replace", dies)
    cfg = load_config("quickstart", SETS + EVERY3)
    with pytest.raises(Crash):
        train(cfg, tmp_path / "cut", quiet=True)
    monkeypatch.undo()
    point = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert (point["step"], point["in_epoch"]["batch"]) == (3, 3)
    assert not [p for p in (tmp_path / "cut" / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    resumed = train(cfg, tmp_path / "cut", quiet=True, resume=True)
    whole = train(cfg, tmp_path / "whole", quiet=True)
    assert same_weights(whole.model.state_dict(), resumed.model.state_dict())
    assert comparable(resumed.history) == comparable(whole.history)


def test_a_nan_rollback_goes_back_to_the_mid_epoch_point(tmp_path):
    cfg = load_config("quickstart", SETS + EVERY3)
    run = train(cfg, tmp_path / "r", quiet=True, callbacks=[InjectNaN(STEPS_PER_EPOCH + 7)])
    (event,) = [m for m in run.history if m.get("event") == "nonfinite"]
    assert (event["epoch"], event["to_epoch"], event["to_step"]) == (2, 2, STEPS_PER_EPOCH + 6)
    epochs = [m for m in run.history if "train/loss" in m]
    assert [m["epoch"] for m in epochs] == [1, 2, 3]  # epoch 2 finished from its point, once
    # the refused step was not counted; epoch 2 went on from batch 6, its steps taken once
    assert [m["step"] for m in epochs] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH, 3 * STEPS_PER_EPOCH]
    assert load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["nan_rollbacks"] == 1
    assert all(torch.isfinite(v).all() for v in run.model.state_dict().values())


def test_bad_values_are_refused():
    from zerograd import ConfigError

    for bad in ("checkpoint_every_steps=0", "checkpoint_every_minutes=0", "checkpoint_every_minutes=-1"):
        with pytest.raises(ConfigError, match="must be"):
            load_config("quickstart", [bad])


def test_sigkill_mid_epoch_then_cli_resume_is_bitwise_identical(tmp_path):
    import signal

    from .test_resume import SELF_KILL, _cli

    sets = SETS + EVERY3
    whole = train(load_config("quickstart", sets), tmp_path / "whole", quiet=True)
    run = tmp_path / "killed"
    proc = _cli("-c", SELF_KILL, str(run), str(STEPS_PER_EPOCH + 11), *sets)
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(run / "checkpoints" / "last.pt")["in_epoch"]["batch"] == 9
    proc = _cli("-m", "zerograd", "train", "--resume", str(run), "--quiet")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert same_weights(whole.model.state_dict(), load_checkpoint(run / "checkpoints" / "last.pt")["model"])
    assert comparable(RunFolder(run).read_metrics()) == comparable(RunFolder(tmp_path / "whole").read_metrics())
    assert eval_without_time(run) == eval_without_time(tmp_path / "whole")


DDP_CRASH = """
import sys
from zerograd import Hook, load_config, train
class CrashAt(Hook):
    def on_step(self, state):
        if state.step == int(sys.argv[2]):
            raise SystemExit(3)
train(load_config("quickstart", sys.argv[3:]), sys.argv[1], quiet=True, callbacks=[CrashAt()])
"""


def test_two_processes_resume_mid_epoch_as_one_process_trains(tmp_path):
    """torchrun, 2 ranks: the step rule and the minutes rule's broadcast every step (never
    due here) agree on every rank; a crash at epoch 2 batch 3 resumes from batch 2 and ends
    where one uninterrupted process ends (to DDP's float tolerance)."""
    import subprocess
    import sys

    from .test_distributed import SMALL, SRC, free_port

    sets = SMALL + ["checkpoint_every_steps=2", "checkpoint_every_minutes=1000"]  # 6 steps an epoch
    one = train(load_config("quickstart", sets), tmp_path / "one", quiet=True)
    script = tmp_path / "crash.py"
    script.write_text(DDP_CRASH)
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}

    def torchrun(*args):
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                               "--master_addr=127.0.0.1", f"--master_port={free_port()}", *args],
                              env=env, capture_output=True, text=True, timeout=300, check=False)

    two = tmp_path / "two"
    proc = torchrun(str(script), str(two), "9", *sets)
    assert proc.returncode != 0
    point = load_checkpoint(two / "checkpoints" / "last.pt")
    assert (point["epoch"], point["step"], point["in_epoch"]["batch"], point["world_size"]) == (2, 8, 2, 2)
    assert point["in_epoch"]["totals"]["seen"] == 2 * 64  # both ranks' samples
    proc = torchrun("-m", "zerograd", "train", "--resume", str(two), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = load_checkpoint(two / "checkpoints" / "last.pt")["model"]
    for k, v in one.model.state_dict().items():
        assert torch.allclose(final[k], v, rtol=0, atol=1e-6), k
    curve_one = [m["train/loss"] for m in one.history if "train/loss" in m]
    curve_two = [m["train/loss"] for m in RunFolder(two).read_metrics() if "train/loss" in m]
    assert curve_two == pytest.approx(curve_one, rel=1e-5)


class NaNOnce(InjectNaN):
    """InjectNaN whose 'already injected' survives a resume."""

    def state_dict(self):
        return {"left": self.left}

    def load_state_dict(self, d):
        self.left = d["left"]


def test_a_crash_right_after_a_mid_epoch_rollback_resumes_from_the_rolled_back_point(tmp_path):
    """The rollback's own last.pt must say it is inside epoch 2 (batch 6), or a resume would
    take epoch 2 for finished."""
    nan_at = STEPS_PER_EPOCH + 7  # refused step 28; back to step 27 (batch 6)
    whole, point, resumed = crash_and_resume(tmp_path, EVERY3, STEPS_PER_EPOCH + 8,
                                             callbacks=lambda: [NaNOnce(nan_at), Counter()])
    assert (point["step"], point["in_epoch"]["batch"], point["nan_rollbacks"]) == (STEPS_PER_EPOCH + 6, 6, 1)
    assert_same_runs(tmp_path, whole, resumed)
