"""Peak memory of one training step, for `zerograd bench --memory`.

On CUDA: `torch.cuda.max_memory_allocated` around the step. On CPU the process's resident
high-water mark (Linux VmHWM, reset through /proc/self/clear_refs) in a fresh process per
method, because memory freed by one method stays resident and would hide the next one's peak.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

MB = 2**20


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def measure(name: str, *, model: str, batch_size: int, device: str, image_size: int, eps: float) -> dict:
    """Run one training step of bench method `name` here and report its peak memory in MB."""
    from .bench import BENCH_METHODS, bench_setup, training_step

    net, opt, x, y = bench_setup(model, batch_size, device, image_size)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        training_step(net, opt, x, y, *BENCH_METHODS[name], eps)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"peak_mb": peak / MB, "step_mb": (peak - before) / MB, "memory": "cuda_max_allocated"}
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    training_step(net, opt, x, y, *BENCH_METHODS[name], eps)
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
    code = ("import json, sys, torch; from zerograd.memory import measure; "
            f"torch.set_num_threads({threads}); "
            "print(json.dumps(measure(sys.argv[1], **json.loads(sys.argv[2]))))")
    out = subprocess.run([sys.executable, "-c", code, name, json.dumps(kw)], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
