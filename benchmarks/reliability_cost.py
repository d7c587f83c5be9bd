"""What the reliability features cost: the NaN guard's check per training step, and the bytes
the RNG states add to a checkpoint, for PreAct ResNet-18 on CIFAR-shaped random data; with
--processes 2, also what the ranks' agreement on the hooks' actions costs under DDP (the loop's
two `Parallel.from_main` collectives per step, at after-backward and step-end, which the NaN
guard's per-step check needs), timed against the DDP training step itself.

    OMP_NUM_THREADS=1 python benchmarks/reliability_cost.py [--batch-size 32] [--repeats 3] [--processes 2]
"""
from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from zerograd.models import build_model
from zerograd.runtime import rng_state
from zerograd.training.distributed import Parallel
from zerograd.training.nanguard import nonfinite


def saved_bytes(obj) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return len(buf.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--processes", type=int, default=1, help="> 1: also time the agreement under DDP")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("preact_resnet18", num_classes=10, in_channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.rand(args.batch_size, 3, 32, 32), torch.randint(0, 10, (args.batch_size,))

    def step() -> torch.Tensor:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    loss = step()  # warm-up, and momentum buffers exist
    start = time.perf_counter()
    for _ in range(args.repeats):
        loss = step()
    step_s = (time.perf_counter() - start) / args.repeats
    start = time.perf_counter()
    for _ in range(10 * args.repeats):
        nonfinite(loss, model)
    guard_s = (time.perf_counter() - start) / (10 * args.repeats)
    weights = saved_bytes({"model": model.state_dict(), "optimizer": opt.state_dict()})
    rng = saved_bytes({"rng": rng_state()})
    print(f"training step (batch {args.batch_size}) {1000 * step_s:.0f} ms; NaN check "
          f"{1000 * guard_s:.2f} ms ({100 * guard_s / step_s:.2f}% of a step)")
    print(f"checkpoint model+optimizer {weights / 1e6:.1f} MB; RNG states add {rng / 1e3:.1f} kB")
    if args.processes > 1:
        with tempfile.TemporaryDirectory() as folder:
            mp.spawn(_agreement_rank, args=(args, folder), nprocs=args.processes)
            print((Path(folder) / "result.txt").read_text().strip())


def _agreement_rank(rank: int, args, folder: str) -> None:
    """One process: DDP steps on its shard, alternating steps with and without the loop's two
    agreements (so both see the same load), then the agreement alone, many times."""
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=f"file://{Path(folder) / 'store'}", rank=rank,
                            world_size=args.processes)
    par = Parallel(device=torch.device("cpu"), rank=rank, world_size=args.processes)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(
        build_model("preact_resnet18", num_classes=10, in_channels=3, mean=(0.5,) * 3, std=(0.25,) * 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.rand(args.batch_size, 3, 32, 32), torch.randint(0, 10, (args.batch_size,))

    def step(agree: bool) -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        if agree:
            par.from_main(None)  # after-backward
        opt.step()
        if agree:
            par.from_main(None)  # step-end

    step(True)
    times = {False: 0.0, True: 0.0}
    for _ in range(args.repeats):
        for agree in (False, True):
            dist.barrier()
            start = time.perf_counter()
            step(agree)
            times[agree] += time.perf_counter() - start
    plain, agreed = times[False] / args.repeats, times[True] / args.repeats
    dist.barrier()
    start = time.perf_counter()
    for _ in range(100):
        par.from_main(None)
    one = (time.perf_counter() - start) / 100
    if rank == 0:
        (Path(folder) / "result.txt").write_text(
            f"{args.processes} processes (gloo), DDP step (batch {args.batch_size} each) {1000 * plain:.0f} ms, "
            f"with the two agreements {1000 * agreed:.0f} ms (ratio {agreed / plain:.3f}); one agreement alone "
            f"{1000 * one:.2f} ms, two are {200 * one / plain:.2f}% of a step")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
