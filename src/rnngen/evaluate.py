"""Evaluation in the literature's units: negative log-likelihood bounds in nats per image
(ELBO and the importance-weighted bound of Burda et al. 2016) and bits per dimension; sample
quality (Fréchet classifier distance); inpainting scores; the pictures that go with them. The
same numbers for images a user brings (:func:`evaluate_images`) and for a champion re-scored on
a challenger's test set (:func:`rescore_likelihood`)."""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from rnngen.classifier import DigitClassifier, digest, fallback_classifier, load_classifier
from rnngen.config import under_minimum
from rnngen.data import DataError, Images, UserData, binarized_test_set, load_split, test_set_digest, to_unit
from rnngen.inpaint import MASKS, inpaint, inpainting_metrics, make_mask
from rnngen.models import GenerativeModel
from rnngen.models.latent import LatentModel
from rnngen.models.likelihood import likelihood_kind
from rnngen.pictures import canvas_gif, canvas_strip, inpainting_panel, save_grid
from rnngen.quality import sample_quality
from rnngen.tracking import TrackingError
from rnngen.walk import save as save_walk
from rnngen.walk import walk

if TYPE_CHECKING:
    from rnngen.registry import LoadedModel

#: latent models' walk picture: test images 0..3 to 4..7, in this many steps
WALK_PAIRS, WALK_STEPS = 4, 10


@dataclass(frozen=True)
class EvalConfig:
    seed: int = 0
    #: importance samples per test image for the IWAE bound
    k: int = 100
    #: test images per forward pass
    batch_size: int = 100
    #: images in the sample / reconstruction grids
    n_samples: int = 64
    #: evaluate on the first N test images only (0 = all)
    max_images: int = 0
    #: generated vs real test images for the Fréchet classifier distance (same N both sides;
    #: capped at the number of test images)
    n_quality: int = 1000
    #: test images completed under each inpainting mask
    inpaint_images: int = 200
    #: sampler work per completed image: Gibbs rounds (latent models), particles (PixelRNN)
    inpaint_effort: int = 32

    def problems(self) -> list[str]:
        # n_quality >= 2: a covariance needs two images; max_images 0 means all
        return under_minimum(self, k=1, batch_size=1, n_samples=1, max_images=0, n_quality=2, inpaint_images=1,
                             inpaint_effort=1)


def binarization_note(binarization: str, seed: int) -> str:
    """How the test images were binarized, for people (the identity holds the structured form)."""
    return {
        "dynamic": f"dynamic (test images binarized once with seed {seed})",
        "fixed": "fixed (one seeded Bernoulli sample, made at split time)",
        "none": "none (grey levels as Bernoulli targets: not a true likelihood)",
    }[binarization]


def nll_line(model_name: str, metrics: Mapping[str, float], k: int) -> str:
    """The test NLL for people: exact, or both bounds, or that there is none."""
    kind = likelihood_kind(metrics, "test_")
    if kind == "none":
        return f"none ({model_name} has no likelihood)"
    nll = (f"exact {metrics['test_nll_exact']:.2f}" if kind == "exact" else
           f"ELBO {metrics['test_nll_elbo']:.2f}  IWAE(k={k}) {metrics['test_nll_iwae']:.2f}")
    return f"{nll} nats ({metrics['test_bpd_iwae']:.4f} bits/dim)"


def test_set_identity(
    cfg: EvalConfig, binarization: str, n_test: int, data_sha256: str, judge: DigitClassifier,
    conditional: bool = False,
) -> dict[str, str]:
    """What makes two evaluations comparable, as flat strings (logged as ``test_set.*``
    params): the test images (their digest and count), how they were binarized (mode and
    seed), k, and the sample-quality and inpainting settings, with the classifier that judges
    (its digest: another judge's FCD and accuracies do not compare) and the kind of image it
    judges, and whether the likelihood is of p(x | y) (a conditional model's) or of p(x)."""
    return {"conditional": "true" if conditional else "false",
        "data_sha256": data_sha256, "n_test": str(n_test), "binarization": binarization, "seed": str(cfg.seed),
        "k": str(cfg.k), "n_quality": str(min(cfg.n_quality, n_test)), "inpaint_images": str(cfg.inpaint_images),
        "inpaint_effort": str(cfg.inpaint_effort), "judged_images": "binary" if judge.binary else "grey",
        "judge_sha256": digest(judge),
    }


