"""Latent walks: the images a latent-variable model decodes along the path from one image's
latent to another's, as a PNG strip and an animated GIF.

The path is spherical (Shoemake 1985; for the Gaussian latents of generative models, White
2016, "Sampling Generative Networks", sec. 2.2): a high-dimensional standard normal puts almost
all of its mass near the sphere of radius sqrt(dim), and the straight line between two typical
latents dips inside it, where the decoder saw no training latents; the great circle keeps the
norm. DRAW's T latents are walked as one vector. Autoregressive models have no latent. A
conditional model holds one class along each walk: both ends are encoded, and every frame
decoded, with that label, so the walk moves through the style the latent carries (Sohn et al.
2015; Kingma et al. 2014, sec. 5.2, "analogies").
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from rnngen.errors import UserError
from rnngen.models import MODELS, GenerativeModel
from rnngen.models.base import Labels
from rnngen.models.latent import LatentModel
from rnngen.pictures import canvas_gif, canvas_strip


class NoLatentError(UserError, ValueError):
    """A walk asked of a model without a latent variable."""


def slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Rows of ``a`` to rows of ``b`` (``(n, D)`` each) at fractions ``t`` (``(S,)``) along the
    great circle, scaled linearly between the two norms: ``(S, n, D)``. Where ``a`` and ``b``
    are parallel or opposite (no single plane to turn in) the path is the straight line."""
    t = t.to(a).view(-1, 1, 1)
    na, nb = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)  # (n, 1)
    ua, ub = a / na.clamp_min(1e-12), b / nb.clamp_min(1e-12)
    omega = torch.arccos((ua * ub).sum(1, keepdim=True).clamp(-1, 1))  # (n, 1): the angle between them
    sin = torch.sin(omega)
    turning = sin > 1e-6
    safe = torch.where(turning, sin, torch.ones_like(sin))
    wa = torch.where(turning, torch.sin((1 - t) * omega) / safe, 1 - t)  # (S, n, 1)
    wb = torch.where(turning, torch.sin(t * omega) / safe, t)
    direction = wa * ua + wb * ub  # a unit vector on the great circle (when turning)
    norm = (1 - t) * na + t * nb
    straight = (1 - t) * a + t * b
    return torch.where(turning, direction * norm, straight)


def check_latent(model: GenerativeModel) -> None:
    if not isinstance(model, LatentModel):
        able = ", ".join(name for name, cls in MODELS.items() if issubclass(cls, LatentModel))
        raise NoLatentError(f"{model.name} has no latent variable to walk through; "
                            f"latent walks need a latent-variable model: {able}")


@torch.no_grad()
def walk(model: GenerativeModel, a: Tensor, b: Tensor, steps: int, y: Labels = None) -> Tensor:
    """Bernoulli means ``(steps, n, 1, 28, 28)`` decoded along the path from the latent mean of
    each image of ``a`` to that of the same row of ``b`` (binary images ``(n, 1, 28, 28)``);
    the first and last frames are the model's reconstructions from those means. A conditional
    model holds class ``y[i]`` along walk i (``(n,)``; refused by an unconditional one)."""
    check_latent(model)
    if a.shape != b.shape:
        raise ValueError(f"a and b must share a shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    model.eval()
    labels = model.labels(y, len(a))
    za, zb = (model.latent_mean(x.to(model.device), labels) for x in (a, b))
    path = slerp(za.flatten(1), zb.flatten(1), torch.linspace(0, 1, steps))  # (S, n, D)
    held = None if labels is None else labels.repeat(steps)  # row s n + i: walk i
    frames = model.decode_latent(path.flatten(0, 1).view(-1, *za.shape[1:]), held)
    return frames.view(steps, len(a), *frames.shape[1:]).cpu()


def save(frames: Tensor, strip: Path, gif: Path | None = None) -> list[Path]:
    """One row per pair, left to right along the path (PNG); the GIF walks there and back."""
    out = [canvas_strip(frames, strip, n_frames=len(frames), n_samples=frames.shape[1])]
    if gif is not None:
        there_and_back = torch.cat([frames, frames.flip(0)[1:-1]])
        out.append(canvas_gif(there_and_back, gif, nrow=min(4, frames.shape[1]), frame_ms=120, hold_ms=120))
    return out
