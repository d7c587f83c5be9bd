"""Multi-process training on PyTorch's own engine: torch.distributed (gloo on CPUs, NCCL on
GPUs) and DistributedDataParallel, launched by `torchrun` (its RANK / WORLD_SIZE / LOCAL_RANK
environment). A single process gets the same object with world_size 1, so the loop has one
code path.

How a step is split: every rank draws the same global batch (the epoch's order comes from
`runtime.epoch_generator(seed, epoch)`) and takes its contiguous slice. Random starts are drawn for
the whole batch in rank order and each rank keeps its slice (`Shard.noise`), so ranks get
distinct starts and, on CPU, exactly the starts one process would draw. The attack runs on
the plain module (input gradients need no synchronisation); the loss's forward/backward runs
through DDP, its per-rank loss weighted so that the averaged gradient is the global batch's
mean. With `multigrad_ranks = g`, groups of g ranks share a batch, each computes the input
gradients of every g-th of MultiGrad's n starts, the sign votes are summed over the group,
and each rank then trains on its part of the group's batch.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from ..accuracy import robust_flags
from ..data import Split
from ..errors import ConfigError
from ..methods import METHODS, noise_source, vote_sharing
from ..runtime import eval_mode, forked_rng, resolve_device


def whole_batch(x: Tensor, y: Tensor) -> Shard:
    """A single process's shard: the whole batch."""
    return Shard(x, y, [len(y)], 0, (0, len(y)), len(y), 1)


