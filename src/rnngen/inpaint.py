"""Inpainting: hide part of each image, complete it by conditional sampling, score it.

Completion is each model's ``complete`` method (see :class:`rnngen.models.GenerativeModel`):
latent models run the pseudo-Gibbs sampler of Rezende et al. 2014 (fill the missing pixels
with Bernoulli(0.5) noise, then repeatedly reconstruct and redraw only the missing pixels,
the observed ones clamped; a Markov chain whose stationary distribution is p(missing |
observed) when q(z|x) is exact); PixelRNN runs a particle filter in raster order in which
every observed pixel, before or after a hidden one, weighs the candidate completions. This
module validates the inputs and scores the result, the same way for every model.
The classifier's accuracy is taken on images of the kind it was trained on: with a binary
judge (the default) the completion's missing pixels are drawn, not left as probabilities.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from rnngen import data
from rnngen.classifier import DigitClassifier, accuracy, as_images, as_judged
from rnngen.models import GenerativeModel, holes
from rnngen.models.base import Completion

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
    top = (SIDE - CENTRE) // 2
    mask = torch.zeros(n, 1, SIDE, SIDE, dtype=torch.bool)
    mask[:, :, top : top + CENTRE, top : top + CENTRE] = True
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


#: holes of random size and place per image, as people draw them: a rectangle, or free-form
#: brush strokes (:mod:`rnngen.models.holes`); bench/repair_quality.py scores them beside MASKS
DRAWN_MASKS: dict[str, Callable[[int, torch.Generator | None], Tensor]] = {
    "rectangle": lambda n, generator=None: holes.rectangles(n, (SIDE, SIDE), generator),
    "strokes": lambda n, generator=None: holes.strokes(n, (SIDE, SIDE), generator),
}


def make_mask(kind: str, n: int, generator: torch.Generator | None = None) -> Tensor:
    """Boolean "missing" mask ``(n, 1, 28, 28)`` of the named kind (True = hidden), on the CPU:
    one of :data:`MASKS` or :data:`DRAWN_MASKS`."""
    kinds = MASKS | DRAWN_MASKS
    if kind not in kinds:
        raise ValueError(f"unknown inpainting mask {kind!r}; choose one of {', '.join(kinds)}")
    return kinds[kind](n, generator)


def load_mask(kind_or_file: str, n: int, seed: int) -> Tensor:
    """Boolean "missing" mask ``(n, 1, 28, 28)``: a kind of :data:`MASKS` (seeded), or an image
    file whose white pixels (>= 128) are hidden (read as every image is: grey, 28x28)."""
    if kind_or_file in MASKS:
        return make_mask(kind_or_file, n, torch.Generator().manual_seed(seed))
    mask = torch.from_numpy(data.read_image(kind_or_file)) >= 128  # (28, 28)
    if not mask.any():
        raise data.DataError(f"mask {kind_or_file} hides no pixel: white (>= 128) marks the pixels to complete")
    return mask.view(1, 1, SIDE, SIDE).expand(n, 1, SIDE, SIDE).clone()


@torch.no_grad()
def inpaint(
    model: GenerativeModel,
    x: Tensor,
    mask: Tensor,
    effort: int,
    generator: torch.Generator | None = None,
    y: Tensor | None = None,
) -> Completion:
    """Complete the pixels of ``x`` ``(B, 1, 28, 28)`` in [0, 1] where ``mask`` is True, with
    ``effort`` units of the model's sampler (rounds or particles) per image; a conditional
    model completes each image as one of its class ``y``.

    Returns the completion on the model's device: ``drawn`` (hidden pixels drawn, binary) and
    ``means`` (their probabilities p(x_i = 1 | ...)); observed pixels come back exactly as
    given in both. ``generator`` must live on the model's device.
    """
    if effort < 1:
        raise ValueError(f"inpainting effort must be >= 1, got {effort}")
    if mask.shape != x.shape or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be bool with the images' shape {tuple(x.shape)}, got {mask.dtype} {tuple(mask.shape)}"
        )
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError("inpainting needs images in [0, 1]")
    model.eval()
    x, mask = x.to(model.device), mask.to(model.device)
    done = model.complete(x, mask, effort, generator=generator, y=y)
    # whatever the model returns, observed pixels stay as given
    return Completion(torch.where(mask, done.drawn, x), torch.where(mask, done.means, x), done.hole_nll)


def inpainting_metrics(
    model: GenerativeModel,
    classifier: DigitClassifier,
    x: Tensor,
    y: Tensor,
    kind: str,
    effort: int,
    seed: int,
    *,
    batch_size: int = 250,
) -> dict[str, float]:
    """Scores of completing images ``x`` (labels ``y``) under mask ``kind``.

    ``hole_nll`` is the mean -log p(hidden | observed) in nats per image (exact or estimated:
    :meth:`~rnngen.models.GenerativeModel.hole_nll`; absent where the model has neither);
    ``mse_missing`` and ``bce_missing`` (nats) are means per missing pixel of the completion's
    probabilities; ``accuracy_*`` is the classifier's on the completed, the original and the
    masked images (missing pixels set to 0, the background), so completion can be judged
    against both ends, each in the classifier's kind: for a binary judge the completion's
    pixels drawn (the draw that goes with the probabilities) and ``x`` binarized if it is grey.
    """
    x = as_images(x)
    mask = make_mask(kind, len(x), torch.Generator().manual_seed(seed))

    gen = torch.Generator(device=model.device).manual_seed(seed)
    given = y if model.needs_labels else None  # such a model completes an image of its true class
    parts = [inpaint(model, x[i : i + batch_size], mask[i : i + batch_size], effort, gen,
                     None if given is None else given[i : i + batch_size])
             for i in range(0, len(x), batch_size)]
    completed = torch.cat([p.means.cpu() for p in parts])
    drawn = torch.cat([p.drawn.cpu() for p in parts])
    n_missing = mask.sum().clamp(min=1)
    sq_err = (completed - x).square()
    bce = F.binary_cross_entropy(completed, x, reduction="none")  # log clamped at -100 by torch
    x_judged = as_judged(classifier, x, seed)
    # one seed, one draw per pixel: a grey x's observed pixels binarize alike in all three
    completed_judged = as_judged(classifier, drawn, seed) if classifier.binary else completed
    # the hole's NLL: the completion's own where its sampler yields it (PixelRNN), else the model's estimate
    holes = [p.hole_nll if p.hole_nll is not None else
             model.hole_nll(x[i : i + batch_size].to(model.device), mask[i : i + batch_size].to(model.device), effort,
                            gen, None if given is None else given[i : i + batch_size])
             for p, i in zip(parts, range(0, len(x), batch_size), strict=True)]
    hole = {} if any(h is None for h in holes) else {"hole_nll": torch.cat(holes).double().mean().item()}
    return hole | {
        "mse_missing": (sq_err[mask].sum() / n_missing).item(),
        "bce_missing": (bce[mask].sum() / n_missing).item(),
        "accuracy_completed": accuracy(classifier, completed_judged, y),
        "accuracy_original": accuracy(classifier, x_judged, y),
        "accuracy_masked": accuracy(classifier, x_judged.masked_fill(mask, 0.0), y),
    }
