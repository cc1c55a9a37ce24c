"""Evaluation in the literature's units: negative log-likelihood bounds in nats per image
(ELBO and the importance-weighted bound of Burda et al. 2016) and bits per dimension."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from rnngen.models import GenerativeModel
from rnngen.train import prepare_batch

PIXELS = 28 * 28


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

    def problems(self) -> list[str]:
        out = []
        if self.k < 1:
            out.append(f"k: importance samples must be >= 1, got {self.k}")
        if self.batch_size < 1:
            out.append(f"batch_size: must be >= 1, got {self.batch_size}")
        if self.n_samples < 1:
            out.append(f"n_samples: must be >= 1, got {self.n_samples}")
        if self.max_images < 0:
            out.append(f"max_images: must be >= 0 (0 = all), got {self.max_images}")
        return out


def binarized_test_set(x: Tensor, binarization: str, seed: int) -> Tensor:
    """The test images as the likelihood sees them: dynamic -> one seeded Bernoulli sample."""
    return prepare_batch(x, binarization, None, torch.Generator().manual_seed(seed))


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
    """NLL bounds on float images ``x`` ``(N, 1, 28, 28)``, in nats/image and bits/dim.

    Both bounds come from the same k samples per image: the ELBO as the mean of the
    log-weights, the IWAE bound as log of their mean, so iwae <= elbo holds per image.
    """
    model.eval()
    device = model.device
    gen = torch.Generator(device=device).manual_seed(seed)
    elbo_sum = iw_sum = 0.0
    for start in tqdm(range(0, len(x), batch_size), desc="likelihood", leave=False,
                      disable=None if progress else True):
        xb = x[start : start + batch_size].to(device)
        logw = log_weights_chunked(model, xb, k, gen).double()  # (k, B)
        elbo_sum += logw.mean(0).sum().item()
        iw_sum += (torch.logsumexp(logw, 0) - math.log(k)).sum().item()
    n = len(x)
    elbo_nll, iw_nll = -elbo_sum / n, -iw_sum / n
    return {
        "nll_elbo": elbo_nll,
        "nll_iwae": iw_nll,
        "bpd_elbo": elbo_nll / (PIXELS * math.log(2)),
        "bpd_iwae": iw_nll / (PIXELS * math.log(2)),
    }


def save_grid(images: Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Save ``(N, 1, 28, 28)`` images in [0, 1] as one PNG grid (torchvision's layout)."""
    from torchvision.utils import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.float().clamp(0, 1).cpu(), path, nrow=nrow, padding=2, pad_value=0.5)
    return path