def report(
    model: GenerativeModel,
    test: Images,
    classifier: DigitClassifier,
    cfg: EvalConfig,
    binarization: str,
    pictures: Path,
    progress: bool = True,
) -> dict[str, float]:
    """Every test metric and picture for one model: likelihood bounds (none for a model without
    a likelihood), sample quality, inpainting under each mask, on labelled uint8 test images;
    pictures go to ``pictures``.
    A conditional model draws samples of the test images' classes (``asked_accuracy``) and its
    sample grid one class a row; it is scored, repairs and draws the FCD's samples with the test
    labels where it :attr:`~rnngen.models.GenerativeModel.needs_labels` (p(x | y)), else without
    (p(x), comparable with an unconditional model's).
    """
    torch.manual_seed(cfg.seed)
    model.eval()
    x_test, y_test = test
    x = binarized_test_set(x_test, binarization, cfg.seed)
    y = y_test.long() if model.conditional else None
    metrics: dict[str, float] = {"n_test": len(x)}
    bounds = model.likelihood_metrics(x, cfg.k, cfg.batch_size, cfg.seed, progress,
                                      y=y if model.needs_labels else None)
    if bounds:  # else absent: no NLL key at all, never a 0 or a NaN that dashboards average
        metrics |= {f"test_{k}": v for k, v in bounds.items()} | {"k": cfg.k}

    # a binary judge compares binary samples with the test images as the likelihood saw them
    real = x if classifier.binary else to_unit(x_test)
    n_quality = min(cfg.n_quality, len(real))
    metrics |= {f"test_{k}": v for k, v in sample_quality(model, classifier, real, n_quality, cfg.seed,
                                                          labels=y if model.needs_labels else None).items()}
    if model.class_optional:  # its FCD above is of draws of p(x), as an unconditional model's; the class asked beside
        asked = sample_quality(model, classifier, real, n_quality, cfg.seed, labels=y)
        metrics |= {f"test_{k}": v for k, v in asked.items() if k.startswith(("asked_accuracy", "fcd_"))}

    draw_pictures(model, x, y, cfg, pictures)
    return metrics | repair(model, classifier, x, y_test, cfg, pictures, progress)


