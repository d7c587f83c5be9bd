"""What the reliability features cost: the NaN guard's check per training step, and the bytes
the RNG states add to a checkpoint, for PreAct ResNet-18 on CIFAR-shaped random data.

    OMP_NUM_THREADS=1 python benchmarks/reliability_cost.py [--batch-size 32] [--repeats 3]
"""
from __future__ import annotations

import argparse
import io
import time

import torch
import torch.nn.functional as F
from zerograd.nanguard import nonfinite
from zerograd.resume import rng_state

from zerograd.models import build_model


def saved_bytes(obj) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return len(buf.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
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


if __name__ == "__main__":
    main()
