"""Exact resume: a run that crashes (an exception in-process, SIGKILL in a subprocess) at a
random step and is resumed ends with bitwise the same weights, metrics and eval.json as a run
that never stopped, including after a callback's rollback and with callback state restored;
RNG states survive a weights_only round trip; a torn metrics line is dropped."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from zerograd import Hook, Rollback, load_config, train
from zerograd.checkpoint import load_checkpoint, save_checkpoint
from zerograd.runfolder import RunFolder
from zerograd.runtime import rng_state, set_rng_state

from .conftest import Crash, CrashAt

SRC = str(Path(__file__).resolve().parents[1] / "src")
SETS = ["epochs=3", "model_args.width=8", "test_n=60", "test_restarts=1", "test_pgd_steps=5",
        "val_size=100", "val_pgd_steps=3"]
STEPS_PER_EPOCH = 21  # ceil((1797 - 360 test - 100 val) / 64)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def comparable(records: list[dict]) -> list[dict]:
    """Metrics without wall-clock times."""
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in records]


def eval_without_time(run_dir: Path) -> dict:
    result = json.loads((run_dir / "eval.json").read_text())
    result.pop("seconds")
    return result


class Counter(Hook):
    """A stateful callback: counts steps and reports the count each epoch; wrong if its state
    is not restored on resume."""

    def __init__(self):
        self.steps = 0

    def on_step(self, state):
        self.steps += 1

    def on_epoch(self, state):
        return {"diag/steps_seen": self.steps}

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, d):
        self.steps = d["steps"]


class RollbackOnce(Hook):
    """Rolls back from epoch 2 to epoch 1 once (its memory of that is its state)."""

    def __init__(self):
        self.done = False

    def on_epoch(self, state):
        if state.epoch == 2 and not self.done:
            self.done = True
            return Rollback(epoch=1, method_args={"q": 0.5}, reason="test")
        return None

    def state_dict(self):
        return {"done": self.done}

    def load_state_dict(self, d):
        self.done = d["done"]


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # a cached gaussian is part of numpy's state
    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    expected = (random.random(), np.random.randn(3).tolist(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    got = (random.random(), np.random.randn(3).tolist(), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


@pytest.mark.parametrize("extra, callbacks, crash_step", [
    ([], lambda: [Counter()], STEPS_PER_EPOCH + 11),  # mid-epoch 2
    (["method=multigrad"], lambda: [Counter()], 5),  # mid-epoch 1: resumes from the start point
    (["method_args.q=0.2"], lambda: [RollbackOnce(), Counter()], 3 * STEPS_PER_EPOCH - 4),  # after a rollback
    (["eps_ramp_epochs=2", "alpha_ramp_epochs=3"], lambda: [Counter()], STEPS_PER_EPOCH + 7),  # mid-ramp
])
def test_crash_and_resume_equals_an_uninterrupted_run(tmp_path, extra, callbacks, crash_step):
    cfg = load_config("quickstart", SETS + extra)
    whole = train(cfg, tmp_path / "whole", quiet=True, callbacks=callbacks())
    assert whole.history[-1]["step"] == 3 * STEPS_PER_EPOCH
    cbs = callbacks()
    with pytest.raises(Crash):
        train(cfg, tmp_path / "cut", quiet=True, callbacks=[*cbs, CrashAt(crash_step)])
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 9, "torn')  # the crash tore the last line
    orphan = tmp_path / "cut" / "checkpoints" / ".last.pt.abc123.tmp"
    orphan.write_bytes(b"half a checkpoint")  # and left a temp file before its rename
    resumed = train(cfg, tmp_path / "cut", quiet=True, callbacks=callbacks(), resume=True)
    assert same_weights(whole.model.state_dict(), resumed.model.state_dict())
    assert not orphan.exists()
    for name in ("last.pt", "best.pt", "epoch-3.pt"):
        a = load_checkpoint(tmp_path / "whole" / "checkpoints" / name)
        b = load_checkpoint(tmp_path / "cut" / "checkpoints" / name)
        assert same_weights(a["model"], b["model"]), name
        assert a["best_val_pgd"] == b["best_val_pgd"] and a["step"] == b["step"]
    assert comparable(RunFolder(tmp_path / "cut").read_metrics()) == comparable(RunFolder(tmp_path / "whole").read_metrics())
    assert comparable(resumed.history) == comparable(whole.history)
    assert eval_without_time(tmp_path / "cut") == eval_without_time(tmp_path / "whole")


def test_a_run_stopped_by_a_callback_resumes_to_its_final_evaluation_only(tmp_path):
    from zerograd import Stop

    class StopAtEpoch2(Hook):
        def on_epoch(self, state):
            return Stop("enough") if state.epoch == 2 else None

    cfg = load_config("quickstart", SETS)
    train(cfg, tmp_path / "r", quiet=True, callbacks=[StopAtEpoch2()])
    (tmp_path / "r" / "eval.json").unlink()  # as if killed during the final evaluation
    before = RunFolder(tmp_path / "r").read_metrics()
    run = train(cfg, tmp_path / "r", quiet=True, resume=True)
    assert RunFolder(tmp_path / "r").read_metrics() == before  # no epoch 3 was trained
    assert before[-1]["event"] == "stop" and run.result["n"] == 60


def _cli(*args, **kw):
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


SELF_KILL = """
import os, signal, sys
from zerograd import Hook, load_config, train
class KillAt(Hook):
    def on_step(self, state):
        if state.step == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)
