"""A model's test likelihood in the literature's units: nats per image and bits per dimension.

Latent models give two bounds from the same k importance samples per image: the ELBO (the mean
of the log-weights) and the tighter importance-weighted bound (log of their mean, Burda et al.
2016, eq. 8), so iwae <= elbo holds per image. Exact models give ``nll_exact``, and both bound
keys hold that same value (a tight bound), so every model with a likelihood has the metrics
promotion compares.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from rnngen.data import binarize, to_unit
from rnngen.distributed import all_sum, ranks

if TYPE_CHECKING:
    from rnngen.models.base import GenerativeModel

PIXELS = 28 * 28


def log_weights_chunked(
    model: GenerativeModel, x: Tensor, k: int, generator: torch.Generator, max_rows: int = 4096,
    y: Tensor | None = None,
) -> Tensor:
    """``(k, B)`` log-weights, drawing samples in chunks so ``k * B`` rows fit in memory."""
    per_chunk = max(1, max_rows // max(1, x.shape[0]))
    parts = []
    done = 0
    while done < k:
        chunk = min(per_chunk, k - done)
        parts.append(model.log_weights(x, chunk, generator=generator, y=y))
        done += chunk
    return torch.cat(parts, 0)


@torch.no_grad()
def nll_metrics(
    model: GenerativeModel, x: Tensor, k: int, batch_size: int, seed: int, exact: bool, progress: bool = True,
    y: Tensor | None = None,
) -> dict[str, float]:
    """NLL of binary images ``x`` ``(N, 1, 28, 28)`` (of p(x | y) with labels ``y``): ``nll_elbo``,
    ``nll_iwae``, their bits/dim, and with ``exact`` also ``nll_exact`` / ``bpd_exact``."""
    model.eval()
    device = model.device
    gen = torch.Generator(device=device).manual_seed(seed)
    elbo_sum = iw_sum = 0.0
    for start in tqdm(range(0, len(x), batch_size), desc="likelihood", leave=False,
                      disable=None if progress else True):
        xb = x[start : start + batch_size].to(device)
        yb = None if y is None else y[start : start + batch_size].to(device)
        if exact:
            ll = model.log_likelihood(xb, y=yb).double().sum().item()
            elbo_sum, iw_sum = elbo_sum + ll, iw_sum + ll
            continue
        logw = log_weights_chunked(model, xb, k, gen, y=yb).double()  # (k, B)
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
    if exact:
        out |= {"nll_exact": iw_nll, "bpd_exact": iw_nll / (PIXELS * math.log(2))}
    return out


def mean_nelbo(
    model: GenerativeModel, x: Tensor, binarization: str, batch_size: int, seed: int, y: Tensor | None = None,
) -> float:
    """Mean negative ELBO (nats/image) over uint8 images ``x`` (of p(x | y) with labels ``y``
    for a conditional model), with a fixed binarization seed. In a data-parallel job each rank
    scores its share of every batch and the sums are added."""
    gen = torch.Generator().manual_seed(seed)
    device = model.device
    r = ranks()
    total = torch.zeros((), dtype=torch.float64, device=device)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = binarize(to_unit(x[start : start + batch_size]), binarization, gen)  # all of it: same draws
            mine = torch.tensor_split(xb, r.world)[r.rank].to(device)
            labels = None if y is None else torch.tensor_split(y[start : start + batch_size], r.world)[r.rank]
            if len(mine):
                total += model(mine, labels).nelbo.sum().double()
    return float(all_sum(total, r)) / len(x)


def likelihood_kind(metrics: dict[str, float], prefix: str = "") -> str:
    """exact | bound | none: what a model's NLL metrics (as :func:`nll_metrics` names them,
    with ``prefix``) are, read from the metrics themselves."""
    return "exact" if f"{prefix}nll_exact" in metrics else "bound" if f"{prefix}nll_iwae" in metrics else "none"


def mixture_logits(logits: Tensor, x: Tensor) -> Tensor:
    """The per-pixel Bernoulli logits of the mixture p(x) = (1 / C) sum_y p(x | y) of ``C``
    autoregressive components, from each component's ``logits`` ``(C, B, ...)`` of
    p(x_i = 1 | x_<i, y) on binary ``x`` ``(B, ...)``, pixels in raster order (flattened): by
    Bayes' rule p(x_i | x_<i) = sum_y p(y | x_<i) p(x_i | x_<i, y), with p(y | x_<i)
    proportional to p(x_<i | y), the product of the pixels before i. The mixture is then one
    autoregressive model: the sum of its pixels' log p is log p(x) exactly."""
    flat = logits.float().flatten(2)  # (C, B, D)
    value = x.float().flatten(1).expand_as(flat)
    log_p = -F.binary_cross_entropy_with_logits(flat, value, reduction="none")
    before = torch.cumsum(log_p.double(), 2) - log_p.double()  # log p(x_<i | y)
    posterior = torch.log_softmax(before, 0).float()  # log p(y | x_<i); the uniform p(y) cancels
    one = torch.logsumexp(posterior + F.logsigmoid(flat), 0)
    zero = torch.logsumexp(posterior + F.logsigmoid(-flat), 0)
    return (one - zero).view(x.shape)


def observed_class_posterior(logits: Tensor, x: Tensor, hidden: Tensor) -> Tensor:
    """``(B, C)`` log p(y | observed) under a uniform p(y), from each class's ``logits``
    ``(C, B, ...)`` on binary ``x``: exact where every observed pixel (``hidden`` False)
    precedes every hidden one in raster order, as log p(observed | y) is then the sum of the
    observed pixels' log p(x_i | x_<i, y)."""
    log_p = -F.binary_cross_entropy_with_logits(logits.float(), x.float().expand_as(logits), reduction="none")
    seen = (log_p * ~hidden).flatten(2).sum(2).double()  # (C, B)
    return torch.log_softmax(seen, 0).t()
