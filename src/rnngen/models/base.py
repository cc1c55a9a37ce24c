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

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnngen.errors import UserError
from rnngen.models.likelihood import mean_nelbo, nll_metrics

IMAGE_SHAPE = (1, 28, 28)
#: labels as a caller may give them (:meth:`GenerativeModel.labels` reads them)
Labels = int | list[int] | np.ndarray | Tensor | None
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


class Completion(NamedTuple):
    """A completed batch, ``(B, 1, H, W)`` each, observed pixels exactly as given in both:
    ``drawn`` has the hidden pixels drawn (binary), ``means`` their Bernoulli means (for
    pictures and per-pixel errors); ``drawn`` is a draw from those means' path. ``hole_nll``
    ``(B,)``: -log p(hidden | observed) of the given image, where the sampler yields it
    (:meth:`GenerativeModel.hole_nll`), else None."""

    drawn: Tensor
    means: Tensor
    hole_nll: Tensor | None = None


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


def optimizer_groups(model: nn.Module, lr: float) -> list[dict[str, Any]]:
    """The optimizer's parameter groups at learning rate ``lr`` (``train.lr``). A submodule that
    declares ``optim = {"lr_scale": s, **settings}`` (a GAN's two networks: their own rates and
    Adam betas) trains in a group of its own at ``s * lr``, as S4 attaches ``_optim`` to its
    parameters; every other parameter shares one group. Declared on modules, not parameters:
    a parameter's attributes do not survive ``copy.deepcopy``."""
    owner: dict[int, nn.Module] = {}
    for module in model.modules():  # parents come first, so the nearest declaring module wins
        if hasattr(module, "optim"):
            owner.update({id(p): module for p in module.parameters()})
    groups: dict[int, dict[str, Any]] = {}
    for p in model.parameters():
        module = owner.get(id(p), model)
        settings = dict(getattr(module, "optim", {}))
        group = groups.setdefault(id(module), {"params": [], "lr": lr * settings.pop("lr_scale", 1.0), **settings})
        group["params"].append(p)
    return list(groups.values())


@torch.no_grad()
def start_from_data(model: nn.Module, mean: Tensor) -> None:
    """A fresh training's start from the training images' mean grey level ``mean``: every
    parameter a submodule names in ``data_mean_logits`` starts at the mean's logit (DRAW's
    initial canvas: sigmoid(c_0) is then the mean image), clamped so no logit is infinite."""
    for module in model.modules():
        for name in getattr(module, "data_mean_logits", ()):
            param = getattr(module, name)
            param.copy_(torch.logit(mean.clamp(1e-3, 1 - 1e-3)).reshape(param.shape))


class GenerativeModel(nn.Module, ABC):
    """An image model: latent-variable models (:class:`~rnngen.models.latent.LatentModel`,
    trained on the ELBO, scored by bounds), autoregressive ones (exact likelihood) and GANs (no
    likelihood) answer the same methods, so no caller branches on the model.

    ``forward`` gives the training loss terms; ``validation_score`` what early stopping goes by;
    ``likelihood_metrics`` the test NLL (exact, bounds, or none); ``sample`` (grey pictures) and
    ``sample_binary`` (draws of p(x)); ``complete`` (repair, a :class:`Completion`);
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

    @property
    def class_optional(self) -> bool:
        """True for a conditional model that also scores, draws and repairs an image whose class
        is not given, as the mixture p(x) = sum_y p(y) p(x | y) with a uniform p(y): its
        likelihood without a label is of p(x). A conditional model without it needs a label."""
        return False

    @property
    def needs_labels(self) -> bool:
        """Whether the likelihood and repair need each image's class (then the likelihood is of
        p(x | y)): a conditional model that is not :attr:`class_optional`."""
        return self.conditional and not self.class_optional

    def labels(self, given: Labels, n: int | None = None) -> Tensor | None:
        """The one place labels are read and checked: what a caller gives (None, one class for
        all ``n`` images, or one per image, as ints, a list, an array or a tensor) as this model
        takes it: ``(n,)`` class indices on its device for a conditional model, None for an
        unconditional one (and for a :attr:`class_optional` one given none). Anything else is a
        :class:`LabelError` that says what to give."""
        if given is not None and not isinstance(given, Tensor):
            given = np.asarray(given)
            given = None if given.size == 0 else given  # JSON's empty list: no labels sent
        if not self.conditional:
            if given is not None:
                raise LabelError(f"this {self.name} model was trained without labels: it cannot be asked for a "
                                 f"class (train one with model.{self.name}.conditional: true)")
            return None
        classes = self.config.classes
        if given is None and self.class_optional:
            return None
        if given is None:
            raise LabelError(f"this {self.name} model is conditional: give each image a label, 0 to {classes - 1}")
        whole = (not (given.is_floating_point() or given.is_complex() or given.dtype == torch.bool)
                 if isinstance(given, Tensor) else np.issubdtype(given.dtype, np.integer))
        if not whole:
            raise LabelError(f"labels are class numbers, 0 to {classes - 1}: got {given.reshape(-1)[0].item()!r}")
        y = torch.as_tensor(given, device=self.device).long().reshape(-1)
        if n is not None and len(y) == 1:
            y = y.expand(n)  # one class for every image
        if n is not None and len(y) != n:
            raise LabelError(f"{len(y)} labels for {n} images: give one label for all, or one per image")
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

    def validation_score(self, x: Tensor, y: Tensor | None, binarization: str, seed: int, batch_size: int) -> float:
        """What early stopping and the tuner go by (lower is better) on uint8 validation images
        ``x``: the mean negative ELBO (the exact NLL for an autoregressive model), its
        binarization drawn from ``seed`` so that epochs compare."""
        return mean_nelbo(self, x, binarization, batch_size, seed, y)

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

    @property
    def exact_hole_nll(self) -> bool:
        """Whether :meth:`hole_nll` is exact (a model trained to repair) or an estimate."""
        return False

    def hole_nll(self, x: Tensor, hidden: Tensor, effort: int = 1, generator: torch.Generator | None = None,
                 y: Tensor | None = None) -> Tensor | None:
        """``(B,)`` -log p(hidden | observed) of binary ``x`` in nats (``hidden`` True where a
        pixel is hidden), exact or estimated with ``effort`` units of the sampler
        (:attr:`exact_hole_nll`); None for a model that has neither (a GAN). Where a sampler
        yields it on the way, :meth:`complete` returns it beside the completion."""
        return None

    @abstractmethod
    def complete(
        self, x: Tensor, mask: Tensor, effort: int, generator: torch.Generator | None = None, y: Tensor | None = None,
    ) -> Completion:
        """Fill the pixels of ``x`` where ``mask`` is True by conditional sampling, ``effort``
        being the sampler's work per image; observed pixels come back exactly as given."""

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
