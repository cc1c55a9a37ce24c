"""The small interface every rnngen model answers, so training, evaluation, tuning and
inpainting are written once.

Images are ``(B, 1, 28, 28)`` float tensors in [0, 1] (binarized pixels for a proper
Bernoulli likelihood). All quantities are in nats per image.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnngen.errors import UserError
from rnngen.models.likelihood import mean_nelbo, nll_metrics

IMAGE_SHAPE = (1, 28, 28)
LOG_2PI = math.log(2 * math.pi)


class NoLikelihoodError(UserError, ValueError):
    """A likelihood asked of a model that has none (a GAN): it cannot score images."""


class SamplingError(UserError, ValueError):
    """A sampling setting a model does not have, or a value its config refuses."""


class LabelError(UserError, ValueError):
    """Labels a model cannot take: a class asked of an unconditional model, none given to a
    conditional one, or a class it was not trained on."""


@dataclass
class LossTerms:
    """Per-image terms of the negative ELBO: ``recon`` = -E_q log p(x|z), ``kl`` = KL(q || p)."""

    recon: Tensor  # (B,)
    kl: Tensor  # (B,)

    @property
    def nelbo(self) -> Tensor:
        return self.recon + self.kl

    def objective(self, kl_weight: float = 1.0) -> Tensor:
        """The summed loss a training step descends; ``kl_weight`` < 1 during KL warm-up."""
        return self.nelbo.sum() if kl_weight == 1.0 else self.recon.sum() + kl_weight * self.kl.sum()


@dataclass
class AdversarialTerms(LossTerms):
    """A GAN's per-image losses in the same two slots: ``recon`` holds the discriminator's,
    ``kl`` the generator's (logged as the model's ``loss_names``); their sum bounds nothing,
    and KL warm-up does not apply."""

    def objective(self, kl_weight: float = 1.0) -> Tensor:
        return self.nelbo.sum()


class LatentPass(NamedTuple):
    """One pass of a latent model over images x: z ~ q(z | x) (or a given z), the decoder's
    Bernoulli logits of p(x | z) and log q(z | x) per image."""

    z: Tensor
    logits: Tensor
    log_q: Tensor


class Completion(NamedTuple):
    """A completed batch, ``(B, 1, H, W)`` each, observed pixels exactly as given in both:
    ``drawn`` has the hidden pixels drawn (binary), ``means`` their Bernoulli means (for
    pictures and per-pixel errors); ``drawn`` is a draw from those means' path."""

    drawn: Tensor
    means: Tensor


def bernoulli_nll(logits: Tensor, x: Tensor) -> Tensor:
    """-log p(x | logits) summed over pixels, per image: (B, ...) -> (B,)."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over the last dim: 0.5 per latent dim."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(-1)


def log_normal(z: Tensor, mu: Tensor | None = None, logvar: Tensor | None = None) -> Tensor:
    """log N(z; mu, exp(logvar)) summed over the last dim (standard normal by default)."""
    if mu is None:
        return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
    assert logvar is not None
    return -0.5 * ((z - mu).pow(2) / logvar.exp() + logvar + LOG_2PI).sum(-1)


def randn(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise on ``like``'s device and dtype, optionally from ``generator``."""
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def bf16_autocast(like: Tensor) -> bool:
    """Whether bfloat16 autocast is on for ``like``'s device: the hand-written loops follow it."""
    kind = like.device.type
    return torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind) == torch.bfloat16


