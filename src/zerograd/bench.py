"""`zerograd bench`: seconds per training step of each method on the same model and batch,
measured side by side in one process (round-robin, each timed step preceded by an untimed
one of the same method; median of per-round ratios), with the ratio to FGSM-RS. A training step is the attack plus one forward/backward/SGD update."""
from __future__ import annotations

import statistics
import sys
import time

import torch
import torch.nn.functional as F

from .errors import ConfigError
from .models import build_model
from .perturb import METHODS
from .regularize import grad_align

# name -> (method, hyperparameters, GradAlign lambda); the paper's settings
BENCH_METHODS: dict[str, tuple[str, dict, float]] = {
    "fgsm_rs": ("fgsm_rs", {}, 0.0),
    "fgsm": ("fgsm", {}, 0.0),
    "zerograd": ("zerograd", {}, 0.0),
    "multigrad": ("multigrad", {"n": 3}, 0.0),  # default chunking: one start per pass on a CPU
    "multigrad_batched": ("multigrad", {"n": 3, "chunk": 3}, 0.0),  # all starts in one pass
    "multigrad_chunk": ("multigrad", {"n": 3, "chunk": 1}, 0.0),
    "n_fgsm": ("n_fgsm", {}, 0.0),
    "gradalign": ("fgsm", {}, 0.2),
    "pgd2": ("pgd", {"steps": 2, "alpha": 0.5}, 0.0),
    "pgd10": ("pgd", {"steps": 10, "alpha": 0.25}, 0.0),
}


def training_step(model, optimizer, x, y, method: str, params: dict, lam: float, eps: float) -> None:
    """The loop's step without logging: attack, loss, backward, update."""
    delta = METHODS[method](model, x, y, eps=eps, **params)
    loss = F.cross_entropy(model(x + delta), y)
    if lam > 0:
        loss = loss + grad_align(model, x, y, eps=eps, lam=lam)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def bench_setup(model: str, batch_size: int, device: str, image_size: int):
    """The benchmarked network (train mode), its optimizer and one random batch, seeded."""
    torch.manual_seed(0)
    net = build_model(model, num_classes=10, in_channels=3, mean=(0.5,) * 3, std=(0.25,) * 3).to(device)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)
    x = torch.rand(batch_size, 3, image_size, image_size, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    return net, opt, x, y


def run_bench(model: str = "preact_resnet18", batch_size: int = 128, repeats: int = 3,
              methods: list[str] | None = None, threads: int | None = None, eps: float = 8 / 255,
              device: str = "cpu", quiet: bool = False, image_size: int = 32,
              memory: bool = False) -> dict:
    """Time each method's training step; returns {'methods': {name: {'s_per_step', 'ratio'}}, ...}.
    With `memory`, also each step's peak memory (`memory.step_peak`, one fresh process per
    method on CPU): 'peak_mb' (process high-water mark), 'step_mb' (above the memory held
    before the step) and 'mem_ratio' (step_mb over the baseline's)."""
    names = methods or list(BENCH_METHODS)
    for name in names:
        if name not in BENCH_METHODS:
            from .registry import lookup

            lookup(BENCH_METHODS, name, "benchmark method")
    if batch_size < 1 or repeats < 1:
        raise ConfigError(f"--batch-size={batch_size} and --repeats={repeats} must both be >= 1")
    if threads is not None:
        torch.set_num_threads(threads)
    net, opt, x, y = bench_setup(model, batch_size, device, image_size)
    timings: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names:
            # an untimed step first: switching methods changes the memory footprint, and the
            # page faults of re-growing the heap would otherwise be billed to the next method
            training_step(net, opt, x, y, *BENCH_METHODS[name], eps)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            training_step(net, opt, x, y, *BENCH_METHODS[name], eps)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            timings[name].append(time.perf_counter() - t0)
        if not quiet:
            print(f"repeat {r + 1}/{repeats} done", file=sys.stderr)
    base_name = "fgsm_rs" if "fgsm_rs" in names else names[0]
    report = {
        "model": model, "batch_size": batch_size, "repeats": repeats, "device": device,
        "threads": torch.get_num_threads(), "baseline": base_name,
        "methods": {n: {"s_per_step": statistics.median(t),
                        "ratio": statistics.median(a / b for a, b in zip(t, timings[base_name]))}
                    for n, t in timings.items()},
    }
    if memory:
        from .memory import step_peak

        for n in names:
            report["methods"][n].update(step_peak(n, model=model, batch_size=batch_size, device=device,
                                                  image_size=image_size, eps=eps,
                                                  threads=torch.get_num_threads()))
        for n in names:
            m = report["methods"][n]
            m["mem_ratio"] = m["step_mb"] / max(report["methods"][base_name]["step_mb"], 1e-9)
    if not quiet:
        print(f"{model}, batch {batch_size}, {device}, {torch.get_num_threads()} threads, "
              f"median of {repeats}")
        mem_head = f"{'peak MB':>10}{'step MB':>10}{'vs ' + base_name:>14}" if memory else ""
        print(f"{'method':<16}{'s/step':>10}{'vs ' + base_name:>14}{mem_head}")
        for n, m in report["methods"].items():
            mem = f"{m['peak_mb']:>10.0f}{m['step_mb']:>10.0f}{m['mem_ratio']:>13.2f}x" if memory else ""
            print(f"{n:<16}{m['s_per_step']:>10.3f}{m['ratio']:>13.2f}x{mem}")
    return report
