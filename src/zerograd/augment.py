"""Batched image augmentation as tensor ops: CIFAR's pad-and-crop (zeros or reflection), flips
and rotations, and ImageNet's random-resized crop. The random numbers are drawn apart from their
use (`draw_pad`, `draw_resized`), on the CPU, in a fixed order, so `data.batches` can draw a
skipped batch's numbers without reading its images and a run is bitwise repeatable whatever
the device."""
from __future__ import annotations

import math

import torch

PAD = 4  # pixels of padding before the random crop (standard CIFAR augmentation)
PAD_MODES = ("zeros", "reflect")
CROPS = ("pad", "resized")  # pad-and-crop (CIFAR's), or random-resized-crop (ImageNet's)
RESIZED_SCALE = (0.08, 1.0)  # random-resized-crop's area fraction and aspect ratio ranges
RESIZED_RATIO = (3 / 4, 4 / 3)


def pad_crop(x: torch.Tensor, draws: tuple, pad_mode: str = "zeros") -> torch.Tensor:
    """Pad PAD pixels (zeros or a reflection), random-crop back to HxW, random horizontal flip,
    then a random rotation about the centre (if drawn; nearest pixel, zeros outside, as
    torchvision's RandomRotation), by the `draws` of `draw_pad`. One gather, no loop.

    The draws and the index maps are computed on the CPU, so the result does not depend on
    where the images live."""
    b, _, h, w = x.shape
    dy, dx, flipped, angles = draws
    i = torch.arange(h).view(1, h, 1)  # output pixel (i, j) of the crop; rows and columns
    j = torch.arange(w).view(1, 1, w)  # stay separable (broadcast) unless rotated
    inside = None  # where the output reads an image pixel, not the zero fill (None: everywhere)
    if angles is not None:
        i, j, inside = _rotated_source(i.expand(b, h, w), j.expand(b, h, w), angles)
    j = torch.where(flipped, w - 1 - j, j)  # flipping the crop = reading its columns backwards
    rows, cols = i + dy - PAD, j + dx - PAD  # in the unpadded image
    if pad_mode == "reflect":
        rows, cols = _reflect(rows, h), _reflect(cols, w)
    else:
        valid = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        inside = valid if inside is None else inside & valid
    dev = x.device
    batch = torch.arange(b, device=dev)[:, None, None]
    out = x.permute(0, 2, 3, 1)[batch, rows.clamp(0, h - 1).to(dev), cols.clamp(0, w - 1).to(dev)]
    if inside is not None:  # (b, h, w, C): zero outside the image
        out = out * inside.to(dev)[..., None].to(out.dtype)
    return out.permute(0, 3, 1, 2).contiguous()


def draw_pad(b: int, generator: torch.Generator | None, flip: bool, rotate: float):
    """The random numbers `pad_crop` uses for a batch of b images, in their fixed order
    (rows, columns, flips, then angles when rotating; the flips are drawn even when unused,
    so a run without rotation draws what it did before rotation existed). Skipping a batch
    (`batches(start=...)`) draws them too, so the batches after it are the same as in a run
    that trained on it."""
    dy = torch.randint(0, 2 * PAD + 1, (b, 1, 1), generator=generator)
    dx = torch.randint(0, 2 * PAD + 1, (b, 1, 1), generator=generator)
    flipped = torch.randint(0, 2, (b, 1, 1), generator=generator).bool() & flip
    angles = None
    if rotate > 0:
        angles = (torch.rand(b, 1, 1, generator=generator, dtype=torch.float64) * 2 - 1) * rotate
    return dy, dx, flipped, angles


def draw_resized(b: int, generator: torch.Generator | None, flip: bool,
                  scale: tuple[float, float] = RESIZED_SCALE, ratio: tuple[float, float] = RESIZED_RATIO):
    """Random-resized-crop's numbers for b images, in order: area fractions (uniform in
    `scale`), log aspect ratios (uniform in log `ratio`), vertical and horizontal placements
    (uniform in [0, 1]), flips; float64 on the CPU."""
    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=generator, dtype=torch.float64)

    area = uniform(*scale)
    log_ratio = uniform(math.log(ratio[0]), math.log(ratio[1]))
    at_y, at_x = uniform(0, 1), uniform(0, 1)
    flipped = torch.randint(0, 2, (b,), generator=generator).bool() & flip
    return area, log_ratio, at_y, at_x, flipped


def resized_crop(x: torch.Tensor, draws: tuple) -> torch.Tensor:
    """Float images (b, C, H, W): each a crop of `area` x H x W pixels and aspect ratio
    (width/height) exp(log_ratio), clipped to the image, at the drawn placement, flipped if
    drawn, resized back to H x W by bilinear sampling (one affine_grid + grid_sample for the
    batch). Scale 1 and ratio 1 give a square image back."""
    b, c, h, w = x.shape
    area, log_ratio, at_y, at_x, flipped = draws
    ratio = log_ratio.exp()
    cw = (area * h * w * ratio).sqrt().clamp(max=w)  # the crop's width and height in pixels
    ch = (area * h * w / ratio).sqrt().clamp(max=h)
    left, top = at_x * (w - cw), at_y * (h - ch)
    theta = torch.zeros(b, 2, 3, dtype=torch.float64)  # output [-1, 1] -> input coordinates
    theta[:, 0, 0] = torch.where(flipped, -1.0, 1.0) * cw / w
    theta[:, 0, 2] = (2 * left + cw) / w - 1
    theta[:, 1, 1] = ch / h
    theta[:, 1, 2] = (2 * top + ch) / h - 1
    grid = torch.nn.functional.affine_grid(theta.to(x.device, torch.float32), [b, c, h, w],
                                           align_corners=False)
    out = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                          align_corners=False)
    return out.clamp_(0, 1)


def _reflect(index: torch.Tensor, n: int) -> torch.Tensor:
    """Reflection padding's source index (the edge pixel is not repeated), for pads < n."""
    index = index.abs()
    return torch.where(index >= n, 2 * (n - 1) - index, index)


def _rotated_source(i: torch.Tensor, j: torch.Tensor, degrees: torch.Tensor):
    """For output pixels (i, j) of images rotated counter-clockwise by `degrees` about their
    centre: the nearest source pixel and whether it lies inside the image."""
    h, w = i.shape[1], i.shape[2]
    theta = torch.deg2rad(degrees)
    cos, sin = torch.cos(theta), torch.sin(theta)
    y, x = i - (h - 1) / 2, j - (w - 1) / 2  # the inverse rotation (rows point down)
    src_i = torch.round(sin * x + cos * y + (h - 1) / 2).long()
    src_j = torch.round(cos * x - sin * y + (w - 1) / 2).long()
    inside = (src_i >= 0) & (src_i < h) & (src_j >= 0) & (src_j < w)
    return src_i, src_j, inside
