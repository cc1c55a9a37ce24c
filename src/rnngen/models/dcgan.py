"""DCGAN (Radford et al. 2016) for 28x28 binary images: the non-recurrent baseline without a
likelihood, to put the claim that recurrent models generate better than GANs to the test.

The generator maps z ~ N(0, I) through a linear layer and two strided transposed convolutions
(batch norm and ReLU between them, sec. 3) to Bernoulli means; its binary samples are draws of
those means, as a latent model's are. The discriminator is two strided convolutions with leaky
ReLUs (batch norm on the second, none on the input layer, sec. 3) and a linear score.

Two losses (``model.dcgan.loss``):

- ``gan``: the non-saturating loss of Goodfellow et al. 2014 (sec. 3): the discriminator
  minimises -log D(x) - log(1 - D(G(z))), the generator -log D(G(z)); Adam betas (0.5, 0.999)
  as DCGAN (sec. 4).
- ``wgan_gp``: WGAN-GP (Gulrajani et al. 2017, Algorithm 1): the critic minimises
  D(G(z)) - D(x) + lambda (||grad D(x_hat)|| - 1)^2 on random mixes x_hat of real and fake,
  the generator -D(G(z)); layer norm in place of the critic's batch norm (sec. 4), which
  would make the penalty depend on the batch; Adam betas (0, 0.9).

Both networks update at every training step from one backward pass: the discriminator's loss
sees the fake images detached, and the generator's loss runs the discriminator with its
weights held (:func:`torch.func.functional_call` on detached parameters), so each network gets
the gradient of its own loss alone. The discriminator's learning rate is ``disc_lr_ratio``
times the generator's: the two time-scale update rule of Heusel et al. 2017 (sec. 2), whose
simultaneous updates converge without WGAN-GP's five critic steps per generator step.

A GAN has no likelihood (``has_likelihood`` False): early stopping and the tuner go by the
Fréchet distance between its samples and the validation images in 2x2-pooled pixel space
(:meth:`DCGAN.validation_distance`). Inpainting and reconstruction search z so that the
generator matches the observed pixels (Yeh et al. 2017, sec. 3.2).

A conditional DCGAN (``conditional: true``) gives the generator the label one-hot beside z
(Mirza and Osindero 2014) and the discriminator a projection of a class embedding on its
features (Miyato and Koyama 2018, eq. 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnngen.config import under_minimum
from rnngen.data import binarized_test_set
from rnngen.frechet import frechet_distance
from rnngen.models.base import AdversarialTerms, Completion, NoLikelihoodError, randn
from rnngen.models.latent import LatentModel

#: Adam's betas per loss: DCGAN's (sec. 4) and WGAN-GP's (Algorithm 1)
BETAS = {"gan": (0.5, 0.999), "wgan_gp": (0.0, 0.9)}
#: random starts of the latent search per image; the best fit wins
RESTARTS = 2
#: Adam steps of the latent search per unit of effort
STEPS_PER_EFFORT = 2
#: the search's effort for :meth:`DCGAN.reconstruct` and :meth:`DCGAN.latent_mean`
PROJECT_EFFORT = 16
#: validation images (and as many samples) behind the validation distance
VALIDATION_IMAGES = 1000


@dataclass(frozen=True)
class DCGANConfig:
    #: gan (the non-saturating loss) | wgan_gp (Wasserstein loss with gradient penalty)
    loss: Literal["gan", "wgan_gp"] = "gan"
    #: channels of the generator's last hidden map and the discriminator's first; the other is 2x
    hidden: int = 64
    z_dim: int = 64
    #: WGAN-GP's penalty weight lambda (Gulrajani et al. 2017 use 10)
    penalty: float = 10.0
    #: each network's Adam lr is train.lr x this (0.1: 2e-4 at train.lr 0.002, DCGAN's)
    lr_scale: float = 0.1
    #: the discriminator's lr over the generator's (the two time-scale update rule)
    disc_lr_ratio: float = 4.0
    #: p(x | y): the label one-hot beside z, a class projection in the discriminator
    conditional: bool = False
    #: labels 0 .. classes - 1 (conditional only)
    classes: int = 10

    def problems(self) -> list[str]:
        out = under_minimum(self, hidden=1, z_dim=1, classes=1, penalty=0)
        out += [f"{key}: must be > 0, got {getattr(self, key)}" for key in ("lr_scale", "disc_lr_ratio")
                if not getattr(self, key) > 0]
        return out


class Generator(nn.Module):
    def __init__(self, z_in: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.project = nn.Sequential(nn.Linear(z_in, 2 * hidden * 49), nn.BatchNorm1d(2 * hidden * 49), nn.ReLU())
        self.up = nn.Sequential(
            nn.ConvTranspose2d(2 * hidden, hidden, 4, 2, 1), nn.BatchNorm2d(hidden), nn.ReLU(),  # 7 -> 14
            nn.ConvTranspose2d(hidden, 1, 4, 2, 1),  # 14 -> 28: Bernoulli logits
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.up(self.project(z).view(-1, 2 * self.hidden, 7, 7))


class Discriminator(nn.Module):
    def __init__(self, hidden: int, loss: str, classes: int) -> None:
        super().__init__()
        norm = nn.BatchNorm2d(2 * hidden) if loss == "gan" else nn.LayerNorm([2 * hidden, 7, 7])
        self.features = nn.Sequential(
            nn.Conv2d(1, hidden, 4, 2, 1), nn.LeakyReLU(0.2),  # 28 -> 14
            nn.Conv2d(hidden, 2 * hidden, 4, 2, 1), norm, nn.LeakyReLU(0.2),  # 14 -> 7
            nn.Flatten(),
        )
        self.score = nn.Linear(2 * hidden * 49, 1)
        self.embed = nn.Embedding(classes, 2 * hidden * 49) if classes else None
        if self.embed is not None:  # the class term starts at 0: the unconditional score
            nn.init.zeros_(self.embed.weight)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """``(B,)`` scores: logits of "real" (gan), critic values (wgan_gp)."""
        phi = self.features(x)
        out = self.score(phi).squeeze(1)
        if labels is not None:  # projection discriminator: + <embed(y), phi(x)>
            out = out + (self.embed(labels) * phi).sum(1)
        return out


class DCGAN(LatentModel):
    name = "dcgan"
    config_cls = DCGANConfig
    has_likelihood = False
    loss_names: ClassVar[tuple[str, str]] = ("disc", "gen")

    def __init__(self, config: DCGANConfig) -> None:
        super().__init__(config)
        extra = config.classes if config.conditional else 0
        self.z_dim = config.z_dim
        self.generator = Generator(config.z_dim + extra, config.hidden)
        self.disc = Discriminator(config.hidden, config.loss, extra)
        scaled, betas = config.lr_scale, BETAS[config.loss]  # read by base.optimizer_groups
        self.generator.optim = {"lr_scale": scaled, "betas": betas}
        self.disc.optim = {"lr_scale": scaled * config.disc_lr_ratio, "betas": betas}

    def logits(self, z: Tensor, labels: Tensor | None) -> Tensor:
        """The generator's Bernoulli logits ``(B, 1, 28, 28)`` for latents z (checked labels)."""
        if labels is not None:
            z = torch.cat([z, F.one_hot(labels, self.config.classes).to(z.dtype)], 1)
        return self.generator(z)

    def forward(self, x: Tensor, y: Tensor | None = None) -> AdversarialTerms:
        labels = self.labels(y, len(x))
        z = torch.randn(len(x), self.z_dim, device=x.device, dtype=x.dtype)  # train seeds the global stream
        fake = torch.sigmoid(self.logits(z, labels))
        real_score, fake_score = self.disc(x, labels), self.disc(fake.detach(), labels)
        held = {name: p.detach() for name, p in self.disc.named_parameters()} | dict(self.disc.named_buffers())
        gen_score = torch.func.functional_call(self.disc, held, (fake, labels))  # trains the generator only
        if self.config.loss == "gan":
            return AdversarialTerms(recon=F.softplus(-real_score) + F.softplus(fake_score), kl=F.softplus(-gen_score))
        penalty = self.gradient_penalty(x, fake.detach(), labels)
        return AdversarialTerms(recon=fake_score - real_score + self.config.penalty * penalty, kl=-gen_score)

    def gradient_penalty(self, real: Tensor, fake: Tensor, labels: Tensor | None) -> Tensor:
        """(||grad_x D(x_hat)||_2 - 1)^2 per image at x_hat = e x + (1 - e) x_fake, e ~ U[0, 1]
        (Gulrajani et al. 2017, eq. 3); differentiable, so it trains the critic."""
        e = torch.rand(len(real), 1, 1, 1, device=real.device, dtype=real.dtype)
        with torch.enable_grad():
            mixed = (e * real + (1 - e) * fake).requires_grad_(True)
            (grad,) = torch.autograd.grad(self.disc(mixed, labels).sum(), mixed, create_graph=True)
        return (grad.flatten(1).norm(dim=1) - 1).pow(2)

    def log_weights(self, x: Tensor, k: int, generator: torch.Generator | None = None,
                    y: Tensor | None = None) -> Tensor:
        raise NoLikelihoodError(f"a {self.name} model has no likelihood, so it cannot score images; it samples "
                                "and inpaints (tasks sample, inpaint). Score with a likelihood model: pixelrnn, "
                                "draw, row_lstm_vae or mlp_vae")

    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0,
               y: Tensor | None = None) -> Tensor:
        z = temperature * randn((n, self.z_dim), next(self.parameters()), generator)
        return torch.sigmoid(self.logits(z, self.labels(y, n)))

    def validation_score(self, x: Tensor, y: Tensor | None, binarization: str, seed: int, batch_size: int) -> float:
        """No likelihood to validate on: :meth:`validation_distance` to the validation images,
        binarized here (a likelihood model's epoch never pays for that draw)."""
        return self.eval().validation_distance(binarized_test_set(x, binarization, seed), y, seed)

    def validation_distance(self, x: Tensor, y: Tensor | None, seed: int) -> float:
        """Fréchet distance between binary samples and the binarized validation images ``x``
        (the first :data:`VALIDATION_IMAGES`), on 2x2-pooled pixels (196 features): lower is
        closer. Seeded, so epochs compare."""
        n = min(len(x), VALIDATION_IMAGES)
        real = x[:n].to(self.device)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        with torch.no_grad():
            fake = self.sample_binary(n, generator=generator, y=None if y is None else y[:n])
        pooled = [F.avg_pool2d(images.float(), 2).flatten(1).cpu() for images in (fake, real)]
        return frechet_distance(*pooled)

    # ------------------------------------------------- the latent search (Yeh et al. 2017)

    def search(self, x: Tensor, observed: Tensor, effort: int, generator: torch.Generator | None = None,
               y: Tensor | None = None) -> Tensor:
        """``(B, z_dim)`` latents whose images fit ``x`` where ``observed``: from
        :data:`RESTARTS` prior draws per image, ``STEPS_PER_EFFORT * effort`` Adam steps on
        :meth:`search_loss`; the best fit per image wins."""
        labels = self.labels(y, len(x))
        b = len(x)
        xr, seen = x.repeat(RESTARTS, 1, 1, 1), observed.repeat(RESTARTS, 1, 1, 1)
        yr = None if labels is None else labels.repeat(RESTARTS)
        z = randn((RESTARTS * b, self.z_dim), x, generator).requires_grad_(True)
        optimiser = torch.optim.Adam([z], lr=0.05)
        with torch.enable_grad():
            for _ in range(STEPS_PER_EFFORT * effort):
                # z's gradient alone: the weights stay put
                (z.grad,) = torch.autograd.grad(self.search_loss(z, xr, seen, yr).sum(), z)
                optimiser.step()
            best = self.search_loss(z, xr, seen, yr).detach().view(RESTARTS, b).argmin(0)
        return z.detach().view(RESTARTS, b, -1)[best, torch.arange(b, device=x.device)]

    def search_loss(self, z: Tensor, x: Tensor, observed: Tensor, labels: Tensor | None) -> Tensor:
        """``(B,)`` -log p(observed pixels | z) - log p(z) + the generator's loss at G(z): Yeh et
        al. 2017's context loss (eq. 4, as the Bernoulli likelihood of binary pixels) and prior
        loss (eq. 5, which keeps the image one the discriminator accepts), with z's own prior."""
        logits = self.logits(z, labels)
        context = (F.binary_cross_entropy_with_logits(logits, x, reduction="none") * observed).flatten(1).sum(1)
        score = self.disc(torch.sigmoid(logits), labels)
        accepted = F.softplus(-score) if self.config.loss == "gan" else -score
        return context + 0.5 * z.pow(2).sum(1) + accepted

    def complete(self, x: Tensor, mask: Tensor, effort: int, generator: torch.Generator | None = None,
                 y: Tensor | None = None) -> Completion:
        """The hidden pixels from the generator at the latent that best fits the observed ones
        (:meth:`search`); observed pixels exactly as given."""
        mask = mask.to(x.device)
        z = self.search(x, ~mask, effort, generator, y)
        with torch.no_grad():
            means = torch.where(mask, torch.sigmoid(self.logits(z, self.labels(y, len(x)))), x)
        return Completion(drawn=torch.where(mask, torch.bernoulli(means, generator=generator), x), means=means)

    def reconstruct(self, x: Tensor, generator: torch.Generator | None = None, y: Tensor | None = None) -> Tensor:
        """The generator's image nearest ``x``: the search with every pixel observed."""
        return self.decode_latent(self.latent_mean(x, y, generator), y)

    def latent_mean(self, x: Tensor, y: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """A GAN has no encoder: the latent the search finds for ``x`` (seeded by ``generator``,
        else seed 0), where a walk starts and ends (Radford et al. 2016, sec. 6.1)."""
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(0)
        return self.search(x, torch.ones_like(x, dtype=torch.bool), PROJECT_EFFORT, generator, y)

    def decode_latent(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        with torch.no_grad():
            return torch.sigmoid(self.logits(z, self.labels(y, len(z))))
