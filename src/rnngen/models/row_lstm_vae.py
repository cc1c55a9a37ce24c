"""Row-LSTM VAE: the simple recurrent autoencoder.

An LSTM reads the image row by row (28 steps of 28 pixels) in both directions; its final
states parameterise a Gaussian q(z|x). An LSTM decoder receives z at every step (and starts
from a state computed from z) and emits each row's 28 Bernoulli logits. The decoder does not
see earlier pixels, so z must carry the image: reconstructions and inpainting stay meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rnngen.config import under_minimum
from rnngen.models.latent import GaussianLatentVAE


@dataclass(frozen=True)
class RowLSTMVAEConfig:
    hidden: int = 128  # 2 CPU cores train it at ~600 img/s; 256 fits GPUs and full MNIST
    z_dim: int = 32
    #: p(x | y): the label, one-hot, beside the encoder's final states into q(z | x, y) and
    #: beside z into the decoder (every row, and its initial state; Sohn et al. 2015)
    conditional: bool = False
    #: labels 0 .. classes - 1 (conditional only)
    classes: int = 10

    def problems(self) -> list[str]:
        return under_minimum(self, hidden=1, z_dim=1, classes=1)


class RowLSTMVAE(GaussianLatentVAE):
    name = "row_lstm_vae"
    config_cls = RowLSTMVAEConfig

    def __init__(self, config: RowLSTMVAEConfig) -> None:
        super().__init__(config)
        h, self.z_dim = config.hidden, config.z_dim
        extra = config.classes if config.conditional else 0
        self.encoder = nn.LSTM(28, h, batch_first=True, bidirectional=True)
        self.to_q = nn.Linear(2 * h + extra, 2 * config.z_dim)
        self.to_state = nn.Linear(config.z_dim + extra, 2 * h)
        self.decoder = nn.LSTM(config.z_dim + extra, h, batch_first=True)
        self.to_row = nn.Linear(h, 28)

    def encode(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        rows = x.view(x.shape[0], 28, 28)  # (B, T=28 rows, 28 pixels)
        _, (h_n, _) = self.encoder(rows)  # h_n: (2 directions, B, h)
        mu, logvar = self.to_q(self.with_label(torch.cat([h_n[0], h_n[1]], dim=-1), y)).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        z = self.with_label(z, y)  # (B, z [+ classes])
        h0, c0 = torch.tanh(self.to_state(z)).chunk(2, dim=-1)  # (B, h) each
        steps = z.unsqueeze(1).expand(-1, 28, -1)  # (B, 28, z): z at every row
        out, _ = self.decoder(steps, (h0.unsqueeze(0).contiguous(), c0.unsqueeze(0).contiguous()))
        return self.to_row(out).view(-1, 1, 28, 28)  # (B, 1, 28, 28) logits
