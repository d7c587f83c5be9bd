"""`zerograd bench`: seconds per training step of each method on the same model and batch,
measured side by side in one process (round-robin, each timed step preceded by an untimed
one of the same method; median of per-round ratios), with the ratio to FGSM-RS. A step is
the training loop's own (`training.objective.Objective.step`): attack, loss, backward, update.

`--paper` times the methods of the paper's Sec. 4.4 table and puts its minutes (T4 GPU, half
precision, CIFAR-10, 30 epochs) as ratios to FGSM-RS beside the measured ratios and beside each
method's compute-bound limit, measured in the same run from the cost of one attack pass `a`
(forward + input-gradient backward), one weight update `u` (forward + backward + step) and,
for GradAlign, one double-backward pass `g` (forward, input gradient with its graph, backward
of a function of it to the weights): FGSM-RS and ZeroGrad a+u, MultiGrad (n = 3, one start per
pass as the paper's non-parallel timing) 3a+u, PGD-k k*a+u, GradAlign 2a+u+g (the FGSM pass,
the clean gradient recomputed without a graph as its reference does, the random point's
gradient with its double backward)."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import Config, apply
from .errors import ConfigError
from .methods import METHODS, REGULARIZERS, input_grad
from .models import build_model
from .registry import Registry
from .training.objective import Objective

MAX_THREADS = 1024

# name -> the config keys of the benchmarked setting (the paper's settings)
BENCH_METHODS: Registry[dict] = Registry("benchmark method")
for _name, _keys in (
    ("fgsm_rs", {"method": "fgsm_rs"}),
    ("fgsm", {"method": "fgsm"}),
    ("zerograd", {"method": "zerograd"}),
    ("multigrad", {"method": "multigrad", "method_args": {"n": 3}}),  # CPU default: a start per pass
    ("multigrad_batched", {"method": "multigrad", "method_args": {"n": 3, "chunk": 3}}),  # one pass
    ("multigrad_chunk", {"method": "multigrad", "method_args": {"n": 3, "chunk": 1}}),
    ("n_fgsm", {"method": "n_fgsm"}),
    ("gradalign", {"method": "fgsm", "grad_align": 0.2}),
    ("pgd2", {"method": "pgd", "method_args": {"steps": 2, "alpha": 0.5}}),
    ("pgd10", {"method": "pgd", "method_args": {"steps": 10, "alpha": 0.25}}),
):
    BENCH_METHODS.register(_name, _keys)


# the paper's Sec. 4.4 table: name -> (benchmarked setting, minutes, attack passes a,
# double-backward passes g) of its compute-bound limit n_a * a + u + n_g * g
PAPER_TIMES: Registry[tuple[str, float, int, int]] = Registry("paper timing row")
for _name, _row in (
    ("FGSM-RS", ("fgsm_rs", 22.5, 1, 0)),
    ("ZeroGrad", ("zerograd", 22.6, 1, 0)),
    ("MultiGrad", ("multigrad_chunk", 43.9, 3, 0)),  # the paper's non-parallelized MultiGrad
    ("GradAlign", ("gradalign", 87.9, 2, 1)),
    ("PGD-2", ("pgd2", 33.8, 2, 0)),
    ("PGD-10", ("pgd10", 124.2, 10, 0)),
):
    PAPER_TIMES.register(_name, _row)


def paper_table(methods: dict[str, dict], costs: dict[str, float]) -> list[dict]:
    """The Sec. 4.4 rows: the paper's minutes and ratio to FGSM-RS, the measured s/step and
    ratio, the compute-bound limit (n_a * a + u + n_g * g seconds from `costs`) and its ratio to
    FGSM-RS's limit, and how far above its limit each method runs (measured / limit)."""
    base_paper = PAPER_TIMES["FGSM-RS"][1]
    base_limit = costs["a"] + costs["u"]
    rows = []
    for label, (name, minutes, n_a, n_g) in PAPER_TIMES.items():
        limit = n_a * costs["a"] + costs["u"] + n_g * costs["g"]
        measured = methods[name]["s_per_step"]
        rows.append({"method": label, "bench": name, "paper_minutes": minutes,
                     "paper_ratio": minutes / base_paper, "s_per_step": measured,
                     "ratio": methods[name]["ratio"],  # the median of per-round ratios
                     "limit": (f"{n_a}a" if n_a > 1 else "a") + "+u" + ("+g" * n_g),
                     "limit_s": limit, "limit_ratio": limit / base_limit,
                     "over_limit": measured / limit})
    return rows


