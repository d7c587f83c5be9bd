"""`zerograd selftest`: what a user with a new machine runs first. One training step of every
method (and GradAlign) through the loop's own `Objective.step` in float32, then again in each
precision and memory layout the device supports (bf16 autocast, fp16 on CUDA, channels_last,
`torch.compile` when asked), each compared with the float32 step: finite loss, delta inside its
ball and x + delta in [0, 1], loss within a tolerance. Then a two-process gloo run of the real
distributed step compared with one process. One line per check; exit 1 on a failure."""
from __future__ import annotations

import math
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from .config import Config, apply
from .errors import ConfigError
from .methods import METHODS, delta_bound
from .models import build_model
from .runtime import resolve_device
from .training.distributed import Parallel, setup
from .training.objective import Objective

BATCH, SIZE, CLASSES = 16, 16, 10
LOSS_TOLERANCE = {"fp32": 1e-6, "channels_last": 1e-4, "compile": 1e-4, "bf16": 5e-2, "fp16": 1e-2}


@dataclass
class Check:
    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.passed else 'FAIL'}  {self.name:<34} {self.detail}"


def settings() -> dict[str, dict]:
    """name -> config keys: every method at its defaults, and GradAlign on FGSM."""
    out = {name: {"method": name} for name in METHODS}
    out["gradalign"] = {"method": "fgsm", "grad_align": 0.2}
    return out


def variants(device: torch.device, compile_model: bool) -> dict[str, dict]:
    """The precisions and layouts this device supports, as config keys (fp32 first)."""
    out = {"fp32": {}}
    if device.type == "cuda":
        out["fp16"] = {"amp": True, "amp_dtype": "fp16"}
    if device.type in ("cuda", "cpu"):
        out["bf16"] = {"amp": True, "amp_dtype": "bf16"}
    out["channels_last"] = {"channels_last": True}
    if compile_model:
        out["compile"] = {}
    return out


def one_step(keys: dict, device: torch.device, *, channels_last: bool = False,
             compile_model: bool = False) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(loss, delta, x) of one training step from fixed weights, batch and random starts."""
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=CLASSES, in_channels=3, mean=(0.5,) * 3,
                        std=(0.25,) * 3).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile_model:
        model.compile()
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    cfg = apply(Config(model="small_cnn", device=str(device)), keys)
    x = torch.rand(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)).to(device)
    y = torch.randint(0, CLASSES, (BATCH,), generator=torch.Generator().manual_seed(2)).to(device)
    torch.manual_seed(3)
    batch, _ = Objective(cfg, model, optimizer, device).step(x=x, y=y)
    return float(batch.loss.detach()), batch.delta.float(), batch.x.float()


def check_step(name: str, keys: dict, variant: str, extra: dict, device: torch.device,
               reference: float | None) -> tuple[Check, float]:
    """One step of setting `name` in `variant`, checked alone and against the fp32 loss."""
    cfg = apply(Config(), keys)
    bound = delta_bound(cfg.method, cfg.eps, **cfg.method_args)
    loss, delta, x = one_step({**keys, **{k: v for k, v in extra.items() if k != "channels_last"}},
                              device, channels_last=extra.get("channels_last", False),
                              compile_model=variant == "compile")
    problems = []
    if not math.isfinite(loss):
        problems.append(f"loss {loss}")
    if not torch.isfinite(delta).all():
        problems.append("delta not finite")
    if delta.abs().max().item() > bound + 1e-6:
        problems.append(f"|delta| {delta.abs().max().item():.4f} > {bound:.4f}")
    if not ((x + delta).min() >= -1e-6 and (x + delta).max() <= 1 + 1e-6):
        problems.append("x + delta outside [0, 1]")
    detail = f"loss {loss:.5f}"
    if reference is not None and math.isfinite(loss):
        rel = abs(loss - reference) / max(abs(reference), 1e-12)
        detail += f", {rel:.1e} from fp32"
        if rel > LOSS_TOLERANCE[variant]:
            problems.append(f"loss {rel:.1e} from fp32 > {LOSS_TOLERANCE[variant]:g}")
    return Check(f"{name} {variant}", not problems, "; ".join(problems) or detail), loss


# --------------------------------------------------------------------------- two processes


def _distributed_step(rank: int, folder: str, keys: dict) -> None:
    """One process of the two-process check: the real setup, DDP wrap, shard and step. The
    process group meets through a file in the check's own folder, not a TCP port, so no other
    process (e.g. a concurrent torchrun) can take its address between choosing and binding."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{Path(folder) / 'store'}", rank=rank, world_size=2)
    cfg = apply(Config(model="mlp", device="cpu", batch_size=BATCH), keys)
    par = setup(cfg)  # joins the group made above
    try:
        weights = _step_weights(cfg, par)
        if par.is_main:
            torch.save(weights, Path(folder) / "two.pt")
    finally:
        par.close()
        if dist.is_initialized():
            dist.destroy_process_group()


def _step_weights(cfg: Config, par) -> dict:
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=CLASSES, in_channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    x = torch.rand(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, CLASSES, (BATCH,), generator=torch.Generator().manual_seed(2))
    model, train_model = par.wrap(model, cfg, x[:1])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    torch.manual_seed(3)
    Objective(cfg, model, optimizer, par.device, train_model).step(par.split(x, y))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def check_distributed() -> Check:
    """Two gloo processes on this machine's CPU give the weights one process gives."""
    keys = {"method": "zerograd"}
    with tempfile.TemporaryDirectory() as folder:
        try:
            torch.multiprocessing.spawn(_distributed_step, args=(folder, keys), nprocs=2)
        except (torch.multiprocessing.ProcessRaisedException,
                torch.multiprocessing.ProcessExitedException) as e:  # the check fails, saying why
            return Check("ddp gloo 2 processes", False, str(e).strip().splitlines()[-1][:160])
        two = torch.load(Path(folder) / "two.pt", weights_only=True)
    one = _step_weights(apply(Config(model="mlp", device="cpu", batch_size=BATCH), keys),
                        Parallel(device=torch.device("cpu")))
    diff = max((two[k].float() - one[k].float()).abs().max().item() for k in one)
    return Check("ddp gloo 2 processes", diff < 1e-5, f"max |weight difference| {diff:.1e} after one step")


def selftest(device: str = "auto", *, compile_model: bool = False, distributed: bool = True,
             report: Callable[[Check], None] = lambda check: None) -> list[Check]:
    """Run every check on `device`; `report` sees each as it finishes."""
    dev = resolve_device(device)
    if compile_model and not hasattr(torch, "compile"):
        raise ConfigError("--compile needs torch.compile (torch >= 2.0)")
    checks = []
    for name, keys in settings().items():
        reference = None
        for variant, extra in variants(dev, compile_model).items():
            check, loss = check_step(name, keys, variant, extra, dev, reference)
            if variant == "fp32":
                reference = loss if check.passed else None
            checks.append(check)
            report(check)
    if distributed and torch.distributed.is_available() and torch.distributed.is_gloo_available():
        checks.append(check_distributed())
        report(checks[-1])
    return checks


def main(device: str = "auto", compile_model: bool = False, distributed: bool = True) -> int:
    """The CLI's selftest: one line per check, a summary, exit 1 on a failure."""
    checks = selftest(device, compile_model=compile_model, distributed=distributed,
                      report=lambda c: print(c.line(), flush=True))
    failed = [c for c in checks if not c.passed]
    print(f"{len(checks) - len(failed)} passed, {len(failed)} failed", file=sys.stderr)
    return 1 if failed else 0

