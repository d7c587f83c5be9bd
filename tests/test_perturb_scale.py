"""ZeroGrad's threshold on an ImageNet-size batch (128x3x224x224, above the 16M elements
older torch.quantile refuses): equal to torch.quantile row by row, and measured in a fresh
process to need no more than one extra copy of the batch (plus the bounded per-group
temporaries), where one kthvalue over the whole batch would hold about four."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from zerograd.methods import THRESHOLD_BUDGET, zero_small

SRC = str(Path(__file__).resolve().parents[1] / "src")

PEAK = """
import json, torch
from pathlib import Path
from zerograd.methods import zero_small
torch.set_num_threads(1)
def kb(key):
    return next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines()
                if l.startswith(key + ":"))
g = torch.randn(128, 3, 224, 224)
out = zero_small(g[:2], 0.35)  # warm up the allocator and kernels
before = kb("VmRSS")
Path("/proc/self/clear_refs").write_text("5")
out = zero_small(g, 0.35)
print(json.dumps({"extra": (kb("VmHWM") - before) * 1024, "batch": g.nbytes}))
"""


def test_imagenet_batch_threshold_matches_quantile_and_copies_the_batch_once():
    g = torch.randn(128, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    assert g.numel() > 16 * 2**20
    out = zero_small(g, 0.35)
    for i in (0, 77, 127):
        a = g[i].abs().flatten()
        t = torch.quantile(a, 0.35)
        assert torch.equal(out[i], torch.where(a >= t, g[i].flatten(), 0).view_as(g[i])), i
    cl = g.contiguous(memory_format=torch.channels_last)[:8]  # rows viewed without a copy
    assert torch.equal(zero_small(cl, 0.35), out[:8])
    if not Path("/proc/self/clear_refs").exists():
        return
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    res = json.loads(subprocess.run([sys.executable, "-c", PEAK], env=env, check=True,
                                    capture_output=True, text=True).stdout)
    # the output copy + one group's abs, kthvalue's copy, int64 indices and masks (~24 B per
    # entry): measured 11-25 MB beyond the copy on a quiet machine, but up to ~47 MB under a
    # loaded one (allocator arenas); a single pass over the whole batch holds ~236 MB more, so
    # "less than two copies" still tells the two apart
    temporaries = 32 * THRESHOLD_BUDGET + 8 * 2**20
    assert res["extra"] < max(2 * res["batch"], res["batch"] + temporaries), res