def format_paper_table(rows: list[dict], costs: dict[str, float]) -> str:
    passes = (f"passes: a = {costs['a']:.4f} s (attack: forward + input-gradient backward), "
              f"u = {costs['u']:.4f} s (update: forward + backward + step), "
              f"g = {costs['g']:.4f} s (double backward)")
    head = (f"{'method':<11}{'paper min':>10}{'paper':>8}{'s/step':>9}{'measured':>10}"
            f"{'limit':>11}{'limit s':>9}{'limit':>7}{'meas/limit':>12}")
    lines = [passes, head]
    for r in rows:
        lines.append(f"{r['method']:<11}{r['paper_minutes']:>10.1f}{r['paper_ratio']:>7.2f}x"
                     f"{r['s_per_step']:>9.3f}{r['ratio']:>9.2f}x{r['limit']:>11}"
                     f"{r['limit_s']:>9.3f}{r['limit_ratio']:>6.2f}x{r['over_limit']:>11.2f}x")
    return "\n".join(lines)


def passes(net, opt, x, y) -> dict:
    """The passes of the compute-bound limits on the benchmark batch: 'a' one attack pass,
    'u' one weight update, 'g' one double-backward pass (each a function of no arguments)."""
    zero = torch.zeros_like(x)

    def attack():
        input_grad(net, x, y, zero)

    def update():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x).float(), y).backward()
        opt.step()

    def double():
        delta = zero.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(net(x + delta).float(), y), delta, create_graph=True)
        g.pow(2).sum().backward()
        opt.zero_grad(set_to_none=True)

    return {"a": attack, "u": update, "g": double}


def _timed(fn, device: str) -> float:
    """Seconds of fn() after an untimed call of it (switching what runs changes the memory
    footprint, and re-growing the heap would otherwise be billed to the next one)."""
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def bench_names(methods: list[str] | None) -> list[str]:
    """The settings to time: all, or those named. A name is a setting (`pgd10`) or a training
    method or regularizer as `train` names it (`pgd`: every PGD setting; `grad_align`: the
    GradAlign one), so one naming works in both; unknown names get did-you-mean."""
    if not methods:
        return list(BENCH_METHODS)
    names: list[str] = []
    for name in methods:
        if name in BENCH_METHODS:
            chosen = [name]
        else:
            chosen = [n for n, keys in BENCH_METHODS.items()
                      if (name in METHODS and keys["method"] == name and "grad_align" not in keys)
                      or (name in REGULARIZERS and keys.get(name))]
            if not chosen:
                BENCH_METHODS[name]  # unknown: one line with did-you-mean
        names += [n for n in chosen if n not in names]
    return names


def train_settings(name: str) -> str:
    """A benchmarked setting as `zerograd train` overrides, e.g. 'method=pgd method_args.steps=2'."""
    keys = BENCH_METHODS[name]
    parts = [f"method={keys['method']}"] + [f"method_args.{k}={v}" for k, v in keys.get("method_args", {}).items()]
    return " ".join(parts + [f"{k}={v}" for k, v in keys.items() if k not in ("method", "method_args")])


