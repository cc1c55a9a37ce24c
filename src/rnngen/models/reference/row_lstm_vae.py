"""The plain implementation of :mod:`rnngen.models.row_lstm_vae`: the same network on the same
parameters, its three LSTMs unrolled row by row with ``nn.LSTMCell``'s arithmetic (one autograd
graph per step) instead of ``nn.LSTM``'s fused whole-sequence kernel.

The tests check the model against it (values and gradients) and ``bench/throughput.py`` times it
as the baseline; it is not a registered model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rnngen.models.base import LossTerms, bernoulli_nll, gaussian_kl
from rnngen.models.row_lstm_vae import RowLSTMVAE


def _unroll(lstm: nn.LSTM, steps: Tensor, h: Tensor, c: Tensor, suffix: str = "", reverse: bool = False) -> tuple:
    """One direction of ``lstm`` over ``steps`` (B, T, in) as T calls of torch's LSTM cell with that
    direction's weights; the outputs (B, T, h) and the last (h, c)."""
    w_ih, w_hh = getattr(lstm, f"weight_ih_l0{suffix}"), getattr(lstm, f"weight_hh_l0{suffix}")
    b_ih, b_hh = getattr(lstm, f"bias_ih_l0{suffix}"), getattr(lstm, f"bias_hh_l0{suffix}")
    order = range(steps.shape[1] - 1, -1, -1) if reverse else range(steps.shape[1])
    outs = {}
    for t in order:
        h, c = torch.lstm_cell(steps[:, t], (h, c), w_ih, w_hh, b_ih, b_hh)
        outs[t] = h
    return torch.stack([outs[t] for t in range(steps.shape[1])], 1), h, c


def encode(model: RowLSTMVAE, x: Tensor) -> tuple[Tensor, Tensor]:
    rows = x.view(x.shape[0], 28, 28)
    zero = rows.new_zeros(x.shape[0], model.encoder.hidden_size)
    _, h_fwd, _ = _unroll(model.encoder, rows, zero, zero)
    _, h_bwd, _ = _unroll(model.encoder, rows, zero, zero, "_reverse", reverse=True)
    return model.to_q(torch.cat([h_fwd, h_bwd], -1)).chunk(2, -1)


def decode(model: RowLSTMVAE, z: Tensor) -> Tensor:
    h0, c0 = torch.tanh(model.to_state(z)).chunk(2, -1)
    out, _, _ = _unroll(model.decoder, z.unsqueeze(1).expand(-1, 28, -1), h0, c0)
    return model.to_row(out).view(-1, 1, 28, 28)


def forward(model: RowLSTMVAE, x: Tensor) -> LossTerms:
    """``model(x)`` computed the plain way (same reparameterisation noise for the same RNG state)."""
    mu, logvar = encode(model, x)
    z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
    return LossTerms(recon=bernoulli_nll(decode(model, z), x), kl=gaussian_kl(mu, logvar))
