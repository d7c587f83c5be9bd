"""The report's figures: per run, its accuracies and diagnostics by epoch with CO and rollbacks
marked (the shape of the paper's Figs. 1-2); over runs, validation PGD accuracy; and the
input-gradient figure of the paper's Fig. 3. matplotlib is imported only when one is drawn."""
from __future__ import annotations

import textwrap
from pathlib import Path

import torch

from .analysis import (
    RunRecord,
    co_epoch,
    distinct_labels,
    finite_number,
    fmt,
    method_args_of,
    persistent_co_epoch,
    runs_by_eps,
    setting_key,
    setting_label,
)
from .config import data_options
from .data import load_data, to_float
from .methods import METHODS, input_grad
from .runfolder import load_model


def _series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(x, y) of `key` over epoch records, x = epoch; after a rollback the x values repeat,
    so x is the position in training: the k-th epoch record trained is at x = k."""
    xs, ys = [], []
    for i, r in enumerate(records, 1):
        v = finite_number(r.get(key))
        if v is not None:
            xs.append(i)
            ys.append(v)
    return xs, ys


def _mark_events(ax, run: RunRecord, annotate: bool = False) -> None:
    """Dashed red line at each CO detection the guard logged, green at each rollback, on the
    trained-epoch axis; for a run without the guard's detections, a dotted red line at the
    onset of a collapse that persists and a grey one at an earlier flag the run recovered from."""
    trained, rollbacks = 0, 0
    before = method_args_of(run.config)[0]
    for r in run.records:
        if "train/loss" in r:
            trained += 1
        if r.get("co/detected") or r.get("event") in ("rollback", "stop"):
            x = trained + (0.5 if r.get("co/source") == "step" else 0)
            if r.get("co/detected"):
                ax.axvline(x, color="red", ls="--", lw=1)
            if r.get("event") == "rollback":
                after = r.get("method_args") or {}
                changed = " ".join(f"{k}={fmt(v)}" for k, v in after.items() if before.get(k) != v)
                before = {**before, **after}
                ax.axvline(x + 0.1, color="green", lw=1.5)
                if annotate:  # stacked, so rollbacks epochs apart stay readable
                    ax.text(x + 0.15, 0.97 - 0.16 * (rollbacks % 4), f"→ {r.get('to_epoch')}: {changed}",
                            color="green", fontsize=7, va="top", transform=ax.get_xaxis_transform())
                rollbacks += 1
            if r.get("event") == "stop":
                ax.text(x, 0.5, "stop", color="red", fontsize=7, transform=ax.get_xaxis_transform())
    if any(e.get("co/detected") for e in run.events):
        return  # the guard's own detections are drawn above
    co, onset = co_epoch(run), persistent_co_epoch(run)
    for epoch, colour, text, y in ((co, "grey", "CO flag,\nrecovered", 0.75), (onset, "red", "CO onset,\npersists", 0.97)):
        if epoch is None or (colour == "grey" and epoch == onset):
            continue
        idx = next(i for i, r in enumerate(run.epochs, 1) if r["epoch"] == epoch)
        ax.axvline(idx, color=colour, ls=":", lw=1)
        if annotate:
            ax.text(idx + 0.15, y, text, color=colour, fontsize=7, va="top",
                    transform=ax.get_xaxis_transform())


def plot_run(run: RunRecord, path: Path, setting: str | None = None) -> None:
    """One PNG per run: accuracy panel, then one panel per diagnostic the run logged, each
    with validation PGD accuracy on a second axis (red) as in the paper's Figs. 1-2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = run.epochs
    panels = [("accuracy (validation)", [("val/clean_acc", "clean"), ("val/fgsm_acc", "FGSM"),
                                         ("val/pgd_acc", "PGD")], False)]
    candidates = [
        ("weight-update size (MSE per epoch)", [("diag/weight_mse", "all weights")], True),
        ("perturbation change on the probe batch (MSE, 1/255²)",
         [("diag/delta_mse", "this run's method"), ("diag/delta_mse/fgsm_rs", "FGSM-RS"),
          ("diag/delta_mse/zeroed", "FGSM-RS, small grads zeroed")], True),
        ("sign disagreement with PGD-10", [("diag/sign_disagree", "fraction of entries")], False),
        ("input-gradient alignment (cosine)", [("diag/grad_cosine", "x vs random point")], False),
        ("training perturbation: mean |δ| per entry ×255 (Table 4's unit)",
         [("diag/delta_mean_abs_x255", "mean |δ|×255")], False),
    ]
    panels += [p for p in candidates if any(_series(ep, k)[0] for k, _ in p[1])]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.4 * len(panels)), sharex=True, squeeze=False)
    for ax, (title, keys, log) in zip(axes[:, 0], panels):
        for key, label in keys:
            xs, ys = _series(ep, key)
            if xs:
                ax.plot(xs, ys, marker="o", ms=3, label=label)
        if log:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
        if title.startswith("accuracy"):
            ax.set_ylim(0, 1)
        else:
            twin = ax.twinx()
            xs, ys = _series(ep, "val/pgd_acc")
            twin.plot(xs, ys, color="red", alpha=0.5, lw=1)
            twin.set_ylabel("val PGD acc", color="red", fontsize=7)
            twin.tick_params(axis="y", labelsize=7, colors="red")
        _mark_events(ax, run, annotate=title.startswith("accuracy"))
    from matplotlib.ticker import MaxNLocator

    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1, 0].set_xlabel("epoch trained (rolled-back epochs count again)")
    title = [f"{run.name}, seed {run.config.get('seed', '?')}",
             *textwrap.wrap(setting or setting_label(run.config), 90)]  # a long label stays inside the figure
    fig.suptitle("\n".join(title), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_overview(runs: list[RunRecord], path: Path) -> None:
    """Validation PGD accuracy per epoch of every run, one colour (and label) per setting; one
    panel per eps, since accuracies at different eps are on different scales."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    groups = runs_by_eps(runs)
    counts = [len({setting_key(r.config) for r in group}) for group in groups.values()]
    fig, axes = plt.subplots(len(groups), 1, squeeze=False,
                             figsize=(9, sum(4.5 + 0.22 * c for c in counts)),
                             gridspec_kw={"height_ratios": [4.5 + 0.22 * c for c in counts]})
    for ax, (eps, group) in zip(axes[:, 0], groups.items()):
        # a panel's labels tell its own settings apart: what they share (eps, its attack steps) is
        # said once, by the title
        names = distinct_labels([r.config for r in group])
        labels = list(dict.fromkeys(names[setting_key(r.config)] for r in group))
        # tab10's hues are distinct; tab20 pairs a dark and a light shade of each, read as one setting
        colours, count = (plt.get_cmap("tab10"), 10) if len(labels) <= 10 else (plt.get_cmap("tab20"), 20)
        drawn: set[str] = set()
        for r in group:
            label = names[setting_key(r.config)]
            xs, ys = _series(r.epochs, "val/pgd_acc")
            ax.plot(xs, ys, color=colours(labels.index(label) % count), alpha=0.8,
                    label=None if label in drawn else label)
            drawn.add(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch trained")
        ax.set_ylabel("validation PGD accuracy")
        if len(groups) > 1:
            ax.set_title(f"eps = {eps}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.15))  # below: long labels keep the axes wide
    fig.tight_layout()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def gradient_figure(run_path: Path, path: Path, n: int = 4, data_dir=None) -> None:
    """Fig. 3 of the paper for the first n test images: the image, its input gradient and
    the gradient masked to the entries where MultiGrad's 3 random starts agree in sign."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model, cfg, _ = load_model(run_path, "last", data_dir=data_dir)
    model.eval()
    data = load_data(cfg.dataset, **data_options(cfg, "cpu", val_size=0, train_subset=None, test_subset=n,
                                                 stream=True))
    x = to_float(data.test.x)
    y = data.test.y
    torch.manual_seed(0)
    g = input_grad(model, x, y, torch.zeros_like(x))
    agree = METHODS["multigrad"](model, x, y, eps=cfg.eps, n=3) != 0
    masked = g * agree
    fig, axes = plt.subplots(3, n, figsize=(1.8 * n, 5.4), squeeze=False)
    for j in range(n):
        for i, (img, title) in enumerate([(x[j], "input"), (_visible(g[j]), "∇x loss"),
                                          (_visible(masked[j]), "MultiGrad-masked")]):
            ax = axes[i, j]
            ax.imshow(img.permute(1, 2, 0).squeeze(-1).detach().cpu().numpy(),
                      cmap="gray" if img.shape[0] == 1 else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(title, fontsize=8)
    fig.suptitle(f"{run_path.name}: {cfg.method}, eps={cfg.eps * 255:.0f}/255", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _visible(g):
    """A gradient as an image: scaled by 3 standard deviations into [0, 1], grey = 0."""
    s = g.std().clamp_min(1e-12) * 3
    return (0.5 + 0.5 * (g / s)).clamp(0, 1)
