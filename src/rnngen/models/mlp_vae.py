"""Non-recurrent baseline: the two-layer MLP VAE of pytorch/examples (784-400-z), used by
the benchmarks to show what recurrence buys."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from rnngen.config import under_minimum
from rnngen.models.latent import GaussianLatentVAE


@dataclass(frozen=True)
class MLPVAEConfig:
    hidden: int = 400
    z_dim: int = 20
    #: p(x | y): the label, one-hot, beside the image into the encoder and beside z into the
    #: decoder (the conditional VAE of Sohn et al. 2015)
    conditional: bool = False
    #: labels 0 .. classes - 1 (conditional only)
    classes: int = 10

    def problems(self) -> list[str]:
        return under_minimum(self, hidden=1, z_dim=1, classes=1)


class MLPVAE(GaussianLatentVAE):
    name = "mlp_vae"
    config_cls = MLPVAEConfig

    def __init__(self, config: MLPVAEConfig) -> None:
        super().__init__(config)
        self.z_dim = config.z_dim
        extra = config.classes if config.conditional else 0
        self.enc = nn.Linear(784 + extra, config.hidden)
        self.to_q = nn.Linear(config.hidden, 2 * config.z_dim)
        self.dec = nn.Linear(config.z_dim + extra, config.hidden)
        self.to_x = nn.Linear(config.hidden, 784)

    def encode(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mu, logvar = self.to_q(F.relu(self.enc(self.with_label(x.flatten(1), y)))).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return self.to_x(F.relu(self.dec(self.with_label(z, y)))).view(-1, 1, 28, 28)
