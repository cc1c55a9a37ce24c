"""Pictures for reports and the README: sample grids, inpainting panels, and generation over
time (DRAW's canvas step by step, PixelRNN's image row by row).

Grids use torchvision's layout (2-pixel padding), so every tile of every picture lines up
with the sample grids of :func:`save_grid`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

PAD = 2
#: grey that marks hidden pixels in the "masked" row
MISSING_GREY = 0.5


def save_grid(images: Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Save ``(N, 1, 28, 28)`` images in [0, 1] as one PNG grid (torchvision's layout)."""
    path = _with_folder(path)
    from torchvision.utils import save_image

    save_image(images.float().clamp(0, 1).cpu(), path, nrow=nrow, padding=2, pad_value=0.5)
    return path


def _with_folder(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def inpainting_panel(original: Tensor, mask: Tensor, completed: Tensor, path: str | Path, *, ncol: int = 8) -> Path:
    """PNG of ``(N, 1, 28, 28)`` images: for each group of ``ncol`` images three rows,
    the originals, the masked inputs (``mask`` True = missing, shown grey) and the completions."""
    if not original.shape == mask.shape == completed.shape:
        raise ValueError(
            f"original, mask and completed must share a shape, got {tuple(original.shape)}, "
            f"{tuple(mask.shape)}, {tuple(completed.shape)}"
        )
    original, completed = original.detach().float().cpu(), completed.detach().float().cpu()
    masked = original.masked_fill(mask.bool().cpu(), MISSING_GREY)
    ncol = max(1, min(ncol, len(original)))
    rows = []
    for start in range(0, len(original), ncol):
        for block in (original, masked, completed):
            row = block[start : start + ncol]
            blank = torch.ones(ncol - len(row), *row.shape[1:])  # fills the last, short group
            rows.append(torch.cat([row, blank]))
    path = _with_folder(path)
    from torchvision.utils import save_image

    save_image(torch.cat(rows).clamp(0, 1), path, nrow=ncol, padding=PAD, pad_value=1.0)
    return path


def _check_frames(frames: Tensor) -> Tensor:
    if frames.ndim != 5 or frames.shape[2:] != (1, 28, 28) or not len(frames):
        raise ValueError(f"frames must be (T, n, 1, 28, 28) with T >= 1, got {tuple(frames.shape)}")
    return frames.detach().float().cpu().clamp(0, 1)


def _grid_uint8(images: Tensor, nrow: int) -> Tensor:
    """``(n, 1, 28, 28)`` -> one grey ``(H, W)`` uint8 grid."""
    from torchvision.utils import make_grid

    grid = make_grid(images, nrow=nrow, padding=PAD, pad_value=MISSING_GREY)  # (3, H, W)
    return grid[0].mul(255).round().to(torch.uint8)


def canvas_gif(frames: Tensor, path: str | Path, nrow: int = 8, *, frame_ms: int = 80, hold_ms: int = 1000) -> Path:
    """Animated GIF of canvases ``(T, n, 1, 28, 28)`` over the T steps, each frame one grid;
    the final canvas is held for ``hold_ms`` before the loop restarts."""
    from PIL import Image

    frames = _check_frames(frames)
    images = [Image.fromarray(_grid_uint8(f, nrow).numpy()) for f in frames]  # 2-D uint8: mode L
    durations = [frame_ms] * (len(images) - 1) + [hold_ms]
    path = _with_folder(path)
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0)
    return path


def canvas_strip(frames: Tensor, path: str | Path, n_frames: int = 8, *, n_samples: int = 4) -> Path:
    """PNG with one row per sample (the first ``n_samples``) and ``n_frames`` evenly spaced
    steps from the first canvas to the last, left to right."""
    frames = _check_frames(frames)
    steps = torch.linspace(0, len(frames) - 1, max(1, n_frames)).round().long().unique()
    rows = frames[steps, :n_samples].transpose(0, 1)  # (samples, steps, 1, 28, 28)
    path = _with_folder(path)
    from torchvision.utils import save_image

    save_image(rows.flatten(0, 1), path, nrow=len(steps), padding=PAD, pad_value=MISSING_GREY)
    return path
