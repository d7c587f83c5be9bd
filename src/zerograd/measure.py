"""`zerograd measure`: the paper's Table 10 and Table 4 for one checkpoint and every method.

Table 10 (Golgooni et al., App. C.4): on ONE model, each method's perturbation WITHOUT a random
start, and the fraction of entries that are non-zero with a sign different from PGD-10's, over
all entries (zeros included), averaged over the mini-batches of a split. Without a random
start: FGSM, FGSM-RS and N-FGSM become FGSM from the clean point (FGSM-RS with its larger
alpha is clipped to the same eps-ball, N-FGSM gets k = 0), ZeroGrad takes its input gradient
at the clean point (zerograd's `random_init=False`: zeroed entries stay 0), PGD-k starts at the
clean point. MultiGrad needs its n starts to vote, so it keeps them; its step already starts
from the clean point, so its perturbation has no random-start part (UNVERIFIED: the paper does
not say how it ran MultiGrad "without random starts"). The PGD-10 reference (step 2/255 at
eps 8/255, i.e. alpha 0.25) also starts at the clean point (UNVERIFIED: the paper's PGD-10 has a
random start elsewhere). ZeroGrad's q is the table's 0.4.

Table 4: the per-element mean |delta| x 255 of each method's perturbation as it trains (random
starts included, the paper's default hyperparameters) over a whole split.

Both run with the model in training mode, as a training attack sees it (batch-norm batch
statistics; the running statistics and the global RNG are restored afterwards), on the split's
images in order without augmentation (the paper measures during a training epoch, with
augmentation: a deliberate difference, so the numbers are repeatable).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import data_options
from .data import batches, check_available, load_data
from .errors import ConfigError
from .files import write_json
from .methods import METHODS
from .registry import Registry
from .runfolder import check_output, checkpoint_facts, load_checkpoint_model, results_path
from .runtime import isolated, resolve_device
from .training.diagnostics import perturbation_norms, sign_disagreement


@dataclass(frozen=True)
class Measured:
    """A row of the tables: a method and its hyperparameters without a random start (Table
    10; None: not in it) and as it trains (Table 4; None: not in it)."""

    method: str
    no_start: dict | None = field(default=None)
    as_trained: dict | None = field(default=None)


MEASURED: Registry[Measured] = Registry("measured method")
for _name, _row in (
    ("fgsm", Measured("fgsm", {"alpha": 1.0}, {"alpha": 1.0})),
    ("fgsm_rs", Measured("fgsm", {"alpha": 1.25}, None)),  # without its start: FGSM (clipped)
    ("fgsm_rs-a1", Measured("fgsm_rs", None, {"alpha": 1.0})),
    ("fgsm_rs-a1.25", Measured("fgsm_rs", None, {"alpha": 1.25})),
    ("zerograd", Measured("zerograd", {"q": 0.4, "random_init": False}, {"q": 0.35})),
    ("multigrad", Measured("multigrad", {"n": 3}, {"n": 3})),
    ("n_fgsm", Measured("n_fgsm", {"k": 0.0}, {})),
    ("gradalign", Measured("fgsm", None, {"alpha": 1.0})),  # its perturbation is FGSM's
    ("pgd2", Measured("pgd", {"steps": 2, "alpha": 0.5, "random_init": False},
                      {"steps": 2, "alpha": 0.5})),
    ("pgd10", Measured("pgd", None, {"steps": 10, "alpha": 0.25})),
):
    MEASURED.register(_name, _row)

TABLES = (10, 4)
SPLITS = ("train", "val", "test")
REFERENCE = {"steps": 10, "alpha": 0.25, "random_init": False}  # Table 10's PGD-10


def rows_of(table: int, methods: list[str] | None = None) -> list[str]:
    """The methods of `table` (all of them, or the given ones, each checked)."""
    names = list(methods or MEASURED)
    for name in names:
        MEASURED[name]  # unknown names: one line with did-you-mean
    key = "no_start" if table == 10 else "as_trained"
    chosen = [n for n in names if getattr(MEASURED[n], key) is not None]
    if not chosen:
        raise ConfigError(f"none of {', '.join(names)} is in Table {table}; its methods: "
                          f"{', '.join(n for n in MEASURED if getattr(MEASURED[n], key) is not None)}")
    return chosen


def measured_images(n: int, batch_size: int) -> int:
    """How many of n images are measured: a last mini-batch of one image is left out (batch
    norm cannot normalize one image in training mode)."""
    return n - 1 if n > 1 and n % batch_size == 1 else n


def measure_model(model, split, *, table: int, eps: float, methods: list[str] | None = None,
                  batch_size: int = 128, seed: int = 0, device=None) -> dict:
    """Table 10 (`sign_disagree`: mean over mini-batches of the fraction of entries non-zero
    and of the other sign than PGD-10's) or Table 4 (`mean_abs_x255`: mean |delta| x 255 over
    every entry of the split) for each method, on `model` in training mode. A last mini-batch
    of one image is left out (batch norm cannot normalize one image in training mode)."""
    names = rows_of(table, methods)
    device = device or split.x.device
    key = "no_start" if table == 10 else "as_trained"
    sums = {n: 0.0 for n in names}
    n_batches = n_entries = 0
    was_training = model.training
    model.train()
    with isolated(model, torch.device(device), seed):
        lone = measured_images(len(split), batch_size) < len(split)
        for x, y in batches(split, batch_size, shuffle=False, augment=False, drop_last=lone):
            reference = METHODS["pgd"](model, x, y, eps=eps, **REFERENCE) if table == 10 else None
            for n in names:
                row = MEASURED[n]
                delta = METHODS[row.method](model, x, y, eps=eps, **getattr(row, key))
                if table == 10:
                    sums[n] += sign_disagreement(delta, reference)
                else:
                    sums[n] += perturbation_norms(delta)["mean_abs_x255"].sum().item() * delta[0].numel()
            n_batches += 1
            n_entries += x.numel()
    model.train(was_training)
    if table == 10:
        return {n: s / n_batches for n, s in sums.items()}
    return {n: s / n_entries for n, s in sums.items()}


def _check(table, split, n, batch_size) -> None:
    if table not in TABLES:
        raise ConfigError(f"--table={table} is invalid: must be 10 (sign disagreement with "
                          "PGD-10) or 4 (mean |delta| x 255)")
    if split not in SPLITS:
        raise ConfigError(f"--split={split!r} is invalid: must be one of {', '.join(SPLITS)}")
    for name, value in (("--n", n), ("--batch-size", batch_size)):
        if value is not None and value < 1:
            raise ConfigError(f"{name}={value} is invalid: must be >= 1")


def result_label(table: int, split: str, methods: list[str] | None) -> str:
    """table10, or table10-test-fgsm+pgd2: another split or a subset of the methods is
    another measurement, so it never overwrites the whole table of the training split."""
    return (f"table{table}" + ("" if split == "train" else f"-{split}")
            + ("" if methods is None else "-" + "+".join(methods)))


def measure_path(path, *, table: int = 10, which: str | None = None, split: str = "train",
                 n: int | None = None, methods: list[str] | None = None, batch_size: int | None = None,
                 seed: int = 0, data_dir=None, device: str = "auto", out=None,
                 write: bool = True, quiet: bool = False, model=None) -> dict:
    """`zerograd measure`: Table 10 or Table 4 of a run folder's (or a checkpoint file's)
    model over a split of its data (the run's training split by default; `n`: its first n
    images). Writes a results file (RUN/evals/table<T>-<checkpoint>-n<N>.json, tagged by
    `result_label` for another split or a subset of methods) and prints the table unless `quiet`."""
    _check(table, split, n, batch_size)
    rows_of(table, methods)
    if write and out is not None:
        check_output(Path(out), "results file")
    dev = resolve_device(device)
    model, cfg, ckpt_path, ckpt = load_checkpoint_model(path, which, device=dev, data_dir=data_dir,
                                                        model=model)
    check_available(cfg.dataset, cfg.data_dir)
    data = load_data(cfg.dataset, **data_options(cfg, dev, test_subset=None, stream=False))
    part = getattr(data, split)
    if len(part) == 0:  # only the validation split can be: a run trained with val_size=0
        raise ConfigError(f"--split={split} of {str(ckpt_path)!r} has no images (the run's "
                          f"val_size={cfg.val_size}): measure on --split train or test")
    if n is not None:
        if n > len(part):
            raise ConfigError(f"--n={n} exceeds the {len(part)} images of the {split} split")
        part = type(part)(part.x[:n], part.y[:n])
    t0 = time.perf_counter()
    values = measure_model(model, part, table=table, eps=cfg.eps, methods=methods,
                           batch_size=batch_size or cfg.batch_size, seed=seed, device=dev)
    result = {"table": table, "split": split, "n": measured_images(len(part), batch_size or cfg.batch_size),
              "images_asked": len(part), "eps": cfg.eps,
              "batch_size": batch_size or cfg.batch_size, "seed": seed,
              "unit": "fraction of all entries" if table == 10 else "mean |delta| x 255 per entry",
              "values": values,
              "settings": {k: {"method": MEASURED[k].method,
                               **(MEASURED[k].no_start if table == 10 else MEASURED[k].as_trained)}
                           for k in values},
              "reference": {"method": "pgd", **REFERENCE} if table == 10 else None,
              "seconds": round(time.perf_counter() - t0, 3),
              **checkpoint_facts(ckpt_path, ckpt, cfg)}
    if write:
        label = result_label(table, split, None if methods is None else list(values))
        target = Path(out) if out is not None else results_path(ckpt_path, label, len(part))
        target.parent.mkdir(parents=True, exist_ok=True)
        write_json(target, result)
        result["results_file"] = str(target)
    if not quiet:
        print(format_table(result))
        if write:
            print(f"results: {result['results_file']}", file=sys.stderr)
    return result


def format_table(result: dict) -> str:
    """The measured table as text, one row per method."""
    t = result["table"]
    head = ("sign disagreement with PGD-10, % of all entries (no random starts)" if t == 10
            else "mean |delta| x 255 per entry")
    where = (f"checkpoint {result['checkpoint']} ({result['checkpoint_kind']}, epoch "
             f"{result['checkpoint_epoch']}), {result['split']} split, n={result['n']}, eps={result['eps']:.5f}")
    lines = [f"Table {t}: {head}", where]
    for name, v in result["values"].items():
        value = f"{100 * v:6.2f}" if t == 10 else f"{v:6.2f}"
        lines.append(f"  {name:<14}{value}")
    return "\n".join(lines)
