"""Evaluation in the literature's units: negative log-likelihood bounds in nats per image
(ELBO and the importance-weighted bound of Burda et al. 2016) and bits per dimension; sample
quality (Fréchet classifier distance); inpainting scores; the pictures that go with them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from rnngen.classifier import DigitClassifier
from rnngen.config import below
from rnngen.data import PIXELS, binarized_test_set, to_unit
from rnngen.inpaint import MASKS, inpaint, inpainting_metrics, make_mask
from rnngen.models import GenerativeModel
from rnngen.pictures import canvas_gif, canvas_strip, inpainting_panel, save_grid
from rnngen.quality import sample_quality


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
    #: pseudo-Gibbs iterations per completion
    inpaint_iterations: int = 20

    def problems(self) -> list[str]:
        # n_quality >= 2: a covariance needs two images; max_images 0 means all
        return below(self, k=1, batch_size=1, n_samples=1, max_images=0, n_quality=2, inpaint_images=1,
                     inpaint_iterations=1)


def test_set_identity(
    cfg: EvalConfig, binarization: str, n_test: int, data_sha256: str, judge: DigitClassifier
) -> dict[str, str]:
    """What makes two evaluations comparable, as flat strings (logged as ``test_set.*``
    params): the test images (their digest and count), how they were binarized (mode and
    seed), k, and the sample-quality and inpainting settings, with the kind of image the
    classifier judges (an FCD of binary images does not compare with one of grey levels)."""
    return {
        "data_sha256": data_sha256, "n_test": str(n_test), "binarization": binarization, "seed": str(cfg.seed),
        "k": str(cfg.k), "n_quality": str(min(cfg.n_quality, n_test)), "inpaint_images": str(cfg.inpaint_images),
        "inpaint_iterations": str(cfg.inpaint_iterations), "judged_images": "binary" if judge.binary else "grey",
    }


def log_weights_chunked(
    model: GenerativeModel, x: Tensor, k: int, generator: torch.Generator, max_rows: int = 4096
) -> Tensor:
    """``(k, B)`` log-weights, drawing samples in chunks so ``k * B`` rows fit in memory."""
    per_chunk = max(1, max_rows // max(1, x.shape[0]))
    parts = []
    done = 0
    while done < k:
        m = min(per_chunk, k - done)
        parts.append(model.log_weights(x, m, generator=generator))
        done += m
    return torch.cat(parts, 0)


@torch.no_grad()
def likelihood_bounds(
    model: GenerativeModel, x: Tensor, k: int, batch_size: int, seed: int, progress: bool = True
) -> dict[str, float]:
    """NLL on float images ``x`` ``(N, 1, 28, 28)``, in nats/image and bits/dim.

    Latent models: both bounds come from the same k samples per image, the ELBO as the mean of
    the log-weights, the IWAE bound as log of their mean, so iwae <= elbo holds per image.
    Exact models: ``nll_exact``, and both bound keys hold that same exact value (a bound that
    is tight), so every model has the metrics promotion compares.
    """
    model.eval()
    device = model.device
    gen = torch.Generator(device=device).manual_seed(seed)
    elbo_sum = iw_sum = 0.0
    for start in tqdm(range(0, len(x), batch_size), desc="likelihood", leave=False,
                      disable=None if progress else True):
        xb = x[start : start + batch_size].to(device)
        if model.exact_likelihood:
            ll = model.log_likelihood(xb).double().sum().item()
            elbo_sum, iw_sum = elbo_sum + ll, iw_sum + ll
            continue
        logw = log_weights_chunked(model, xb, k, gen).double()  # (k, B)
        elbo_sum += logw.mean(0).sum().item()
        iw_sum += (torch.logsumexp(logw, 0) - math.log(k)).sum().item()
    n = len(x)
    elbo_nll, iw_nll = -elbo_sum / n, -iw_sum / n
    out = {
        "nll_elbo": elbo_nll,
        "nll_iwae": iw_nll,
        "bpd_elbo": elbo_nll / (PIXELS * math.log(2)),
        "bpd_iwae": iw_nll / (PIXELS * math.log(2)),
    }
    if model.exact_likelihood:
        out |= {"nll_exact": iw_nll, "bpd_exact": iw_nll / (PIXELS * math.log(2))}
    return out


def report(
    model: GenerativeModel,
    x_test: Tensor,
    y_test: Tensor,
    classifier: DigitClassifier,
    cfg: EvalConfig,
    binarization: str,
    pictures: Path,
    progress: bool = True,
) -> dict[str, float]:
    """Every test metric and picture for one model: likelihood bounds, sample quality,
    inpainting under each mask. ``x_test`` are uint8 test images; pictures go to ``pictures``.
    """
    torch.manual_seed(cfg.seed)
    x = binarized_test_set(x_test, binarization, cfg.seed)
    metrics: dict[str, float] = {
        f"test_{k}": v for k, v in likelihood_bounds(model, x, cfg.k, cfg.batch_size, cfg.seed, progress).items()
    }
    metrics |= {"k": cfg.k, "n_test": len(x)}

    # a binary judge compares binary samples with the test images as the likelihood saw them
    real = x if classifier.binary else to_unit(x_test)
    n_quality = min(cfg.n_quality, len(real))
    metrics |= {f"test_{k}": v for k, v in sample_quality(model, classifier, real, n_quality, cfg.seed).items()}

    gen = torch.Generator(device=model.device).manual_seed(cfg.seed)
    n = cfg.n_samples
    with torch.no_grad():
        samples = model.sample(n, generator=gen)
        recon = model.reconstruct(x[: n // 2].to(model.device), generator=gen)
        steps = model.sample_steps(min(n, 16), generator=gen)
    save_grid(samples, pictures / "samples.png", nrow=max(1, int(math.sqrt(n))))
    save_grid(torch.stack([x[: n // 2], recon.cpu()], 1).flatten(0, 1), pictures / "reconstructions.png", nrow=8)
    if steps is not None:  # DRAW: the canvas being drawn, step by step
        canvas_gif(steps.cpu(), pictures / "canvas.gif", nrow=4)
        canvas_strip(steps.cpu(), pictures / "canvas_strip.png")

    m, shown = min(cfg.inpaint_images, len(x)), min(16, len(x))
    for kind in MASKS:
        scores = inpainting_metrics(model, classifier, x[:m], y_test[:m], kind, cfg.inpaint_iterations, cfg.seed)
        metrics |= {f"inpaint_{kind}_{k}": v for k, v in scores.items()}
        mask = make_mask(kind, shown, torch.Generator().manual_seed(cfg.seed))
        with torch.no_grad():
            done = inpaint(model, x[:shown].to(model.device), mask.to(model.device), cfg.inpaint_iterations,
                           torch.Generator(device=model.device).manual_seed(cfg.seed))
        inpainting_panel(x[:shown], mask, done.cpu(), pictures / f"inpaint_{kind}.png")
    return metrics