def part_sizes(n: int, parts: int) -> list[int]:
    """Sizes of `parts` contiguous slices of n items, the first n % parts one larger
    (torch.tensor_split's rule)."""
    return [n // parts + (i < n % parts) for i in range(parts)]


@dataclass
class Shard:
    """One rank's view of a global batch: x, y is the batch its attack runs on (its own slice,
    or its MultiGrad group's); `part` the rows of it this rank trains on."""

    x: Tensor
    y: Tensor
    sizes: list[int]  # attack-batch size of every data shard (rank or group), in order
    index: int  # which of them is this rank's
    part: tuple[int, int]
    total: int  # global batch size
    world_size: int
    sharing: contextlib.AbstractContextManager | None = None  # MultiGrad's starts over a group

    def context(self) -> contextlib.ExitStack:
        """The context the step's attack runs in: this shard's noise and, with
        multigrad_ranks > 1, MultiGrad's sign votes shared over the group."""
        stack = contextlib.ExitStack()
        stack.enter_context(self.noise())
        if self.sharing is not None:
            stack.enter_context(self.sharing)
        return stack

    def noise(self) -> contextlib.AbstractContextManager:
        """Random starts inside draw the whole batch's noise, shard by shard, and keep this
        shard's: all ranks' generators stay in step and each shard gets distinct noise."""
        if len(self.sizes) == 1:
            return contextlib.nullcontext()
        sizes, index = self.sizes, self.index

        def draw(x: Tensor) -> Tensor:
            if x.shape[0] != sizes[index]:  # not this batch (e.g. a callback's probe)
                return torch.rand_like(x)
            mine = None
            for i, k in enumerate(sizes):
                piece = torch.rand((k, *x.shape[1:]), dtype=x.dtype, device=x.device)
                mine = piece if i == index else mine
            return mine

        return noise_source(draw)

    def train_part(self, x: Tensor, y: Tensor, delta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        lo, hi = self.part
        if (lo, hi) == (0, len(y)):
            return x, y, delta
        return x[lo:hi], y[lo:hi], delta[lo:hi]

    def weight(self, loss: Tensor, n_local: int) -> Tensor:
        """DDP averages gradients over ranks; weighting each rank's mean loss by its share
        makes the result the mean over the global batch even when slices differ in size."""
        if self.world_size == 1:
            return loss
        return loss * (self.world_size * n_local / self.total)


@dataclass
class Parallel:
    """This process's place in the run: rank, world size, device, MultiGrad group."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    spread: int = 1  # ranks per MultiGrad group
    group: object = None  # the MultiGrad group's process group
    owns_process_group: bool = False
    _closed: bool = field(default=False, repr=False)

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes the run folder and prints."""
        return self.rank == 0

    # ------------------------------------------------------------------ batches

    def rows(self, n: int) -> tuple[int, int]:
        """The rows (lo, hi) of a global batch of n that this rank's shard holds (its attack
        batch: its own slice, or its MultiGrad group's); what a streamed split reads."""
        if self.world_size == 1 or n < self.world_size:
            return 0, n
        sizes = part_sizes(n, self.world_size // self.spread)
        lo = sum(sizes[:self.rank // self.spread])
        return lo, lo + sizes[self.rank // self.spread]

    def split(self, x: Tensor, y: Tensor) -> Shard | None:
        """This rank's shard of a global batch (y the whole batch's labels; x its images, or
        only the rows `rows(len(y))`, as a streamed split reads them); None (on every rank)
        when the batch is too small to give each rank a sample."""
        n = len(y)
        if self.world_size == 1:
            return whole_batch(x, y)
        if n < self.world_size:
            return None
        sizes = part_sizes(n, self.world_size // self.spread)
        index = self.rank // self.spread
        lo, hi = self.rows(n)
        sub = part_sizes(sizes[index], self.spread)
        plo = sum(sub[:self.rank % self.spread])
        mine = x[lo:hi] if len(x) == n else x
        if len(mine) != hi - lo:
            raise ValueError(f"a batch of {n} gives rank {self.rank} rows {lo}..{hi}, not {len(x)} images")
        return Shard(mine, y[lo:hi], sizes, index, (plo, plo + sub[self.rank % self.spread]), n,
                     self.world_size, self.vote_sharing() if self.spread > 1 else None)

    def vote_sharing(self) -> contextlib.AbstractContextManager:
        """MultiGrad's n starts spread over this rank's group: each rank computes every
        spread-th start's gradient signs and the votes are summed over the group (integers,
        exact), so the delta equals the single-process one."""
        me = self.rank % self.spread
        return vote_sharing(lambda i: i % self.spread == me,
                            lambda votes: dist.all_reduce(votes, group=self.group))

    # ------------------------------------------------------------------ model

    def wrap(self, model: torch.nn.Module, cfg, sample: Tensor) -> tuple[torch.nn.Module, torch.nn.Module]:
        """(module for attacks and checkpoints, module for the training loss's forward)."""
        if self.world_size > 1 and cfg.sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if any(isinstance(p, torch.nn.parameter.UninitializedParameter) for p in model.parameters()):
            # DDP needs every shape fixed; done at any world size so that the lazy layers'
            # initialisation draws the same random numbers whatever the number of processes
            with torch.no_grad(), eval_mode(model):
                model(sample)
        if cfg.compile:
            model.compile()  # in place: state_dict keys stay those of the plain module
        if self.world_size == 1:
            return model, model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return model, torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    # ------------------------------------------------------------------ collectives

    def robust_flags(self, model, split: Split, attack: str, **kw) -> tuple[Tensor, Tensor]:
        """`evaluate.robust_flags` on this rank's contiguous slice of the split, gathered in
        order. Runs on a forked RNG so that evaluation never shifts the training's noise."""
        with forked_rng(self.device):
            if self.world_size == 1:
                return robust_flags(model, split, attack, **kw)
            sizes = part_sizes(len(split), self.world_size)
            lo = sum(sizes[:self.rank])
            part = Split(split.x[lo:lo + sizes[self.rank]], split.y[lo:lo + sizes[self.rank]])
            if len(part):
                flags = robust_flags(model, part, attack, **kw)
            else:
                flags = (torch.zeros(0, dtype=torch.bool),) * 2
        gathered: list = [None] * self.world_size
        dist.all_gather_object(gathered, flags)
        return torch.cat([g[0] for g in gathered]), torch.cat([g[1] for g in gathered])

    def sum(self, *values: float) -> list[float]:
        """Sum numbers (or 0-dim tensors) over ranks, in float64."""
        if self.world_size == 1:
            return list(values)
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def from_main(self, value):
        """Rank 0's value on every rank (hooks' actions must be the same everywhere)."""
        if self.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def on_main(self, fn: Callable, *args, **kwargs):
        """fn run by rank 0 alone (e.g. creating the run folder); its result, or its
        ConfigError, is shared so every rank returns or fails alike."""
        if self.world_size == 1:
            return fn(*args, **kwargs)
        box: list = [None]
        if self.is_main:
            try:
                box = [("ok", fn(*args, **kwargs))]
            except ConfigError as e:
                box = [("error", str(e))]
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise ConfigError(value)
        return value

    def close(self) -> None:
        """Tear down the process group if `setup` created it."""
        if self.owns_process_group and not self._closed and dist.is_initialized():
            dist.destroy_process_group()
        self._closed = True


# ---------------------------------------------------------------------- setup


def launched_world_size() -> int:
    """The world size torchrun (or an initialised process group) gives this process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(cfg) -> Parallel:
    """Join the process group torchrun describes (or stay a single process); checks the
    distributed settings first, so a bad value fails on every rank before any work."""
    world = launched_world_size()
    spread = cfg.multigrad_ranks
    if world == 1:
        if spread > 1:
            raise ConfigError(f"multigrad_ranks={spread} needs a group of {spread} processes; launch with "
                              f"torchrun --nproc_per_node={spread} (this is a single process)")
        return Parallel(device=resolve_device(cfg.device))
    if world % spread:
        raise ConfigError(f"multigrad_ranks={spread} must divide the number of processes ({world})")
    if cfg.batch_size < world:
        raise ConfigError(f"batch_size={cfg.batch_size} is the global batch and must be >= the number "
                          f"of processes ({world})")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ConfigError(f"device={cfg.device!r} cannot run several processes; use cuda or cpu")
    if cfg.sync_bn and device.type != "cuda":
        raise ConfigError("sync_bn=true needs CUDA devices (torch's SyncBatchNorm refuses CPU tensors); "
                          "use sync_bn=false on cpu")
    if cfg.sync_bn and spread > 1 and {**METHODS.defaults(cfg.method), **cfg.method_args}["n"] % spread:
        raise ConfigError(f"sync_bn=true with multigrad_ranks={spread} needs method_args.n divisible by "
                          f"{spread} (every rank must run as many synchronised passes)")
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank()
    group = None
    for g in range(world // spread):
        ranks = list(range(g * spread, (g + 1) * spread))
        pg = dist.new_group(ranks) if spread > 1 else None  # every rank creates every group
        group = pg if rank in ranks else group
    return Parallel(device=device, rank=rank, world_size=world, local_rank=local, spread=spread,
                    group=group, owns_process_group=owns)


def check_resume(checkpoint: dict, cfg, world_size: int) -> None:
    """Whether a checkpoint saved by `checkpoint.get('world_size', 1)` processes can continue
    with `world_size`: the global batch is what the data order and the update depend on, so a
    run resumes at any world size that keeps it and can shard it; otherwise a ConfigError."""
    saved = checkpoint.get("config", {}).get("batch_size")
    if saved is not None and saved != cfg.batch_size:
        raise ConfigError(
            f"cannot resume: the checkpoint was trained with global batch_size={saved} "
            f"(over {checkpoint.get('world_size', 1)} processes) but batch_size={cfg.batch_size} "
            "is asked; keep batch_size (it is the global batch whatever the number of processes)")
    if world_size > 1 and cfg.batch_size < world_size:
        raise ConfigError(f"cannot resume with {world_size} processes: batch_size={cfg.batch_size} "
                          "gives some process no sample")
    if world_size % cfg.multigrad_ranks:
        raise ConfigError(f"cannot resume with {world_size} processes: multigrad_ranks="
                          f"{cfg.multigrad_ranks} must divide it")
