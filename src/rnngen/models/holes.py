"""The holes a repair-trained model learns to fill: a mask per training image drawn from a mixture
that covers what users hide (the spatial conditioning of the Conditional PixelCNN, van den Oord
et al. 2016b, eq. 5, trained as inpainting networks are: Pathak et al. 2016, Yu et al. 2019's
free-form strokes). True = hidden, the pixels the model is scored on; "everything" hidden is
plain p(x), so the one network is also the density model.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: the kinds of hole and their share of the training images
MIXTURE = {"everything": 0.5, "rectangle": 0.15, "below_row": 0.1, "random_pixels": 0.1, "strokes": 0.15}


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None, device: torch.device) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def rectangles(n: int, size: tuple[int, int], generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> Tensor:
    """A rectangle of random height and width (a sixth to six sevenths of the side) at a random
    place, per image."""
    device = torch.device(device)
    height, width = size
    out = []
    for side, length in ((0, height), (1, width)):
        extent = _uniform(n, length / 6, length * 6 / 7, generator, device).round()
        start = (_uniform(n, 0, 1, generator, device) * (length - extent + 1)).floor()
        pos = torch.arange(length, device=device)
        inside = (pos >= start[:, None]) & (pos < (start + extent)[:, None])  # (n, length)
        out.append(inside[:, :, None] if side == 0 else inside[:, None, :])
    return (out[0] & out[1]).unsqueeze(1)


def strokes(n: int, size: tuple[int, int], generator: torch.Generator | None = None,
            device: torch.device | str = "cpu", count: int = 3, vertices: int = 5) -> Tensor:
    """Free-form brush strokes (as people scribble over an image): per image ``count`` polylines
    of ``vertices`` random turns, 3-5 pixels a segment, drawn with a brush of radius 1-2."""
    device = torch.device(device)
    height, width = size
    start = torch.rand(n, count, 1, 2, generator=generator, device=device) * torch.tensor([height, width],
                                                                                          device=device)
    angle = torch.rand(n, count, vertices - 1, generator=generator, device=device) * 2 * math.pi
    step = 3 + 2 * torch.rand(n, count, vertices - 1, generator=generator, device=device)
    moves = torch.stack([angle.sin(), angle.cos()], -1) * step.unsqueeze(-1)
    points = torch.cat([start, start + moves.cumsum(2)], 2)  # (n, count, vertices, 2)
    t = torch.linspace(0, 1, 5, device=device)[:, None]  # 5 points a segment
    dense = (points[:, :, :-1, None] * (1 - t) + points[:, :, 1:, None] * t).reshape(n, -1, 2)
    grid = torch.stack(torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device),
                                      indexing="ij"), -1).reshape(1, 1, -1, 2).float()
    distance = (dense[:, :, None] - grid).norm(dim=-1).min(1).values  # (n, H W)
    radius = 1 + torch.rand(n, 1, generator=generator, device=device)
    return (distance <= radius).view(n, 1, height, width)


def training_holes(n: int, size: tuple[int, int], generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu") -> Tensor:
    """``(n, 1, H, W)`` bool: each image's hole, its kind drawn from :data:`MIXTURE`. Every hole
    hides at least one pixel."""
    device = torch.device(device)
    height, width = size
    shares = torch.tensor(list(MIXTURE.values()), device=device)
    kind = torch.multinomial(shares, n, replacement=True, generator=generator)
    rows = torch.arange(height, device=device).view(1, 1, height, 1)
    cut = (_uniform(n, height / 7, height * 6 / 7, generator, device)).round().view(n, 1, 1, 1)
    rate = _uniform(n, 0.2, 0.9, generator, device).view(n, 1, 1, 1)
    candidates = {
        "everything": torch.ones(n, 1, height, width, dtype=torch.bool, device=device),
        "rectangle": rectangles(n, size, generator, device),
        "below_row": (rows >= cut).expand(n, 1, height, width),
        "random_pixels": torch.rand(n, 1, height, width, generator=generator, device=device) < rate,
        "strokes": strokes(n, size, generator, device),
    }
    holes = torch.stack(list(candidates.values()))[kind, torch.arange(n, device=device)]
    empty = ~holes.flatten(1).any(1)
    holes[empty] = True  # a hole that missed every pixel (tiny images): the whole image
    return holes
