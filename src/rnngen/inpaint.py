"""Inpainting: hide part of each image, complete it by conditional sampling, score it.

Completion is the pseudo-Gibbs sampler of Rezende et al. 2014 (their missing-data
imputation): fill the missing pixels with Bernoulli(0.5) noise, then repeatedly reconstruct
the image (z ~ q(z|x), then p(x|z)) and redraw only the missing pixels from the
reconstruction's Bernoulli means, the observed pixels staying clamped to their true values.
Each round is one step of a Markov chain whose stationary distribution is p(missing |
observed) when q(z|x) is exact; the last round keeps the means instead of a sample. It uses
only ``model.reconstruct``, so every model inpaints with the same code.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from rnngen.classifier import DigitClassifier, accuracy, as_images
from rnngen.models import GenerativeModel

SIDE = 28
#: side of the centre_square mask (half the image side)
CENTRE = 14


def bottom_half(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Rows 14..27 missing."""
    mask = torch.zeros(n, 1, SIDE, SIDE, dtype=torch.bool)
    mask[:, :, SIDE // 2 :] = True
    return mask


def centre_square(n: int, generator: torch.Generator | None = None) -> Tensor:
    """The central 14x14 square (rows and columns 7..20) missing."""
    lo = (SIDE - CENTRE) // 2
    mask = torch.zeros(n, 1, SIDE, SIDE, dtype=torch.bool)
    mask[:, :, lo : lo + CENTRE, lo : lo + CENTRE] = True
    return mask


def random_pixels(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Exactly half the pixels of each image missing, chosen at random per image."""
    device = generator.device if generator is not None else None
    perm = torch.rand(n, SIDE * SIDE, generator=generator, device=device).argsort(1)  # random permutations
    return (perm < SIDE * SIDE // 2).view(n, 1, SIDE, SIDE).cpu()


MASKS: dict[str, Callable[[int, torch.Generator | None], Tensor]] = {
    "bottom_half": bottom_half,
    "centre_square": centre_square,
    "random_pixels": random_pixels,
}


def make_mask(kind: str, n: int, generator: torch.Generator | None = None) -> Tensor:
    """Boolean "missing" mask ``(n, 1, 28, 28)`` of the named kind (True = hidden), on the CPU."""
    if kind not in MASKS:
        raise ValueError(f"unknown inpainting mask {kind!r}; choose one of {', '.join(MASKS)}")
    return MASKS[kind](n, generator)


@torch.no_grad()
def inpaint(
    model: GenerativeModel,
    x: Tensor,
    mask: Tensor,
    iterations: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Complete the pixels of ``x`` ``(B, 1, 28, 28)`` in [0, 1] where ``mask`` is True.

    Returns ``x`` with the missing pixels replaced by Bernoulli means after ``iterations``
    rounds of the pseudo-Gibbs sampler; observed pixels are returned exactly as given.
    ``generator`` must live on the model's device.
    """
    if iterations < 1:
        raise ValueError(f"inpainting iterations must be >= 1, got {iterations}")
    if mask.shape != x.shape or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be bool with the images' shape {tuple(x.shape)}, got {mask.dtype} {tuple(mask.shape)}"
        )
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError("inpainting needs images in [0, 1]")
    model.eval()
    x, mask = x.to(model.device), mask.to(model.device)
    noise = torch.bernoulli(torch.full_like(x, 0.5), generator=generator)
    current = torch.where(mask, noise, x)
    for step in range(iterations):
        means = model.reconstruct(current, generator=generator)  # (B, 1, 28, 28)
        last = step == iterations - 1
        fill = means if last else torch.bernoulli(means, generator=generator)
        current = torch.where(mask, fill, x)  # clamp the observed pixels
    return current


def inpainting_metrics(
    model: GenerativeModel,
    classifier: DigitClassifier,
    x: Tensor,
    y: Tensor,
    kind: str,
    iterations: int,
    seed: int,
    *,
    batch_size: int = 250,
) -> dict[str, float]:
    """Scores of completing images ``x`` (labels ``y``) under mask ``kind``.

    ``mse_missing`` and ``bce_missing`` (nats) are means per missing pixel;
    ``accuracy_*`` is the classifier's on the completed, the original and the masked images
    (missing pixels set to 0, the background), so completion can be judged against both ends.
    """
    x = as_images(x)
    mask = make_mask(kind, len(x), torch.Generator().manual_seed(seed))
    gen = torch.Generator(device=model.device).manual_seed(seed)
    completed = torch.cat(
        [
            inpaint(model, x[i : i + batch_size], mask[i : i + batch_size], iterations, gen).cpu()
            for i in range(0, len(x), batch_size)
        ]
    )
    n_missing = mask.sum().clamp(min=1)
    sq_err = (completed - x).square()
    bce = F.binary_cross_entropy(completed, x, reduction="none")  # log clamped at -100 by torch
    return {
        "mse_missing": (sq_err[mask].sum() / n_missing).item(),
        "bce_missing": (bce[mask].sum() / n_missing).item(),
        "accuracy_completed": accuracy(classifier, completed, y),
        "accuracy_original": accuracy(classifier, x, y),
        "accuracy_masked": accuracy(classifier, x.masked_fill(mask, 0.0), y),
    }