class GenerativeModel(nn.Module, ABC):
    """An image model: latent-variable models (trained on the ELBO, scored by bounds),
    autoregressive ones (exact likelihood) and GANs (no likelihood: ``has_likelihood`` False,
    ``log_weights`` raises :class:`NoLikelihoodError`) answer the same methods, so no caller
    branches on the model.

    ``forward`` gives the training loss terms; ``log_likelihood`` the log-likelihood (a bound
    or exact, as ``exact_likelihood`` says); ``sample`` (grey pictures) and ``sample_binary``
    (draws of p(x)); ``complete`` (inpainting, a :class:`Completion`);
    ``reconstruct``; ``sample_steps`` (the picture of generation over time).
    """

    #: registry name, e.g. ``"draw"``; the ``model.name`` value in params.yaml
    name: ClassVar[str]
    #: frozen dataclass holding this model's hyperparameters
    config_cls: ClassVar[type]
    #: config fields the tuner's "hidden size" sets
    hidden_fields: ClassVar[tuple[str, ...]] = ("hidden",)
    #: True when ``log_likelihood`` is exact (autoregressive models); False: a k-sample bound
    exact_likelihood: ClassVar[bool] = False
    #: True for latent-variable models: :meth:`latent_mean` and :meth:`decode_latent` answer
    has_latent: ClassVar[bool] = False
    #: False for a model without a likelihood (a GAN): no NLL metrics, no ``score``
    has_likelihood: ClassVar[bool] = True
    #: what the two slots of :class:`LossTerms` hold, as training logs them (``train_<name>``)
    loss_names: ClassVar[tuple[str, str]] = ("recon", "kl")
    #: ``model.<name>.preset`` values -> the config keys each sets
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    #: config fields that change only how the model samples, never its weights or likelihood:
    #: a caller may set them for its own draws (:meth:`with_sampling`)
    sampling_fields: ClassVar[tuple[str, ...]] = ()
    #: config fields added after checkpoints were first written, with the value a checkpoint
    #: that lacks them was trained and samples with (which may not be today's default)
    legacy_config: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config

    @classmethod
    def resolve_section(cls, section: dict[str, Any]) -> dict[str, Any]:
        """``params['model'][name]`` before validation: ``preset`` (a key of ``presets``)
        expands; keys given beside it win, and a key set to null (params.yaml lists every knob
        as null) takes the preset's value, else the default. Idempotent: ``asdict(config)``,
        which keeps ``preset`` and states every field, resolves to the same config."""
        section = {k: v for k, v in section.items() if v is not None}
        preset = section.get("preset", "")
        if not isinstance(preset, str) or preset not in cls.presets:
            return section  # validation reports a bad preset
        return {**cls.presets[preset], **section}

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def conditional(self) -> bool:
        """True for a model of p(x | y), trained on labels (``model.<name>.conditional``)."""
        return bool(getattr(self.config, "conditional", False))

    def labels(self, y: Tensor | None, n: int | None = None) -> Tensor | None:
        """``y`` as this model takes it: ``(B,)`` class indices on its device for a conditional
        model, None for an unconditional one; anything else is a :class:`LabelError`."""
        if not self.conditional:
            if y is not None:
                raise LabelError(f"this {self.name} model was trained without labels: it cannot be asked for a "
                                 f"class (train one with model.{self.name}.conditional: true)")
            return None
        classes = self.config.classes
        if y is None:
            raise LabelError(f"this {self.name} model is conditional: give each image a label, 0 to {classes - 1}")
        y = torch.as_tensor(y, device=self.device).long().reshape(-1)
        if n is not None and len(y) != n:
            raise LabelError(f"{len(y)} labels for {n} images: give one label per image")
        bad = y[(y < 0) | (y >= classes)]
        if len(bad):
            raise LabelError(f"label {int(bad[0])}: this model was trained on classes 0 to {classes - 1}")
        return y

    def with_sampling(self, **settings: Any) -> GenerativeModel:
        """This model with the :attr:`sampling_fields` in ``settings`` changed, for one caller:
        a shallow copy sharing the weights, so the model itself (a served one, say) is untouched.
        A field it lacks, or a value its config refuses, is a :class:`SamplingError`."""
        unknown = sorted(set(settings) - set(self.sampling_fields))
        if unknown:
            has = f"it has: {', '.join(self.sampling_fields)}" if self.sampling_fields else "it has none"
            raise SamplingError(f"{unknown[0]}: {self.name} has no such sampling setting ({has})")
        config = dataclasses.replace(self.config, **settings)
        problems = config.problems()
        if problems:
            raise SamplingError("; ".join(problems))
        twin = copy.copy(self)
        twin.config = config
        return twin

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """The optimizer's parameter groups at learning rate ``lr`` (``train.lr``): one by
        default; a GAN gives each network its own rate and Adam betas."""
        return [{"params": list(self.parameters())}]

    def validation_score(self, x: Tensor, y: Tensor | None, binarization: str, seed: int, batch_size: int) -> float:
        """What early stopping and the tuner go by (lower is better) on uint8 validation images
        ``x``: the mean negative ELBO (the exact NLL for an autoregressive model), its
        binarization drawn from ``seed`` so that epochs compare."""
        return mean_nelbo(self, x, binarization, batch_size, seed, y)

    def init_from_data(self, mean: Tensor) -> None:
        """Called once by :func:`rnngen.train.fit` before a fresh training (never on a resume)
        with the training images' mean grey level ``(1, 28, 28)``; by default nothing."""

    @abstractmethod
    def forward(self, x: Tensor, y: Tensor | None = None) -> LossTerms:
        """Per-image training loss terms: for latent models a single-sample estimate of the
        negative ELBO (``recon`` + ``kl``), for exact models ``recon`` = -log p(x), ``kl`` = 0.
        Every method takes labels ``y`` ``(B,)``: a conditional model needs them (it models
        p(x | y)), an unconditional one refuses them (:meth:`labels`)."""

    @abstractmethod
    def log_weights(self, x: Tensor, k: int, generator: torch.Generator | None = None,
                    y: Tensor | None = None) -> Tensor:
        """``(k, B)`` importance log-weights ``log p(x, z_i) - log q(z_i | x)``, z_i ~ q(z|x);
        for an exact model every row is ``log p(x)`` (the bounds are then exact)."""

    def log_likelihood(self, x: Tensor, k: int = 1, generator: torch.Generator | None = None,
                       y: Tensor | None = None) -> Tensor:
        """``(B,)`` log p(x): exact when ``exact_likelihood``, else the importance-weighted
        lower bound with ``k`` samples (Burda et al. 2016, eq. 8)."""
        logw = self.log_weights(x, k, generator=generator, y=y).double()
        return (torch.logsumexp(logw, 0) - math.log(k)).to(x.dtype)

    def likelihood_metrics(self, x: Tensor, k: int, batch_size: int, seed: int, progress: bool = True,
                           y: Tensor | None = None) -> dict[str, float]:
        """The NLL of binary images ``x`` in nats/image and bits/dim (:func:`~rnngen.models.likelihood.nll_metrics`):
        exact, or bounds from ``k`` importance samples; ``{}`` for a model without a likelihood."""
        if not self.has_likelihood:
            return {}
        return nll_metrics(self, x, k, batch_size, seed, self.exact_likelihood, progress, y)

    def complete(
        self, x: Tensor, mask: Tensor, effort: int, generator: torch.Generator | None = None, y: Tensor | None = None,
    ) -> Completion:
        """Fill the pixels of ``x`` where ``mask`` is True by conditional sampling, ``effort``
        being the sampler's work per image; observed pixels come back exactly as given.
        Latent models: ``effort // 2`` rounds of :meth:`pseudo_gibbs` bring the missing pixels
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

    def latent_pass(self, x: Tensor, z: Tensor | None = None, generator: torch.Generator | None = None,
                    y: Tensor | None = None) -> LatentPass:
        """Latent models: z ~ q(z | x) (or the ``z`` given), the decoder's logits of p(x | z) and
        log q(z | x); what :meth:`metropolis_within_gibbs` needs. Autoregressive models have no latent."""
        raise NotImplementedError(f"{self.name} has no latent variable")

    def latent_mean(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Latent models: the mean of q(z | x) per image, ``(B, ...)`` (DRAW: its T latents along
        the path of posterior means); where a latent walk starts and ends."""
        raise NotImplementedError(f"{self.name} has no latent variable")

    def decode_latent(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Latent models: the Bernoulli means of p(x | z), ``(B, 1, 28, 28)``, for latents shaped
        as :meth:`latent_mean` gives them."""
        raise NotImplementedError(f"{self.name} has no latent variable")

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

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0,
               y: Tensor | None = None) -> Tensor:
        """``n`` new images as Bernoulli means, ``(n, 1, 28, 28)``; fresh latents each call.

        ``temperature`` scales the prior's standard deviation (< 1: typical, cleaner samples).
        """

    def sample_binary(self, n: int, generator: torch.Generator | None = None, y: Tensor | None = None) -> Tensor:
        """``n`` binary images x ~ p(x), ``(n, 1, 28, 28)``: the kind of image the likelihood is
        of, and what sample quality compares with binarized real images. Latent models draw
        every pixel from the Bernoulli means :meth:`sample` gives (exact: p(x | z) factorises
        over pixels); autoregressive models return the pixels they drew."""
        means = self.sample(n, generator=generator, y=y)
        return torch.bernoulli(means, generator=generator)

    @abstractmethod
    def reconstruct(self, x: Tensor, generator: torch.Generator | None = None, y: Tensor | None = None) -> Tensor:
        """Bernoulli means of p(x | z) with z ~ q(z | x): the building block of inpainting."""

    def sample_steps(self, n: int, generator: torch.Generator | None = None, y: Tensor | None = None) -> Tensor | None:
        """For step-wise models, ``(T, n, 1, 28, 28)`` canvases over time; else None."""
        return None


class GaussianLatentVAE(GenerativeModel):
    """A VAE with one Gaussian latent vector: subclasses give ``encode`` and ``decode``. A
    conditional one is the conditional VAE of Sohn et al. 2015 (sec. 4): the label goes to the
    encoder, q(z | x, y), and to the decoder, p(x | z, y), under the prior N(0, I)."""

    has_latent = True
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
