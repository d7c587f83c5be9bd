"""Is the streaming loader the bottleneck? Images per second of the loader alone (read, decode,
augment: `data.batches` over a streamed folder of PNGs, with 0, 1 and 2 worker processes),
of the small CNN's FGSM-RS training step alone (`Objective.step`, the loop's own step), and
of the two together (the step fed by the loader, as `zerograd train` runs it), side by side.

    OMP_NUM_THREADS=1 python benchmarks/loader.py [--images 2000] [--size 32] [--batch-size 128]

The synthetic folder (10 classes of random PNGs) is written to a temporary directory and
removed afterwards.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from zerograd.bench import bench_objective, bench_setup
from zerograd.data import batches, load_data
from zerograd.runtime import epoch_generator

CLASSES = 10


def make_folder(root: Path, images: int, size: int) -> None:
    rng = np.random.RandomState(0)
    for split, count in (("train", images), ("test", CLASSES)):
        for i in range(count):
            folder = root / split / f"class{i % CLASSES}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (rng.rand(size, size, 3) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:05d}.png")


def epoch(split, batch_size: int, step=None) -> float:
    """Images per second of one epoch of augmented batches (each fed to `step` if given)."""
    seen, start = 0, time.perf_counter()
    for x, y in batches(split, batch_size, shuffle=True, augment=True, generator=epoch_generator(0, 1)):
        if step is not None:
            step(x, y)
        seen += len(y)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_folder(root, args.images, args.size)
        name = f"folder:{root}"
        print(f"{args.images} PNGs of {args.size}x{args.size}, batch {args.batch_size}, "
              f"{torch.get_num_threads()} torch thread(s)")
        loader = {}
        for workers in (0, 1, 2):
            split = load_data(name, val_size=0, stream=True, workers=workers).train
            epoch(split, args.batch_size)  # warm the page cache
            loader[workers] = epoch(split, args.batch_size)
            print(f"loader alone, {workers} worker(s): {loader[workers]:8.0f} images/s")
        memory = load_data(name, val_size=0, stream=False).train

        net, opt, x, y = bench_setup("small_cnn", args.batch_size, "cpu", args.size)
        objective = bench_objective("fgsm_rs", net, opt, model="small_cnn", eps=8 / 255, device="cpu")

        def step(xb, yb):
            objective.step(x=xb, y=yb)

        step(x, y)  # warm-up
        start, repeats = time.perf_counter(), 5
        for _ in range(repeats):
            step(x, y)
        alone = repeats * args.batch_size / (time.perf_counter() - start)
        print(f"FGSM-RS step alone (small_cnn): {alone:8.0f} images/s")
        fed_memory = epoch(memory, args.batch_size, step)
        print(f"step fed from memory:           {fed_memory:8.0f} images/s")
        for workers in (0, 2):
            split = load_data(name, val_size=0, stream=True, workers=workers).train
            fed = epoch(split, args.batch_size, step)
            print(f"step fed by the loader, {workers} worker(s): {fed:8.0f} images/s "
                  f"({fed / fed_memory:.2f} of fed from memory)")
        best = max(loader.values())
        print(f"loader / step: {best / alone:.1f}x (best loader setting; > 1: the loader is not "
              "the bottleneck)")


if __name__ == "__main__":
    main()
