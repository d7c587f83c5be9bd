"""Multi-process training with 2 gloo processes on the CPU: `torchrun --nproc_per_node=2`
gives the same loss curve and final weights as one process (same global batch and seed);
MultiGrad spread over 2 ranks gives the single-process perturbation; shards, their random
starts and loss weights reproduce the whole batch's; bad distributed settings fail before
any work; resuming across world sizes is allowed or refused by the global batch."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from zerograd import load_config, train
from zerograd.checkpoint import load_checkpoint
from zerograd.cli import main
from zerograd.errors import ConfigError
from zerograd.methods import random_start
from zerograd.methods.perturbations import multigrad
from zerograd.runfolder import RunFolder
from zerograd.training.distributed import Parallel, check_resume, part_sizes, setup

SRC = str(Path(__file__).resolve().parents[1] / "src")
EPS = 8 / 255
# mlp: no batch norm (its statistics would be per process without SyncBatchNorm, which torch
# supports on CUDA only) and a lazy first layer (materialised before DDP wraps the model)
SMALL = ["epochs=2", "model=mlp", "model_args.hidden=64", "train_subset=384", "val_size=100",
         "test_n=100", "test_restarts=1", "test_pgd_steps=5"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "zerograd", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("extra", [["method=zerograd"],
                                   ["method=multigrad", "method_args.n=2", "method_args.chunk=1"]],
                         ids=["zerograd", "multigrad"])
def test_two_processes_match_one_process(tmp_path, extra):
    one = train(load_config("quickstart", SMALL + extra), tmp_path / "one", quiet=True)
    spread = ["multigrad_ranks=2"] if "method=multigrad" in extra else []
    sets = [a for s in SMALL + extra + spread for a in ("--set", s)]
    proc = torchrun(["train", "--preset", "quickstart", *sets, "--out", str(tmp_path / "two"), "--quiet"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = tmp_path / "two"
    curve_one = [m["train/loss"] for m in RunFolder(one.dir).read_metrics() if "train/loss" in m]
    curve_two = [m["train/loss"] for m in RunFolder(two).read_metrics() if "train/loss" in m]
    assert len(curve_two) == 2, "rank 0 alone writes metrics: one line per epoch"
    assert curve_two == pytest.approx(curve_one, rel=1e-5)
    ckpt = load_checkpoint(two / "checkpoints" / "last.pt")
    assert ckpt["world_size"] == 2
    for k, v in one.model.state_dict().items():
        assert torch.allclose(ckpt["model"][k], v, rtol=0, atol=1e-6), k
    assert (one.model.state_dict()["1.1.weight"] - load_checkpoint(
        two / "checkpoints" / "epoch-0.pt")["model"]["1.1.weight"]).abs().max() > 1e-3  # it trained
    ev = json.loads((two / "eval.json").read_text())
    assert ev["n"] == 100 and ev["clean_acc"] == one.result["clean_acc"]  # clean flags are exact


def _spread_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cfg = load_config("quickstart", ["method=multigrad", "multigrad_ranks=2", "device=cpu"])
    par = setup(cfg)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 10 * 10, 10))
    x, y = torch.rand(6, 3, 12, 12), torch.randint(0, 10, (6,))
    torch.manual_seed(5)
    results = {}
    for n in (3, 4):
        with par.vote_sharing():  # what the training step's shard context does
            results[f"n{n}"] = multigrad(model, x, y, eps=EPS, n=n, chunk=1)
    torch.save(results, f"{out}/rank{rank}.pt")
    par.close()


def test_multigrad_spread_over_two_ranks_equals_one_process(tmp_path):
    torch.multiprocessing.spawn(_spread_worker, args=(free_port(), str(tmp_path)), nprocs=2)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 10 * 10, 10))
    x, y = torch.rand(6, 3, 12, 12), torch.randint(0, 10, (6,))
    torch.manual_seed(5)
    chunked = {f"n{n}": multigrad(model, x, y, eps=EPS, n=n, chunk=1) for n in (3, 4)}
    torch.manual_seed(5)
    batched = {f"n{n}": multigrad(model, x, y, eps=EPS, n=n) for n in (3, 4)}
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for key, expected in chunked.items():
            assert torch.equal(got[key], expected), (rank, key)
            assert (got[key] != batched[key]).float().mean() < 1e-3  # batched: float ties only
            assert got[key].abs().sum() > 0


def test_shards_reproduce_the_whole_batch():
    x, y = torch.rand(7, 3, 4, 4), torch.arange(7)
    torch.manual_seed(3)
    whole = [random_start(x, EPS) for _ in range(2)]
    logits = torch.randn(7, 10)
    mean_loss = F.cross_entropy(logits, y)
    starts, weighted = [], 0.0
    for rank in (0, 1):
        shard = Parallel(device=torch.device("cpu"), rank=rank, world_size=2).split(x, y)
        torch.manual_seed(3)
        with shard.noise():
            starts.append([random_start(shard.x, EPS) for _ in range(2)])
        xs, ys, _ = shard.train_part(shard.x, shard.y, shard.x)
        weighted += shard.weight(F.cross_entropy(logits[ys], ys), len(ys)) / 2  # DDP's average
        assert torch.equal(xs, x[[0, 1, 2, 3]] if rank == 0 else x[[4, 5, 6]])
    for i in range(2):  # each rank's starts are its rows of the single process's starts
        assert torch.equal(torch.cat([starts[0][i], starts[1][i]]), whole[i])
    assert torch.allclose(weighted, mean_loss)
    assert part_sizes(7, 2) == [4, 3] and part_sizes(2, 4) == [1, 1, 0, 0]


def test_multigrad_group_shares_its_batch_and_splits_the_update():
    x, y = torch.rand(10, 3, 4, 4), torch.arange(10)
    shards = [Parallel(device=torch.device("cpu"), rank=r, world_size=4, spread=2).split(x, y)
              for r in range(4)]
    assert torch.equal(shards[0].x, shards[1].x) and torch.equal(shards[0].x, x[:5])
    assert torch.equal(shards[2].x, x[5:])
    assert [s.part for s in shards] == [(0, 3), (3, 5), (0, 3), (3, 5)]
    assert Parallel(device=torch.device("cpu"), rank=0, world_size=4).split(x[:3], y[:3]) is None


@pytest.mark.parametrize("sets, env, match", [
    (["multigrad_ranks=2", "method=multigrad"], {}, "needs a group of 2 processes"),
    (["multigrad_ranks=2"], {}, "needs method=multigrad"),
    (["sync_bn=true"], {"WORLD_SIZE": "2"}, "needs CUDA"),
    (["batch_size=1"], {"WORLD_SIZE": "2"}, "global batch"),
    (["method=multigrad", "multigrad_ranks=3"], {"WORLD_SIZE": "2"}, "must divide"),
])
def test_bad_distributed_settings_fail_before_any_work(tmp_path, monkeypatch, capsys, sets, env, match):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    argv = ["train", "--preset", "quickstart", "--out", str(tmp_path / "run")]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and err.startswith("zerograd: error:") and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_resume_across_world_sizes_keeps_the_global_batch():
    cfg = load_config("quickstart", [])
    ckpt = {"config": cfg.to_dict(), "world_size": 2}
    check_resume(ckpt, cfg, 1)
    check_resume(ckpt, cfg, 4)
    with pytest.raises(ConfigError, match="global batch_size=64"):
        check_resume(ckpt, load_config("quickstart", ["batch_size=32"]), 1)
    with pytest.raises(ConfigError, match="no sample"):
        check_resume(ckpt, cfg, 128)
