"""The run-folder lock: a folder another living process writes is refused in one line naming
that process (for --resume, --force and a new run into it), before any work and with nothing
changed; the lock file of a process that died is taken over; the lock is released when
`train` returns and when it raises; readers (`zerograd eval`) do not take it."""
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from zerograd import ConfigError, load_config, train
from zerograd.cli import main
from zerograd.files import FileLock
from zerograd.runfolder import LOCK, RunFolder

from .conftest import Crash, CrashAt

SRC = str(Path(__file__).resolve().parents[1] / "src")
SETS = ["epochs=1", "model_args.width=4", "val_size=50", "test_n=20", "test_restarts=1",
        "test_pgd_steps=2", "val_pgd_steps=2"]
HOLD = """
import sys
from zerograd.runfolder import RunFolder
run = RunFolder(sys.argv[1])
run.lock()
print("held", flush=True)
sys.stdin.read()  # until the test closes our stdin (or kills us)
run.unlock()
"""


def holder(folder: Path) -> subprocess.Popen:
    """Another process holding `folder`'s lock (once it has printed 'held')."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"})
    assert proc.stdout.readline().strip() == "held"
    return proc


def files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def unfinished_run(tmp_path) -> Path:
    out = tmp_path / "run"
    with pytest.raises(Crash):
        train(load_config("quickstart", SETS), out, quiet=True, callbacks=[CrashAt(3)])
    return out


@pytest.fixture
def cli_sets():
    return [a for s in SETS for a in ("--set", s)]


def test_a_folder_in_use_is_refused_in_one_line_naming_the_holder(tmp_path, capsys, cli_sets):
    run = unfinished_run(tmp_path)
    proc = holder(run)
    try:
        before = files(run)
        for argv in (["train", "--resume", str(run)],
                     ["train", "--preset", "quickstart", "--force", "--out", str(run), *cli_sets],
                     ["train", "--preset", "quickstart", "--out", str(run), *cli_sets]):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1, err
            assert f"run folder {str(run)!r} is in use by process {proc.pid} on {socket.gethostname()}" in err
            assert files(run) == before  # nothing written, the holder's lock file untouched
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    assert not (run / LOCK).exists()  # the holder's release removed it
    assert main(["train", "--resume", str(run), "--quiet"]) == 0  # now free


def test_the_lock_of_a_process_that_died_is_taken_over(tmp_path):
    run = unfinished_run(tmp_path)
    proc = holder(run)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    left = json.loads((run / LOCK).read_text())
    assert left["pid"] == proc.pid  # the dead process's lock file is still there
    done = train(load_config("quickstart", SETS), run, quiet=True, resume=True)
    assert done.result["n"] == 20 and not (run / LOCK).exists()


def test_the_lock_is_released_when_train_returns_and_when_it_raises(tmp_path):
    cfg = load_config("quickstart", SETS)
    out = tmp_path / "run"
    seen = []

    class Look(CrashAt):  # while training: the lock is held, by this process
        def on_step(self, state):
            seen.append(json.loads((out / LOCK).read_text())["pid"])
            super().on_step(state)

    with pytest.raises(Crash):
        train(cfg, out, quiet=True, callbacks=[Look(2)])
    assert seen == [os.getpid()] * 2
    assert not (out / LOCK).exists()
    probe = FileLock(out / LOCK)  # another open file: would be refused if train still held it
    assert probe.acquire({"pid": 1}) is None
    probe.release()
    train(cfg, out, quiet=True, resume=True)
    assert not (out / LOCK).exists() and (out / "eval.json").is_file()
    with pytest.raises(ConfigError, match="not empty"):  # a refusal after locking releases too
        train(cfg, out, quiet=True)
    assert not (out / LOCK).exists()


def test_two_run_folder_objects_in_one_process_exclude_each_other(tmp_path):
    a, b = RunFolder(tmp_path / "new" / "run"), RunFolder(tmp_path / "new" / "run")
    a.lock()  # makes the folders
    with pytest.raises(ConfigError, match=f"in use by process {os.getpid()} "):
        b.lock()
    a.unlock()
    assert not (tmp_path / "new").exists()  # the folders it made, still empty, are gone
    b.lock()
    b.unlock()


def test_eval_of_a_run_in_training_is_not_refused(tmp_path, capsys):
    run = unfinished_run(tmp_path)
    proc = holder(run)
    try:
        assert main(["eval", str(run), "--n", "8", "--steps", "2", "--restarts", "1", "--no-checks"]) == 0
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
