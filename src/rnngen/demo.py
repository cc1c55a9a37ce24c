"""What ``rnngen demo``'s page does, without the page: read what a person uploads or draws,
and draw, repair, judge and walk through the same functions the CLI and the served model call
(:func:`rnngen.service.draw`, :func:`~rnngen.service.repair`, :func:`~rnngen.service.score`,
:func:`rnngen.walk.walk`). Gradio lives in :mod:`rnngen.demo_page`; everything here is plain
Python on tensors and files, so the tests call it directly and compare it with the CLI.

Images follow the one policy of :func:`rnngen.data.read_image` (grey, 28x28, bilinear), with one
addition for people's images: a digit written dark on a light background (a scan, a photo of
paper) is inverted, since the model's digits are light on dark; the page says when it did so.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rnngen import data, inpaint, pictures, service, walk
from rnngen.data import SIDE, DataError
from rnngen.errors import UserError
from rnngen.models import GenerativeModel
from rnngen.models.base import NoLikelihoodError

#: test digits scored at start-up for the Judge tab's percentile (seeded subsample)
REFERENCE_IMAGES = 500
#: the headline metrics the page shows, in this order, when the model's run has them
HEADLINE = ("test_nll_exact", "test_nll_iwae", "test_nll_elbo", "test_bpd_exact", "test_bpd_iwae", "test_fcd")
#: repair candidates one request may ask for
MAX_CANDIDATES = 8
#: the sketch pads' and the damage editor's canvas: 10 screen pixels per image pixel
CANVAS = 280


class NoImageError(UserError, ValueError):
    """A tab asked to work on an image before one was uploaded or drawn."""


@dataclass(frozen=True)
class Reference:
    """The test digits' NLLs (sorted, nats) behind the Judge tab's percentile, or why there are none."""

    nll: np.ndarray | None
    note: str


@dataclass
class Served:
    """The model the page serves, what it is, and where a judged image falls."""

    model: GenerativeModel
    source: str
    metrics: dict[str, float]
    reference: Reference
    #: where the page's PNGs and GIFs are written (Gradio serves them from here)
    out: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rnngen-demo-")))

    def headline(self) -> str:
        """One line naming the model version and its test metrics."""
        shown = [f"{k} {self.metrics[k]:.4g}" for k in HEADLINE if k in self.metrics]
        kind = "conditional " if self.model.conditional else ""
        metrics = ", ".join(shown) if shown else "no registered test metrics (a checkpoint file)"
        return f"Serving **{self.source}**: a {kind}{self.model.name} model; {metrics}."


# --------------------------------------------------------------------------- loading


def registered_metrics(spec: str, default_name: str) -> dict[str, float]:
    """The test metrics of the registered version ``spec`` names (what ``rnngen info`` shows);
    empty for a checkpoint path."""
    from rnngen import registry

    parsed = registry.parse_model_uri(spec, default_name)
    if parsed is None:
        return {}
    return dict(registry.model_info(*parsed)["metrics"])


def reference_nlls(model: GenerativeModel, split: Path, n: int = REFERENCE_IMAGES, seed: int = 0,
                   batch_size: int = 100) -> Reference:
    """The NLLs of ``n`` test digits of ``split`` (a seeded subsample, each with its own label
    for a model that needs one), binarized at 0.5 as ``rnngen score`` binarizes an image."""
    if not model.has_likelihood:
        return Reference(None, f"a {model.name} model has no likelihood: nothing to judge with")
    try:
        x, y = data.load_split(split, "test")
    except DataError:
        return Reference(None, f"no test split in {split} (run `make repro`): the NLL is shown without a percentile")
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[: min(n, len(x))]
    grey, labels = data.to_unit(x[pick]), (y[pick] if model.needs_labels else None)
    parts = [service.score(model, data.binarize(grey[i : i + batch_size], "fixed"),
                           None if labels is None else labels[i : i + batch_size])
             for i in range(0, len(grey), batch_size)]
    return Reference(np.sort(np.concatenate(parts)), f"{len(pick)} test digits of {split} (seed {seed})")


# ---------------------------------------------------------------------------- images


def _light_on_dark(grey: np.ndarray) -> tuple[np.ndarray, bool]:
    """``grey`` (uint8 28x28), inverted when its border is mostly light: the model's digits
    are light strokes on a dark background, a scan's are the reverse."""
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if np.median(border) > 127:
        return 255 - grey, True
    return grey, False


def read_upload(path: str | Path | None) -> tuple[Tensor, str]:
    """An uploaded file as one image ``(1, 1, 28, 28)`` in [0, 1] (:func:`rnngen.data.read_image`'s
    policy, then light on dark) and a note on what was done to it."""
    if path is None:
        raise NoImageError("upload an image first (PNG or JPEG; any size or colour)")
    try:
        grey = data.read_image(path)
    except DataError:
        raise DataError(f"{Path(path).name} is not an image rnngen can read: upload a PNG or JPEG of a "
                        "digit") from None
    grey, inverted = _light_on_dark(grey)
    note = "inverted to light on dark, as the model's digits are" if inverted else ""
    return data.to_unit(torch.from_numpy(grey.copy())[None]), note


