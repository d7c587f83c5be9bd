"""The pieces every perturbation is built from: random starts (with a pluggable noise source
and vote sharing for multi-process runs), input gradients that never touch weight gradients,
projection, and ZeroGrad's per-sample quantile mask."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

_NOISE: list[Callable[[Tensor], Tensor]] = []  # innermost `noise_source` last
_SHARING: list[tuple[Callable[[int], bool], Callable[[Tensor], None]]] = []


@contextlib.contextmanager
def noise_source(draw: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Within the block, random starts take their U[0, 1) noise from `draw(x)` instead of
    `torch.rand_like(x)`; distributed training uses it to give each rank its slice of the
    noise a single process would draw for the whole batch."""
    _NOISE.append(draw)
    try:
        yield
    finally:
        _NOISE.pop()


def uniform_like(x: Tensor) -> Tensor:
    """U[0, 1) noise of x's shape: every random start draws through here."""
    return _NOISE[-1](x) if _NOISE else torch.rand_like(x)


@contextlib.contextmanager
def vote_sharing(mine: Callable[[int], bool], reduce: Callable[[Tensor], None]) -> Iterator[None]:
    """Within the block, MultiGrad's sign votes are shared by a group of processes: this one
    computes the starts i with mine(i) (all starts are still drawn, in order) and `reduce`
    sums the votes over the group in place. The delta equals the single-process one."""
    _SHARING.append((mine, reduce))
    try:
        yield
    finally:
        _SHARING.pop()


def vote_share() -> tuple[Callable[[int], bool], Callable[[Tensor], None] | None]:
    """(which starts this process computes, how votes are summed over its group)."""
    return _SHARING[-1] if _SHARING else ((lambda i: True), None)


def random_start(x: Tensor, eps: float, scale: float = 1.0) -> Tensor:
    """Uniform noise in [-scale*eps, scale*eps]^d, clipped so that x + delta stays in [0, 1]."""
    delta = (uniform_like(x) * 2 - 1) * (scale * eps)
    return (x + delta).clamp_(0, 1) - x


def input_grad(model: torch.nn.Module, x: Tensor, y: Tensor, delta: Tensor) -> Tensor:
    """d loss / d delta at x + delta, without computing or touching weight gradients."""
    return input_grad_and_logits(model, x, y, delta)[0]


def input_grad_and_logits(model, x: Tensor, y: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
    """The input gradient and the (detached) logits of the same forward pass.

    The loss is summed over the batch so that each sample's gradient does not shrink with
    the batch size (only its sign and relative size are used)."""
    delta = delta.detach().requires_grad_(True)
    logits = model(x + delta)
    loss = F.cross_entropy(logits.float(), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, delta)
    return grad, logits.detach()


def project(x: Tensor, delta: Tensor, eps: float | None) -> Tensor:
    """Clip delta to the eps-ball (skipped when eps is None) and x + delta to [0, 1]."""
    if eps is not None:
        delta = delta.clamp(-eps, eps)
    return ((x + delta).clamp(0, 1) - x).detach()


def quantile_threshold(a: Tensor, q: float) -> Tensor:
    """Per-row lower q-quantile of a (B, d), equal to `torch.quantile(a, q, dim=1)`.

    Uses one `kthvalue` plus cheap passes instead of a full sort (4x faster on CPU) and has
    no size limit. Ties are handled as torch.quantile does (linear interpolation)."""
    n = a.shape[1]
    pos = torch.tensor(q, dtype=a.dtype) * (n - 1)
    lo = int(pos)
    frac = pos - lo
    v_lo = a.kthvalue(lo + 1, dim=1).values
    if frac == 0 or lo + 1 >= n:
        return v_lo
    # the (lo+2)-th smallest value: v_lo again if it is tied, else the smallest value above it
    tied = (a <= v_lo[:, None]).sum(dim=1) >= lo + 2
    above = torch.where(a > v_lo[:, None], a, torch.full_like(a, float("inf"))).amin(dim=1)
    v_hi = torch.where(tied, v_lo, above)
    return torch.lerp(v_lo, v_hi, frac.to(a.device))


THRESHOLD_BUDGET = 1 << 20  # elements per threshold pass (kthvalue copies its input + int64 indices)


def _rows(t: Tensor) -> Tensor:
    """A view of t as (B, d) (t contiguous or channels_last): a per-sample quantile does not
    depend on the order of a sample's entries."""
    if t.is_contiguous():
        return t.view(t.shape[0], -1)
    return t.permute(0, 2, 3, 1).view(t.shape[0], -1)


def _row_viewable(t: Tensor) -> bool:
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


def zero_small(g: Tensor, q: float) -> Tensor:
    """ZeroGrad's mask: entries of g whose |g| is strictly below the per-sample q-quantile of
    |g| are set to 0. The threshold is computed in float32 whatever g's dtype.

    Works on groups of samples of at most THRESHOLD_BUDGET entries, so an ImageNet-size batch
    costs one output copy plus bounded temporaries (not the 4 batch copies of one kthvalue)."""
    if q <= 0:
        return g
    g = g.detach() if _row_viewable(g) else g.detach().contiguous()
    out = torch.empty_like(g)
    src, dst = _rows(g), _rows(out)
    step = max(1, THRESHOLD_BUDGET // max(src.shape[1], 1))
    for i in range(0, src.shape[0], step):
        part = src[i:i + step]
        a = part.abs().float()
        torch.mul(part, a >= quantile_threshold(a, q)[:, None], out=dst[i:i + step])
    return out


def sign_step(x: Tensor, delta: Tensor, g: Tensor, step: float, eps: float | None) -> Tensor:
    """One signed gradient step of size `step` (absolute), then projection."""
    return project(x, delta + step * g.sign(), eps)


