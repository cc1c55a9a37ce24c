"""The plain implementation of :mod:`rnngen.models.draw`: the same network, on the same
parameters, written the straightforward way (the paper's eqs. (3)-(8) and (19)-(29) step by step
with autograd ops and the model's own nn.LSTMCell / nn.Linear layers, one autograd graph per step).

The tests check the fast model against it (values and gradients) and ``bench/throughput.py``
times it as the baseline; it is not a registered model.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnngen.models.base import LossTerms
from rnngen.models.draw import DRAW, SIZE, loss_terms


def reference_filters(p: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """eqs. (19)-(26) written out with autograd ops: F_X, F_Y (B, N, 28), gamma (B, 1, 1) from
    attention parameters p (B, 5)."""
    g = (SIZE + 1) / 2 * (p[:, 0:2] + 1)
    delta = ((SIZE - 1) / (n - 1) if n > 1 else 0.0) * p[:, 3].exp()
    i = torch.arange(1, n + 1, dtype=p.dtype, device=p.device)
    mu = g[:, :, None] + (i - n / 2 - 0.5) * delta[:, None, None]  # (B, 2, N)
    a = torch.arange(1, SIZE + 1, dtype=p.dtype, device=p.device)
    f = torch.exp(-((a - mu[..., None]) ** 2) / (2 * p[:, 2].exp()[:, None, None, None]))
    f = f / f.sum(-1, keepdim=True)
    return f[:, 0], f[:, 1], p[:, 4].exp()[:, None, None]


def reference_run(model: DRAW, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """eqs. (3)-(8) step by step with the model's own nn.LSTMCell / nn.Linear layers: canvas
    logits c_T (B, 784), mu and log sigma (T, B, z), as ``model._recurrence(x, eps)``."""
    cfg, bsz = model.config, x.shape[0]
    x = x.flatten(1)
    h_enc, c_enc = model.h_enc0.expand(bsz, -1), x.new_zeros(bsz, cfg.enc_hidden)
    h_dec, c_dec = model.h_dec0.expand(bsz, -1), x.new_zeros(bsz, cfg.dec_hidden)
    canvas = model.canvas0.expand(bsz, -1)
    mus, logsigs = [], []
    for t in range(cfg.steps):
        x_hat = x - torch.sigmoid(canvas)
        if cfg.attention:
            fx, fy, gamma = reference_filters(model.att(h_dec)[:, :5], cfg.read_n)
            glimpses = [gamma * fy @ img.view(bsz, SIZE, SIZE) @ fx.transpose(1, 2) for img in (x, x_hat)]
            r = torch.cat([gl.flatten(1) for gl in glimpses], 1)
        else:
            r = torch.cat([x, x_hat], 1)
        h_enc, c_enc = model.enc(torch.cat([r, h_dec], 1), (h_enc, c_enc))
        mu, logsig = model.q(h_enc).chunk(2, 1)
        h_dec, c_dec = model.dec(mu + logsig.exp() * eps[t], (h_dec, c_dec))
        if cfg.attention:
            fx, fy, gamma = reference_filters(model.att(h_dec)[:, 5:], cfg.write_n)
            w = model.write(h_dec).view(bsz, cfg.write_n, cfg.write_n)
            canvas = canvas + (fy.transpose(1, 2) @ w @ fx / gamma).flatten(1)
        else:
            canvas = canvas + model.write(h_dec)
        mus.append(mu)
        logsigs.append(logsig)
    return canvas, torch.stack(mus), torch.stack(logsigs)


def forward(model: DRAW, x: Tensor) -> LossTerms:
    """What ``model(x)`` computes (same noise draw, same loss terms), through :func:`reference_run`.
    Under autocast its layers run in the autocast dtype; the loss is taken in the parameters' dtype."""
    eps = model._noise(x.shape[0], x, None)
    dtype = model.canvas0.dtype
    canvas, mu, logsig = (t.to(dtype) for t in reference_run(model, x.to(dtype), eps.to(dtype)))
    return loss_terms(x, canvas, mu, logsig)
