"""Latent-variable models: the operations on z that walks and repair ask for by type, the
repair samplers that need only those (Rezende et al. 2014; Mattei and Frellsen 2018), and the
VAE with one Gaussian latent vector that the row-LSTM VAE and the MLP VAE share."""

from __future__ import annotations

from abc import abstractmethod
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from rnngen.models.base import (
    Completion,
    GenerativeModel,
    LossTerms,
    bernoulli_nll,
    gaussian_kl,
    log_normal,
    randn,
)


class LatentPass(NamedTuple):
    """One pass of a latent model over images x: z ~ q(z | x) (or a given z), the decoder's
    Bernoulli logits of p(x | z) and log q(z | x) per image."""

    z: Tensor
    logits: Tensor
    log_q: Tensor


class LatentModel(GenerativeModel):
    """A model of p(x) = E_p(z) p(x | z): its latents can be read off images and decoded, so
    walks between images and the repair samplers below work on it."""

    def complete(
        self, x: Tensor, mask: Tensor, effort: int, generator: torch.Generator | None = None, y: Tensor | None = None,
    ) -> Completion:
        """``effort // 2`` rounds of :meth:`pseudo_gibbs` bring the missing pixels
        near the data, then the rest of :meth:`metropolis_within_gibbs`, whose chain targets
        p(missing | observed) exactly. Measured on trained models (docs/results.md, "Repair"),
        this beats either sampler alone at equal rounds; alone, Metropolis-within-Gibbs started
        from noise rarely accepts and mixes slowly."""
        warm = self.pseudo_gibbs(x, mask, max(1, effort // 2), generator, y=y)
        if effort < 2:
            return warm
        return self.metropolis_within_gibbs(x, mask, effort - effort // 2, generator, start=warm.drawn, y=y)

    def pseudo_gibbs(
        self, x: Tensor, mask: Tensor, rounds: int, generator: torch.Generator | None = None, y: Tensor | None = None,
    ) -> Completion:
        """The pseudo-Gibbs sampler of Rezende et al. 2014 (sec. 5.2): start the missing pixels
        at Bernoulli(0.5) noise, then ``rounds`` times reconstruct (z ~ q(z|x), then p(x|z)) and
        redraw only the missing pixels. Its stationary distribution is p(missing | observed)
        only when q(z|x) is the exact posterior (Mattei and Frellsen 2018, sec. 3.1)."""
        noise = torch.bernoulli(torch.full_like(x, 0.5), generator=generator)
        current = torch.where(mask, noise, x)
        for _ in range(rounds):
            means = torch.where(mask, self.reconstruct(current, generator=generator, y=y), x)  # (B, 1, 28, 28)
            current = torch.where(mask, torch.bernoulli(means, generator=generator), x)  # clamp the observed pixels
        return Completion(drawn=current, means=means)

    def hole_nll(self, x: Tensor, hidden: Tensor, effort: int = 1, generator: torch.Generator | None = None,
                 y: Tensor | None = None) -> Tensor | None:
        """An estimate of -log p(hidden | observed) = log p(observed) - log p(x): each term
        importance-sampled from the same ``effort`` draws z ~ q(z | x) (the estimator of Burda et
        al. 2016, eq. 8, once with every pixel's p(x_i | z), once with the observed pixels' only:
        p(x | z) factorises over pixels, so the hidden ones marginalise out). Each log is low on
        average; their difference is neither bound. None for a model without a likelihood."""
        if not self.has_likelihood:
            return None
        k = max(effort, 1)
        yk = None if y is None else torch.as_tensor(y).reshape(-1).repeat(k)  # row i B + b: image b
        xk = x.repeat(k, 1, 1, 1)
        z, logits, log_q = self.latent_pass(xk, generator=generator, y=yk)
        log_px_z = -F.binary_cross_entropy_with_logits(logits, xk, reduction="none").flatten(1)
        rest = (log_normal(z.flatten(1)) - log_q).double()  # log p(z) - log q(z | x)
        every = (log_px_z.sum(1) + rest).view(k, -1)
        observed = ((log_px_z * ~hidden.flatten(1).repeat(k, 1)).sum(1) + rest).view(k, -1)
        return (torch.logsumexp(observed, 0) - torch.logsumexp(every, 0)).to(x.dtype)  # the log k terms cancel

    def latent_pass(self, x: Tensor, z: Tensor | None = None, generator: torch.Generator | None = None,
                    y: Tensor | None = None) -> LatentPass:
        """z ~ q(z | x) (or the ``z`` given), the decoder's logits of p(x | z) and log q(z | x):
        what :meth:`metropolis_within_gibbs` needs, and only a model with an encoder has."""
        raise NotImplementedError(f"{self.name} has no encoder q(z | x)")

    @abstractmethod
    def latent_mean(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The mean of q(z | x) per image, ``(B, ...)`` (DRAW: its T latents along
        the path of posterior means); where a latent walk starts and ends."""

    @abstractmethod
    def decode_latent(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """The Bernoulli means of p(x | z), ``(B, 1, 28, 28)``, for latents shaped
        as :meth:`latent_mean` gives them."""

    def metropolis_within_gibbs(
        self, x: Tensor, mask: Tensor, rounds: int, generator: torch.Generator | None = None,
        start: Tensor | None = None, y: Tensor | None = None,
    ) -> Completion:
        """Metropolis-within-Gibbs (Mattei and Frellsen 2018, sec. 3.2, Algorithm 1): a chain on
        (z, missing) whose stationary distribution is p(z, missing | observed) even when
        q(z | x) is poor, from the missing pixels of ``start`` (default Bernoulli(0.5) noise).
        Each of ``rounds`` proposes z' ~ q(z | x) at the current
        completion x, accepts it with probability min(1, p(x | z') p(z') q(z | x) /
        (p(x | z) p(z) q(z' | x))), then redraws the missing pixels from p(x | z)."""
        if start is None:
            start = torch.bernoulli(torch.full_like(x, 0.5), generator=generator)
        current = torch.where(mask, start, x)
        z, logits = self.latent_pass(current, generator=generator, y=y)[:2]
        for _ in range(rounds):
            new = self.latent_pass(current, generator=generator, y=y)
            old_log_q = self.latent_pass(current, z=z, y=y).log_q  # q(z | x) at the current completion
            log_ratio = (bernoulli_nll(logits, current) - bernoulli_nll(new.logits, current)
                         + log_normal(new.z.flatten(1)) - log_normal(z.flatten(1)) + old_log_q - new.log_q)
            u = torch.rand(log_ratio.shape, generator=generator, device=x.device, dtype=log_ratio.dtype)
            accept = u.log() < log_ratio  # (B,)
            z = torch.where(accept.view(-1, *[1] * (z.dim() - 1)), new.z, z)
            logits = torch.where(accept.view(-1, 1, 1, 1), new.logits, logits)
            means = torch.where(mask, torch.sigmoid(logits), x)
            current = torch.where(mask, torch.bernoulli(means, generator=generator), x)
        return Completion(drawn=current, means=means)


class GaussianLatentVAE(LatentModel):
    """A VAE with one Gaussian latent vector: subclasses give ``encode`` and ``decode``. A
    conditional one is the conditional VAE of Sohn et al. 2015 (sec. 4): the label goes to the
    encoder, q(z | x, y), and to the decoder, p(x | z, y), under the prior N(0, I)."""

    z_dim: int

    @abstractmethod
    def encode(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """q(z | x) (q(z | x, y)) as ``(mu, logvar)``, each ``(B, z_dim)``."""

    @abstractmethod
    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Bernoulli logits of p(x | z) (p(x | z, y)), ``(B, 1, 28, 28)``."""

    def with_label(self, v: Tensor, y: Tensor | None) -> Tensor:
        """``v`` ``(B, d)`` with the labels :meth:`labels` accepts beside it, one-hot: ``(B, d +
        classes)``; ``v`` itself for an unconditional model."""
        labels = self.labels(y, len(v))
        return v if labels is None else torch.cat([v, F.one_hot(labels, self.config.classes).to(v.dtype)], -1)

    def forward(self, x: Tensor, y: Tensor | None = None) -> LossTerms:
        mu, logvar = self.encode(x, y)
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)  # reparameterisation
        return LossTerms(recon=bernoulli_nll(self.decode(z, y), x), kl=gaussian_kl(mu, logvar))

    def log_weights(self, x: Tensor, k: int, generator: torch.Generator | None = None,
                    y: Tensor | None = None) -> Tensor:
        mu, logvar = self.encode(x, y)  # (B, z)
        eps = randn((k, *mu.shape), mu, generator)
        z = mu + (0.5 * logvar).exp() * eps  # (k, B, z)
        yk = None if y is None else torch.as_tensor(y).reshape(-1).repeat(k)  # row i B + b: image b
        logits = self.decode(z.flatten(0, 1), yk).unflatten(0, (k, x.shape[0]))
        log_px_z = -bernoulli_nll(logits.flatten(0, 1), x.repeat(k, 1, 1, 1)).view(k, -1)
        return log_px_z + log_normal(z) - log_normal(z, mu, logvar)

    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0,
               y: Tensor | None = None) -> Tensor:
        any_param = next(self.parameters())
        z = temperature * randn((n, self.z_dim), any_param, generator)
        return torch.sigmoid(self.decode(z, y))

    def reconstruct(self, x: Tensor, generator: torch.Generator | None = None, y: Tensor | None = None) -> Tensor:
        mu, logvar = self.encode(x, y)
        z = mu + (0.5 * logvar).exp() * randn(mu.shape, mu, generator)
        return torch.sigmoid(self.decode(z, y))

    def latent_mean(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self.encode(x, y)[0]

    def decode_latent(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return torch.sigmoid(self.decode(z, y))

    def latent_pass(self, x: Tensor, z: Tensor | None = None, generator: torch.Generator | None = None,
                    y: Tensor | None = None) -> LatentPass:
        mu, logvar = self.encode(x, y)
        if z is None:
            z = mu + (0.5 * logvar).exp() * randn(mu.shape, mu, generator)
        return LatentPass(z, self.decode(z, y), log_normal(z, mu, logvar))