def draw_pictures(model: GenerativeModel, x: Tensor, y: Tensor | None, cfg: EvalConfig, pictures: Path) -> None:
    """Samples (a conditional model's one class a row), reconstructions, the canvas over time
    for a step-wise model and, for a latent model, a walk between test images."""
    generator = torch.Generator(device=model.device).manual_seed(cfg.seed)
    n_pictures, per_row = cfg.n_samples, max(1, int(math.sqrt(cfg.n_samples)))
    grid_labels = steps_labels = None
    if model.conditional:  # one row per class
        per_row = max(1, n_pictures // model.config.classes)
        grid_labels = torch.arange(model.config.classes).repeat_interleave(per_row)
        n_pictures = len(grid_labels)
        steps_labels = grid_labels[:: per_row][: min(n_pictures, 16)]
    with torch.no_grad():
        samples = model.sample(n_pictures, generator=generator, y=grid_labels)
        recon = model.reconstruct(x[: n_pictures // 2].to(model.device), generator=generator,
                                  y=None if y is None else y[: n_pictures // 2])
        steps = model.sample_steps(min(n_pictures, 16) if steps_labels is None else len(steps_labels),
                                   generator=generator, y=steps_labels)
    save_grid(samples, pictures / "samples.png", nrow=per_row)
    pairs = torch.stack([x[: n_pictures // 2], recon.cpu()], 1).flatten(0, 1)  # original, reconstruction, ...
    save_grid(pairs, pictures / "reconstructions.png", nrow=8)
    if steps is not None:  # DRAW: the canvas being drawn, step by step
        canvas_gif(steps.cpu(), pictures / "canvas.gif", nrow=4)
        canvas_strip(steps.cpu(), pictures / "canvas_strip.png")
    if isinstance(model, LatentModel) and len(x) >= 2 * WALK_PAIRS:  # test images 0-3 to 4-7 (holding 0-3's classes)
        frames = walk(model, x[:WALK_PAIRS], x[WALK_PAIRS : 2 * WALK_PAIRS], WALK_STEPS,
                      None if y is None else y[:WALK_PAIRS])
        save_walk(frames, pictures / "interpolation.png", pictures / "interpolation.gif")


def repair(model: GenerativeModel, classifier: DigitClassifier, x: Tensor, y_test: Tensor, cfg: EvalConfig,
           pictures: Path, progress: bool) -> dict[str, float]:
    """Inpainting scores under each mask (:data:`~rnngen.inpaint.MASKS`), and a panel of each."""
    y = y_test.long() if model.needs_labels else None
    metrics: dict[str, float] = {}
    n_inpaint, n_shown = min(cfg.inpaint_images, len(x)), min(16, len(x))
    for kind in tqdm(MASKS, desc="repair", leave=False, disable=None if progress else True):
        scores = inpainting_metrics(model, classifier, x[:n_inpaint], y_test[:n_inpaint], kind,
                                    cfg.inpaint_effort, cfg.seed)
        if "hole_nll" in scores:  # the name the literature's completions are compared by
            metrics[f"test_hole_nll_{kind}"] = scores.pop("hole_nll")
        metrics |= {f"inpaint_{kind}_{k}": v for k, v in scores.items()}
        mask = make_mask(kind, n_shown, torch.Generator().manual_seed(cfg.seed))
        completed = inpaint(model, x[:n_shown], mask, cfg.inpaint_effort,
                            torch.Generator(device=model.device).manual_seed(cfg.seed),
                            None if y is None else y[:n_shown]).means
        inpainting_panel(x[:n_shown], mask, completed.cpu(), pictures / f"inpaint_{kind}.png")
    return metrics


# --------------------------------------------------------------- other images, other models


def evaluate_images(
    images: UserData,
    cfg: EvalConfig,
    load_model: Callable[[], LoadedModel],
    *,
    classifier_file: Path | None,
    classifier_epochs: int,
    test_split: bool,
    pictures: Path | None = None,
) -> dict[str, Any]:
    """:func:`report` on a split's test images (``test_split``: the same numbers as the evaluate
    stage's reports/metrics.json at the same settings) or on a user's images, with what was scored.

    The judge is ``classifier_file``, else one trained on the labelled images given for
    ``classifier_epochs``. ``load_model`` is called once the images are known to be enough, and
    before a judge is trained: a bad model name fails early. Pictures are copied to ``pictures``.
    """
    n = min(len(images.x), cfg.max_images or len(images.x))
    if n < 2:
        raise DataError(f"{images.description}: need at least 2 images (a covariance for the FCD)")
    loaded = load_model()
    if loaded.model.needs_labels and images.y is None:
        raise DataError(f"{loaded.source} is conditional (it scores p(x | y)): evaluate it on labelled images "
                        "(IDX files with their labels, or one subfolder per class)")
    if classifier_file is not None:
        judge, judge_note = load_classifier(classifier_file), str(classifier_file)
    else:
        train_x = images.x_train if images.x_train is not None else images.x
        judge, judge_note = fallback_classifier(train_x, images.y_train, cfg.seed, classifier_epochs)
    x = images.x[:n]
    y = images.y[:n] if images.y is not None else torch.zeros(n, dtype=torch.long)
    # the test split is binarized as the model was trained; a user's grey images once, seeded
    binarization = loaded.binarization if test_split or loaded.binarization == "none" else "dynamic"
    with tempfile.TemporaryDirectory() as folder:
        metrics = report(loaded.model, Images(x, y), judge, cfg, binarization, Path(folder), progress=False)
        if pictures:
            shutil.copytree(folder, pictures, dirs_exist_ok=True)
    if images.y is None:  # no labels: accuracies against label 0 mean nothing
        metrics = {k: v for k, v in metrics.items() if "accuracy" not in k}
    return {
        "model": loaded.source,
        "data": images.description,
        "labelled": images.y is not None,
        "binarization": f"{binarization} (images binarized once with seed {cfg.seed})",
        "classifier": judge_note,
        **metrics,
    }


def rescore_likelihood(
    test_set: Mapping[str, str], split_dir: str | Path, load_model: Callable[[], GenerativeModel], batch_size: int = 100
) -> dict[str, float]:
    """The ``test_*`` NLL bounds of a model (a champion) on the test set an evaluation's identity
    names (:func:`test_set_identity`), computed as the evaluate stage computed them: that
    binarization, seed, k and image count, on the test images of ``split_dir``, which must be that
    test set (same ``data_sha256``). ``load_model`` is called once both are checked."""
    missing = [k for k in ("binarization", "seed", "k", "n_test", "data_sha256") if k not in test_set]
    if missing:
        raise TrackingError(f"cannot re-score the champion: the challenger's evaluation lacks test_set "
                            f"{', '.join(missing)}; run `dvc repro`")
    if test_set_digest(split_dir) != test_set["data_sha256"]:
        raise TrackingError(f"cannot re-score the champion: {split_dir} is not the challenger's test set "
                            "(data digest differs); run `dvc repro` first")
    x_test, y_test = load_split(split_dir, "test")
    model = load_model()
    k, n, seed = int(test_set["k"]), int(test_set["n_test"]), int(test_set["seed"])
    x = binarized_test_set(x_test[:n], test_set["binarization"], seed)
    bounds = model.likelihood_metrics(x, k, batch_size, seed, progress=False,
                                      y=y_test[:n].long() if model.needs_labels else None)
    return {f"test_{key}": v for key, v in bounds.items()}