def bench_setup(model: str, batch_size: int, device: str, image_size: int):
    """The benchmarked network (train mode), its optimizer and one random batch, seeded."""
    torch.manual_seed(0)
    net = build_model(model, num_classes=10, in_channels=3, mean=(0.5,) * 3, std=(0.25,) * 3).to(device)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)
    x = torch.rand(batch_size, 3, image_size, image_size, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    return net, opt, x, y


def bench_objective(name: str, net, opt, *, model: str, eps: float, device: str) -> Objective:
    """The training loop's own step for the benchmarked setting `name`."""
    cfg = apply(Config(model=model, eps=eps, device=device), BENCH_METHODS[name])
    return Objective(cfg, net, opt, torch.device(device))


# --------------------------------------------------------------------------- peak memory
# On CUDA: `torch.cuda.max_memory_allocated` around the step. On CPU the process's resident
# high-water mark (Linux VmHWM, reset through /proc/self/clear_refs) in a fresh process per
# method, because memory freed by one method stays resident and would hide the next one's peak.

MB = 2**20


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def measure(name: str, *, model: str, batch_size: int, device: str, image_size: int, eps: float) -> dict:
    """Run one training step of bench method `name` here and report its peak memory in MB."""
    net, opt, x, y = bench_setup(model, batch_size, device, image_size)
    objective = bench_objective(name, net, opt, model=model, eps=eps, device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        objective.step(x=x, y=y)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"peak_mb": peak / MB, "step_mb": (peak - before) / MB, "memory": "cuda_max_allocated"}
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    objective.step(x=x, y=y)
    peak = _status_kb("VmHWM")
    return {"peak_mb": peak / 1024, "step_mb": (peak - before) / 1024, "memory": "cpu_rss_hwm"}


def step_peak(name: str, *, model: str, batch_size: int, device: str, image_size: int = 32,
              eps: float = 8 / 255, threads: int = 1) -> dict:
    """`measure` in a fresh Python process on CPU (in this one on CUDA)."""
    kw = {"model": model, "batch_size": batch_size, "device": device, "image_size": image_size, "eps": eps}
    if device.startswith("cuda"):
        return measure(name, **kw)
    src = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": str(threads)}
    code = ("import json, sys, torch; from zerograd.bench import measure; "
            f"torch.set_num_threads({threads}); "
            "print(json.dumps(measure(sys.argv[1], **json.loads(sys.argv[2]))))")
    out = subprocess.run([sys.executable, "-c", code, name, json.dumps(kw)], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_bench(model: str = "preact_resnet18", batch_size: int = 128, repeats: int = 3,
              methods: list[str] | None = None, threads: int | None = None, eps: float = 8 / 255,
              device: str = "cpu", quiet: bool = False, image_size: int = 32,
              memory: bool = False, paper: bool = False) -> dict:
    """Time each method's training step; returns {'methods': {name: {'s_per_step', 'ratio'}}, ...}.
    With `memory`, also each step's peak memory (`memory.step_peak`, one fresh process per
    method on CPU): 'peak_mb' (process high-water mark), 'step_mb' (above the memory held
    before the step) and 'mem_ratio' (step_mb over the baseline's). With `paper`, the methods
    of the paper's Sec. 4.4 table and 'paper': its rows (`paper_table`) and 'passes'."""
    if paper and methods:
        raise ConfigError("--paper times the paper's methods; it cannot be combined with --methods")
    names = [row[0] for row in PAPER_TIMES.values()] if paper else bench_names(methods)
    if batch_size < 1 or repeats < 1:
        raise ConfigError(f"--batch-size={batch_size} and --repeats={repeats} must both be >= 1")
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise ConfigError(f"--threads={threads} is invalid: must be in 1..{MAX_THREADS}")
    if threads is not None:
        torch.set_num_threads(threads)
    net, opt, x, y = bench_setup(model, batch_size, device, image_size)
    steps = {n: bench_objective(n, net, opt, model=model, eps=eps, device=device) for n in names}
    timings: dict[str, list[float]] = {n: [] for n in names}
    limit_passes = passes(net, opt, x, y) if paper else {}
    pass_times: dict[str, list[float]] = {k: [] for k in limit_passes}
    for r in range(repeats):
        for name in names:
            timings[name].append(_timed(partial(steps[name].step, x=x, y=y), device))
        # the passes of the limits in the same rounds, so that load changes hit both alike
        for k, fn in limit_passes.items():
            with steps[names[0]].autocast():
                pass_times[k].append(_timed(fn, device))
        if not quiet:
            print(f"repeat {r + 1}/{repeats} done", file=sys.stderr)
    base_name = "fgsm_rs" if "fgsm_rs" in names else names[0]
    report = {
        "model": model, "batch_size": batch_size, "repeats": repeats, "device": device,
        "threads": torch.get_num_threads(), "baseline": base_name,
        "methods": {n: {"train": train_settings(n), "s_per_step": statistics.median(t),
                        "ratio": statistics.median(a / b for a, b in zip(t, timings[base_name]))}
                    for n, t in timings.items()},
    }
    if paper:
        costs = {k: statistics.median(v) for k, v in pass_times.items()}
        report["passes"] = costs
        report["paper"] = paper_table(report["methods"], costs)
    if memory:
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
        print(f"{'setting':<18}{'s/step':>10}{'vs ' + base_name:>14}{mem_head}  as train --set")
        for n, m in report["methods"].items():
            mem = f"{m['peak_mb']:>10.0f}{m['step_mb']:>10.0f}{m['mem_ratio']:>13.2f}x" if memory else ""
            print(f"{n:<18}{m['s_per_step']:>10.3f}{m['ratio']:>13.2f}x{mem}  {m['train']}")
        if paper:
            print("\nthe paper's Sec. 4.4 (T4 GPU, half precision, CIFAR-10, 30 epochs) beside this run")
            print(format_paper_table(report["paper"], report["passes"]))
    return report