def _layers_alpha(value: dict[str, Any] | None) -> np.ndarray | None:
    """The strokes painted on a Gradio image editor: the largest alpha over its layers,
    ``(H, W)`` uint8, or None when nothing was painted."""
    layers = [np.asarray(layer) for layer in (value or {}).get("layers") or [] if layer is not None]
    alpha = [layer[..., 3] for layer in layers if layer.ndim == 3 and layer.shape[-1] == 4]
    if not alpha or not max(a.max() for a in alpha):
        return None
    return np.max(np.stack(alpha), 0).astype(np.uint8)


def read_sketch(value: dict[str, Any] | None) -> Tensor:
    """A digit drawn on a sketch pad as one image ``(1, 1, 28, 28)`` in [0, 1]: the strokes
    (whatever their colour) are the ink, shrunk to 28x28 as every image is (bilinear)."""
    from PIL import Image

    ink = _layers_alpha(value)
    if ink is None:
        raise NoImageError("draw a digit on the sketch pad first, or upload one")
    small = np.asarray(Image.fromarray(ink, mode="L").resize((SIDE, SIDE), Image.Resampling.BILINEAR))
    return data.to_unit(torch.from_numpy(small.copy())[None])


def editor_background(x: Tensor) -> np.ndarray:
    """``x`` ``(1, 1, 28, 28)`` as the damage editor's RGB background, each pixel a 10x10 block."""
    grey = (x[0, 0] * 255).round().to(torch.uint8).numpy()
    big = grey.repeat(CANVAS // SIDE, 0).repeat(CANVAS // SIDE, 1)
    return np.stack([big] * 3, -1)


def painted_mask(value: dict[str, Any] | None) -> Tensor | None:
    """The pixels painted over on the damage editor, ``(1, 1, 28, 28)`` bool (True = hidden):
    a pixel is hidden when any paint touches its block; None when nothing was painted."""
    alpha = _layers_alpha(value)
    if alpha is None:
        return None
    from PIL import Image

    if alpha.shape != (CANVAS, CANVAS):  # a canvas of another size: scale to the image's blocks
        alpha = np.asarray(Image.fromarray(alpha, mode="L").resize((CANVAS, CANVAS), Image.Resampling.NEAREST))
    block = CANVAS // SIDE
    hidden = alpha.reshape(SIDE, block, SIDE, block).max(axis=(1, 3)) > 0
    return torch.from_numpy(hidden).view(1, 1, SIDE, SIDE)


def named_mask(kind: str, seed: int) -> Tensor:
    """A kind of :data:`rnngen.inpaint.MASKS`, seeded as ``rnngen inpaint --mask KIND --seed`` seeds it."""
    return inpaint.load_mask(kind, 1, seed)


def label_of(choice: str | int | None) -> int | None:
    """The page's class choice ("none" or a class number) as the model's labels read it."""
    if choice is None or choice == "" or choice == "none":
        return None
    try:
        return int(choice)
    except ValueError:
        raise UserError(f"class {choice!r}: choose a class number or none") from None


def guidance_of(text: str | None) -> float | None:
    """The page's guidance field: blank for the model's own, else a number >= 0."""
    if text is None or not str(text).strip():
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0 or math.isinf(value):
        raise UserError(f"guidance {text!r}: give a number >= 0 (1 = exact draws of p(x | y)), or leave it blank")
    return value


# ------------------------------------------------------------------- the four uses


def draw_digits(served: Served, n: int, seed: int, temperature: float, label: int | None,
                guidance: float | None) -> Tensor:
    """``rnngen sample --n N --seed S --temperature T [--label L] [--guidance G]``'s images."""
    if not 1 <= n <= service.MAX_SAMPLES:
        raise UserError(f"draw 1 to {service.MAX_SAMPLES} digits at a time, not {n}")
    if not temperature > 0:
        raise UserError(f"temperature must be > 0, got {temperature}")
    return service.draw(served.model, int(n), int(seed), float(temperature), label, guidance)


def drawing_steps(served: Served, n: int, seed: int, label: int | None, guidance: float | None) -> Tensor | None:
    """The same draw at temperature 1 seen step by step ``(T, n, 1, 28, 28)``: PixelRNN's rows,
    DRAW's canvases; None for a model that draws every pixel at once."""
    model = served.model if guidance is None else served.model.with_sampling(guidance=guidance)
    generator = torch.Generator(device=model.device).manual_seed(int(seed))
    with torch.no_grad():
        steps = model.eval().sample_steps(int(n), generator=generator, y=model.labels(label, int(n)))
    return None if steps is None else steps.cpu()


def repair_digit(served: Served, x: Tensor, mask: Tensor, effort: int, seed: int, label: int | None,
                 candidates: int = 1) -> Tensor:
    """``candidates`` completions of one image ``x`` under ``mask`` ``(k, 1, 28, 28)``, drawn in one
    batch; with one candidate, ``rnngen inpaint --effort E --seed S``'s completion."""
    if not mask.any():
        raise UserError("nothing to repair: paint over the damaged part, or pick a named hole")
    if not 1 <= candidates <= MAX_CANDIDATES:
        raise UserError(f"ask for 1 to {MAX_CANDIDATES} candidates, not {candidates}")
    k = int(candidates)
    return service.repair(served.model, x.expand(k, -1, -1, -1), mask.expand(k, -1, -1, -1), int(effort),
                          int(seed), label)


@dataclass(frozen=True)
class Judgement:
    nll: float
    bits_per_dim: float
    #: share of the reference test digits that are more likely (lower NLL), in %; None without a split
    percentile: float | None
    reference: Reference

    def sentence(self) -> str:
        text = f"**NLL {self.nll:.2f} nats** ({self.bits_per_dim:.4f} bits/dim)."
        if self.percentile is None:
            return f"{text} No percentile: {self.reference.note}."
        p, n = self.percentile, len(self.reference.nll)
        if p >= 100:
            verdict = f"unlike anything seen: less likely than all {n} test digits"
        elif p > 95:
            verdict = f"unusual: less likely than {p:.1f} % of the test digits"
        elif p < 5:
            verdict = f"a very typical digit: more likely than {100 - p:.1f} % of the test digits"
        else:
            verdict = f"typical: {p:.0f} % of the test digits are likelier (50 % = the median digit)"
        return f"{text} Percentile **{p:.1f}**: {verdict}. (Compared with {self.reference.note}; lower NLL = likelier.)"


def judge(served: Served, x: Tensor, label: int | None) -> Judgement:
    """``rnngen score``'s NLL of one image (binarized at 0.5) and where it falls among the test digits'."""
    if not served.model.has_likelihood:
        raise NoLikelihoodError(f"a {served.model.name} model has no likelihood: it cannot judge an image; "
                                "serve a PixelRNN, DRAW or VAE model to judge")
    nll = float(service.score(served.model, data.binarize(x, "fixed"), label)[0])
    ref = served.reference
    percentile = None if ref.nll is None else float(100 * np.mean(ref.nll < nll))
    return Judgement(nll, nll / (x[0].numel() * math.log(2)), percentile, ref)


def walk_between(served: Served, a: Tensor, b: Tensor, steps: int, label: int | None) -> Tensor:
    """``rnngen interpolate --steps N``'s frames ``(steps, 1, 1, 28, 28)`` from ``a`` to ``b``."""
    walk.check_latent(served.model)
    if served.model.conditional and label is None:
        raise UserError(f"this {served.model.name} model is conditional: choose the class to hold along the walk")
    if steps < 2:
        raise UserError("a walk needs at least 2 steps: the two ends")
    return walk.walk(served.model, data.binarize(a, "fixed"), data.binarize(b, "fixed"), int(steps), label)


# ---------------------------------------------------------------------------- pictures


def _file(served: Served, stem: str, suffix: str) -> Path:
    return Path(tempfile.mkstemp(prefix=f"{stem}-", suffix=suffix, dir=served.out)[1])


def grid_png(served: Served, images: Tensor) -> Path:
    """The samples as ``rnngen sample`` saves them: one grid, ceil(sqrt(n)) a row."""
    return pictures.save_grid(images, _file(served, "samples", ".png"), nrow=math.ceil(math.sqrt(len(images))))


def steps_gif(served: Served, frames: Tensor) -> Path:
    return pictures.canvas_gif(frames, _file(served, "steps", ".gif"), nrow=math.ceil(math.sqrt(frames.shape[1])))


def repair_png(served: Served, x: Tensor, mask: Tensor, completed: Tensor) -> Path:
    """One row: the input, the input with its hole grey, then each candidate (tile i starts at
    pixel 2 + 30 i: torchvision's 2-pixel padding)."""
    damaged = x.masked_fill(mask, pictures.MISSING_GREY)
    row = torch.cat([x, damaged, completed])
    return pictures.save_grid(row, _file(served, "repair", ".png"), nrow=len(row))


def walk_files(served: Served, frames: Tensor) -> tuple[Path, Path]:
    strip, gif = _file(served, "walk", ".png"), _file(served, "walk", ".gif")
    walk.save(frames, strip, gif)
    return strip, gif


def load_served(spec: str, default_name: str, split: Path, n_reference: int = REFERENCE_IMAGES) -> Served:
    """The model ``spec`` names (as every command loads it), its test metrics, and the
    reference NLLs of ``n_reference`` test digits of ``split``, scored once here."""
    # every picture the page shows goes through torchvision, which rnngen.pictures imports lazily:
    # imported now (seconds), not inside the first visitor's request
    import torchvision.utils  # noqa: F401

    from rnngen import registry

    loaded = registry.load(spec, default_name)
    model = loaded.model.eval()
    return Served(model, loaded.source, registered_metrics(spec, default_name),
                  reference_nlls(model, split, n_reference))
