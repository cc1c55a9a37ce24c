"""Non-recurrent baseline: the two-layer MLP VAE of pytorch/examples (784-400-z), used by
the benchmarks to show what recurrence buys."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from rnngen.config import under_minimum
from rnngen.models.base import GaussianLatentVAE


@dataclass(frozen=True)
class MLPVAEConfig:
    hidden: int = 400
    z_dim: int = 20

    def problems(self) -> list[str]:
        return under_minimum(self, hidden=1, z_dim=1)


class MLPVAE(GaussianLatentVAE):
    name = "mlp_vae"
    config_cls = MLPVAEConfig

    def __init__(self, config: MLPVAEConfig) -> None:
        super().__init__(config)
        self.z_dim = config.z_dim
        self.enc = nn.Linear(784, config.hidden)
        self.to_q = nn.Linear(config.hidden, 2 * config.z_dim)
        self.dec = nn.Linear(config.z_dim, config.hidden)
        self.to_x = nn.Linear(config.hidden, 784)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.to_q(F.relu(self.enc(x.flatten(1)))).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        return self.to_x(F.relu(self.dec(z))).view(-1, 1, 28, 28)