train(load_config("quickstart", sys.argv[3:]), sys.argv[1], quiet=True, callbacks=[KillAt()])
"""


def test_sigkill_at_random_steps_then_resume_is_bitwise_identical(tmp_path):
    """Kill 1: the process SIGKILLs itself at a random step. Kill 2: the resumed process is
    SIGKILLed from outside at a random moment (possibly mid-write). Resume 3 finishes."""
    rng = random.Random(os.environ.get("ZG_KILL_SEED", time.time_ns()))
    cfg = load_config("quickstart", SETS)
    t0 = time.perf_counter()
    whole = train(cfg, tmp_path / "whole", quiet=True)
    duration = time.perf_counter() - t0
    run = tmp_path / "killed"
    step = rng.randint(1, 3 * STEPS_PER_EPOCH)
    proc = _cli("-c", SELF_KILL, str(run), str(step), *SETS)
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"not killed at step {step}"
    delay = rng.uniform(0, duration)
    proc = _cli("-m", "zerograd", "train", "--resume", str(run), "--quiet")
    time.sleep(2.0 + delay)  # ~2 s to import torch, then a random point of the training
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode in (-signal.SIGKILL, 0), err
    killed_at, second = load_checkpoint(run / "checkpoints" / "last.pt")["step"], proc.returncode
    if proc.returncode == -signal.SIGKILL:
        proc = _cli("-m", "zerograd", "train", "--resume", str(run), "--quiet")
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    info = (f"self-kill at step {step}, external kill after {2 + delay:.2f}s "
            f"(exit {second}, last.pt then at step {killed_at})")
    print(info)
    final = load_checkpoint(run / "checkpoints" / "last.pt")
    assert same_weights(whole.model.state_dict(), final["model"]), info
    assert comparable(RunFolder(run).read_metrics()) == comparable(RunFolder(tmp_path / "whole").read_metrics()), info
    assert eval_without_time(run) == eval_without_time(tmp_path / "whole"), info


def test_a_forced_run_in_an_old_folder_starts_a_clean_log(tmp_path):
    from zerograd.cli import main

    out = str(tmp_path / "r")
    sets = [a for s in SETS + ["epochs=1"] for a in ("--set", s)]
    assert main(["train", "--preset", "quickstart", "--quiet", "--out", out, *sets]) == 0
    first = (tmp_path / "r" / "eval.json").read_text()
    assert main(["train", "--preset", "quickstart", "--quiet", "--out", out, "--force", *sets,
                 "--set", "seed=1"]) == 0
    records = RunFolder(out).read_metrics()
    assert [r["epoch"] for r in records if "train/loss" in r] == [1]  # not the old run's too
    assert json.loads((tmp_path / "r" / "eval.json").read_text())["seed"] == 1 != json.loads(first)["seed"]
