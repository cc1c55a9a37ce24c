"""DRAW: Deep Recurrent Attentive Writer (Gregor et al., 2015, arXiv:1502.04623).

An encoder LSTM reads the image and the error of the current canvas through a Gaussian
attention window; a latent z_t ~ q(z_t | h_enc_t) is drawn at each of T steps; a decoder LSTM
writes a patch onto the canvas c_t; p(x | z_1:T) is Bernoulli with logits c_T. Equation numbers
in the comments are the paper's. Initial states c_0, h_enc_0, h_dec_0 are learned biases
(Section 2.1); LSTM cell states start at zero.

:meth:`DRAW.unroll` is the recurrence as the paper writes it, one method per equation, under
autograd; sampling runs its decoder half. Training and scoring run the same recurrence through
:mod:`rnngen.models.fast.draw_bptt`, whose backward pass through time is written by hand (no
autograd graph per step, the layers regrouped into a few large GEMMs, bfloat16 GEMM operands
under autocast); tests/test_draw.py checks its values and gradients against :meth:`DRAW.unroll`.
"""


from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from rnngen.models.base import (
    IMAGE_SHAPE,
    LossTerms,
    bernoulli_nll,
    gaussian_kl,
    log_normal,
    randn,
)
from rnngen.models.latent import LatentModel, LatentPass
from rnngen.models.lstm import lstm_step

SIZE = IMAGE_SHAPE[-1]  # A = B = 28: the images are square
PIXELS = SIZE * SIZE

#: ``preset: paper`` is the paper's MNIST setting (Section 4.1, Table 3)
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "steps": 64,
        "read_n": 2,
        "write_n": 5,
        "enc_hidden": 256,
        "dec_hidden": 256,
        "z_dim": 100,
        "attention": True,
    },
}


@dataclass(frozen=True)
class DRAWConfig:
    """Defaults: the paper's layer sizes with T=16 instead of 64 steps, 4x cheaper per image so
    the default pipeline trains in minutes on a laptop CPU; ``preset: paper`` gives T=64."""

    preset: str = ""
    steps: int = 16
    read_n: int = 2
    write_n: int = 5
    enc_hidden: int = 256
    dec_hidden: int = 256
    z_dim: int = 100
    attention: bool = True
    #: c_0 at the start of training: mean (the logits of the training images' mean, so the first
    #: epochs need not spend z on the mean image and the KL term does not dip) or zero (logits 0,
    #: p = 1/2 everywhere). Measured: with attention, mean is 8.1 nats of validation NELBO better at
    #: equal epochs (docs/results.md, "DRAW's canvas and attention window")
    canvas_init: str = "mean"
    #: p(x | y): the label beside the decoder's input at every step and beside the encoder's
    #: (a per-class bias on each LSTM's gates: one-hot inputs through a linear layer), zero at first
    conditional: bool = False
    #: labels 0 .. classes - 1 (conditional only)
    classes: int = 10

    def problems(self) -> list[str]:
        out = []
        if self.classes < 1:
            out.append(f"classes: must be >= 1, got {self.classes}")
        if self.canvas_init not in ("zero", "mean"):
            out.append(f"canvas_init: expected zero or mean, got {self.canvas_init!r}")
        if self.preset and self.preset not in PRESETS:
            out.append(f"preset: unknown preset {self.preset!r}; choose one of: {', '.join(PRESETS)}")
        for key in ("steps", "read_n", "write_n", "enc_hidden", "dec_hidden", "z_dim"):
            if getattr(self, key) < 1:
                out.append(f"{key}: must be >= 1, got {getattr(self, key)}")
        for key in ("read_n", "write_n"):
            if getattr(self, key) > SIZE:
                out.append(
                    f"{key}: attention window larger than the image ({getattr(self, key)} > {SIZE} pixels);"
                    f" use at most {SIZE}"
                )
        return out



# ---------------------------------------------------------------------------------------------
# Gaussian filterbank attention (Section 3.2). F stacks F_X and F_Y: (..., 2, N, size).


def centre_offsets(n: int, size: int) -> Tensor:
    """(i - N/2 - 0.5) (max(A, B) - 1) / (N - 1) for i = 1..N: eqs. (19)-(20) and (24) with
    delta~ factored out. For N = 1 the single centre sits at g (its offset is 0), so the stride
    factor, undefined there (N - 1 = 0), is taken as 0."""
    i = torch.arange(1, n + 1, dtype=torch.float64)
    factor = (size - 1) / (n - 1) if n > 1 else 0.0
    return ((i - n / 2 - 0.5) * factor).float()


def pixel_grid(size: int, like: Tensor) -> Tensor:
    """Pixel coordinates a = 1..size: the paper's centre (A + 1) / 2 at g~ = 0 is 1-indexed."""
    return torch.arange(1, size + 1, device=like.device, dtype=like.dtype)


class Filterbank(NamedTuple):
    """A filterbank and what its backward pass (:mod:`rnngen.models.fast.draw_bptt_backward`) needs."""

    F: Tensor  # (..., 2, N, size): F_X, F_Y
    diff: Tensor  # (..., 2, N, size): a - mu^i
    sq: Tensor  # (a - mu^i)^2
    var: Tensor  # (...,): sigma^2
    stride: Tensor  # (...,): delta~
    gamma: Tensor  # (...,): intensity


def filterbank_parts(params: Tensor, offsets: Tensor, grid: Tensor) -> Filterbank:
    """:func:`filterbank` on pixel coordinates ``grid``, with the intermediates."""
    g = (grid.shape[0] + 1) / 2 * (params[..., 0:2] + 1)  # (..., 2): g_X, g_Y, eqs. (22)-(23)
    var, stride, gamma = params[..., 2:5].exp().unbind(-1)  # exp(log sigma^2): not squared again
    mu = g.unsqueeze(-1) + (offsets * stride.unsqueeze(-1)).unsqueeze(-2)  # (..., 2, N), eqs. (19)-(20)
    diff = grid - mu.unsqueeze(-1)  # (..., 2, N, size)
    sq = diff * diff
    # eqs. (25)-(26): exp(-(a - mu)^2 / (2 sigma^2)) / Z; a softmax is exactly that, and stays
    # finite when every a is far from mu (the direct formula gives 0 / 0 there)
    F = torch.softmax(sq * (-0.5 / var)[..., None, None, None], dim=-1)
    return Filterbank(F, diff, sq, var, stride, gamma)


def filterbank(params: Tensor, offsets: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Filterbanks (..., 2, N, size) holding F_X, F_Y, and gamma (...) from attention parameters
    (..., 5) = (g~X, g~Y, log sigma^2, log delta~, log gamma), eq. (21), for size x size images;
    ``offsets`` (N,) or (..., N) from :func:`centre_offsets`."""
    bank = filterbank_parts(params, offsets, pixel_grid(size, params))
    return bank.F, bank.gamma


def glimpse_products(images_t: Tensor, fx: Tensor, fy: Tensor) -> tuple[Tensor, Tensor]:
    """F_Y x_c F_X^T for each channel c, eq. (27) without gamma. images_t (B, S, C S) holds the
    channels' columns side by side; fx, fy (B, N, S). Returns the glimpses (B, N C, N) indexed
    [(j, c), i], and F_X x_c^T laid out (B, N, C S) for the backward pass."""
    xf = torch.bmm(fx, images_t)  # [j, (c, y)]
    return torch.bmm(xf.view(xf.shape[0], -1, fx.shape[2]), fy.transpose(1, 2)), xf


def read_glimpse(images: Tensor, F: Tensor, gamma: Tensor) -> Tensor:
    """eq. (27): gamma F_Y x F_X^T per channel; images (B, C, S, S), F (B, 2, N, S) -> (B, C, N, N)."""
    bsz, chans, size, _ = images.shape
    n = F.shape[2]
    glimpse, _ = glimpse_products(images.reshape(bsz, chans * size, size).transpose(1, 2), F[:, 0], F[:, 1])
    return gamma[:, None, None, None] * glimpse.view(bsz, n, chans, n).permute(0, 2, 3, 1)  # [c, i, j]


def write_patch(patch: Tensor, F: Tensor, gamma: Tensor) -> Tensor:
    """eq. (29): (1 / gamma^) F^_Y^T w F^_X; patch (B, N, N), F (B, 2, N, S) -> (B, S, S)."""
    return F[:, 1].transpose(1, 2) @ ((patch / gamma[:, None, None]) @ F[:, 0])


#: grid span (pixels) of both windows at initialisation: the middle of the image, where digits are
INIT_SPAN = 12.0


@torch.no_grad()
def _init_windows(bias: Tensor, read_n: int, write_n: int) -> None:
    """Start both windows centred, spanning :data:`INIT_SPAN` pixels, sigma = stride / 2, and the
    write at unit gain; ``bias`` (10,) is the attention layer's (read, then write parameters).

    The paper does not give an initialisation, and a zero bias is a trap: it puts the 2x2 read
    filters on the image corners (stride 27) with sigma = 1 px, where MNIST is blank, so the
    encoder sees nothing, no gradient moves the window, and the KL term drives q(z|x) to the
    prior (the model draws the mean image). Likewise the write's unit-sum filters scale a patch
    value down ~2 pi sigma^2 times per pixel, so z could barely change the canvas; 1 / gamma^ =
    2 pi sigma^2 lets a write move the logits as much as the no-attention writer's does.
    """
    for row, n, unit_gain in ((bias[:5], read_n, False), (bias[5:], write_n, True)):
        stride = INIT_SPAN / (n - 1) if n > 1 else INIT_SPAN
        var = (stride / 2) ** 2
        row[0:2] = 0.0  # g~ = 0: centre (A + 1) / 2, eqs. (22)-(23)
        row[2] = math.log(var)
        row[3] = math.log(stride * (n - 1) / (SIZE - 1)) if n > 1 else 0.0  # delta~, eq. (24)
        row[4] = -math.log(2 * math.pi * var) if unit_gain else 0.0  # log gamma^ (write), log gamma = 0 (read)


def loss_terms(x: Tensor, canvas: Tensor, mu: Tensor, logsig: Tensor) -> LossTerms:
    """The loss terms of images x (B, 1, 28, 28) from the recurrence's canvas logits c_T (B, 784)
    and mu, log sigma (T, B, z): eq. (9) and eqs. (10)-(11), with the constant -1/2 per latent
    dimension and step (not -T/2 in all)."""
    kl = gaussian_kl(mu, 2 * logsig).sum(0)
    return LossTerms(recon=bernoulli_nll(canvas, x.flatten(1)), kl=kl)


class DRAW(LatentModel):
    """DRAW with or without attention; see the module docstring."""

    name = "draw"
    config_cls = DRAWConfig
    presets = PRESETS
    hidden_fields = ("enc_hidden", "dec_hidden")

    def __init__(self, config: DRAWConfig) -> None:
        super().__init__(config)
        cfg = config
        he, hd, z = cfg.enc_hidden, cfg.dec_hidden, cfg.z_dim
        read_dim = 2 * cfg.read_n**2 if cfg.attention else 2 * PIXELS
        write_dim = cfg.write_n**2 if cfg.attention else PIXELS
        self.enc = nn.LSTMCell(read_dim + hd, he)  # eq. (5), input [r_t, h_dec_{t-1}]
        self.q = nn.Linear(he, 2 * z)  # eqs. (1)-(2): mu_t, log sigma_t
        self.dec = nn.LSTMCell(z, hd)  # eq. (7)
        self.write = nn.Linear(hd, write_dim)  # w_t of eq. (28), or the whole patch, eq. (18)
        # eq. (21): 5 read parameters, then 5 write parameters, both linear in h_dec
        self.att = nn.Linear(hd, 10) if cfg.attention else None
        if self.att is not None:
            _init_windows(self.att.bias, cfg.read_n, cfg.write_n)
        self.canvas0 = nn.Parameter(torch.zeros(PIXELS))  # learned initial states (Section 2.1)
        self.data_mean_logits = ("canvas0",) if config.canvas_init == "mean" else ()  # base.start_from_data
        self.h_enc0 = nn.Parameter(torch.zeros(he))
        self.h_dec0 = nn.Parameter(torch.zeros(hd))
        offsets = torch.zeros(2, max(cfg.read_n, cfg.write_n))  # read, write; unused slots stay 0
        offsets[0, : cfg.read_n] = centre_offsets(cfg.read_n, SIZE)
        offsets[1, : cfg.write_n] = centre_offsets(cfg.write_n, SIZE)
        self.register_buffer("offsets", offsets, persistent=False)  # (2, N)
        if cfg.conditional:  # W_y onehot(y) for the decoder's and the encoder's gates
            self.class_dec = nn.Embedding(cfg.classes, 4 * hd)
            self.class_enc = nn.Embedding(cfg.classes, 4 * he)
            nn.init.zeros_(self.class_dec.weight)
            nn.init.zeros_(self.class_enc.weight)

    def class_biases(self, y: Tensor | None, n: int) -> tuple[Tensor | None, Tensor | None]:
        """The decoder's and the encoder's gate bias for each image's class, ``(n, 4 Hd)`` and
        ``(n, 4 He)``; Nones for an unconditional model (which refuses labels)."""
        labels = self.labels(y, n)
        if labels is None:
            return None, None
        return self.class_dec(labels), self.class_enc(labels)

    # ------------------------------------------------------------- one step, eqs. (3)-(8)

    def window(self, h_dec: Tensor, which: int) -> tuple[Tensor, Tensor]:
        """eq. (21): the read (``which`` 0) or write (1) window of h_dec (B, Hd): filterbanks
        (B, 2, N, 28) holding F_X, F_Y (eqs. 19-26), and gamma (B,)."""
        n = (self.config.read_n, self.config.write_n)[which]
        params = self.att(h_dec)[:, 5 * which : 5 * which + 5]  # (B, 5)
        return filterbank(params, self.offsets[which, :n], SIZE)

    def read(self, x: Tensor, x_hat: Tensor, h_dec: Tensor) -> Tensor:
        """eq. (4): r_t from x, x_hat (B, 784) and h_dec_{t-1}: with attention the two glimpses,
        eq. (27), (B, 2 N^2); without, the images themselves, eq. (17), (B, 2 * 784)."""
        if self.att is None:
            return torch.cat([x, x_hat], 1)
        F, gamma = self.window(h_dec, 0)
        images = torch.stack([x, x_hat], 1).view(-1, 2, SIZE, SIZE)
        return read_glimpse(images, F, gamma).flatten(1)

    def encode(self, r: Tensor, h_dec: Tensor, h_enc: Tensor, c_enc: Tensor,
               bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """eq. (5): h_enc_t = RNN_enc(h_enc_{t-1}, [r_t, h_dec_{t-1}]), (B, He); ``bias`` the
        class's gate bias."""
        return lstm_step(self.enc, torch.cat([r, h_dec], 1), h_enc, c_enc, bias)

    def sample_latent(self, h_enc: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """eq. (6): z_t ~ Q(Z_t | h_enc_t) = N(mu_t, sigma_t^2) (eqs. 1-2), reparameterised with
        eps (B, z). Returns z_t, mu_t and log sigma_t."""
        mu, logsig = self.q(h_enc).chunk(2, 1)
        return mu + logsig.exp() * eps, mu, logsig

    def decode(self, z: Tensor, h_dec: Tensor, c_dec: Tensor, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """eq. (7): h_dec_t = RNN_dec(h_dec_{t-1}, z_t), (B, Hd); ``bias`` the class's gate bias."""
        return lstm_step(self.dec, z, h_dec, c_dec, bias)

    def written(self, h_dec: Tensor) -> Tensor:
        """write(h_dec_t) of eq. (8), (B, 784): with attention the patch w_t (eq. 28) through the
        write window, eq. (29); without, a linear map, eq. (18)."""
        patch = self.write(h_dec)
        if self.att is None:
            return patch
        F, gamma = self.window(h_dec, 1)
        n = self.config.write_n
        return write_patch(patch.view(-1, n, n), F, gamma).flatten(1)

    def unroll(self, x: Tensor, eps: Tensor, z: Tensor | None = None,
               y: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """eqs. (3)-(8) for T steps under autograd: images x (B, 1, 28, 28), noise eps (T, B, z)
        -> canvas logits c_T (B, 784), mu and log sigma (T, B, z). With latents ``z`` (T, B, z)
        given, each z_t is that one instead of mu_t + sigma_t eps_t (q(z | x) evaluated at z)."""
        bsz, cfg = x.shape[0], self.config
        dec_bias, enc_bias = self.class_biases(y, bsz)
        x = x.flatten(1)
        h_enc, c_enc = self.h_enc0.expand(bsz, -1), x.new_zeros(bsz, cfg.enc_hidden)
        h_dec, c_dec = self.h_dec0.expand(bsz, -1), x.new_zeros(bsz, cfg.dec_hidden)
        canvas = self.canvas0.expand(bsz, -1)
        mus, logsigs = [], []
        for t, eps_t in enumerate(eps):
            x_hat = x - torch.sigmoid(canvas)  # eq. (3)
            r = self.read(x, x_hat, h_dec)  # eq. (4)
            h_enc, c_enc = self.encode(r, h_dec, h_enc, c_enc, enc_bias)  # eq. (5)
            z_t, mu, logsig = self.sample_latent(h_enc, eps_t)  # eq. (6)
            h_dec, c_dec = self.decode(z_t if z is None else z[t], h_dec, c_dec, dec_bias)  # eq. (7)
            canvas = canvas + self.written(h_dec)  # eq. (8)
            mus.append(mu)
            logsigs.append(logsig)
        return canvas, torch.stack(mus), torch.stack(logsigs)

    # ------------------------------------------------------------------- the interface

    def _recurrence(self, x: Tensor, eps: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """What :meth:`unroll` computes, through the fast path (hand-written BPTT), in the
        weights' dtype (float32 under autocast too)."""
        from rnngen.models.fast import draw_bptt  # imported here: it builds on this module

        return draw_bptt.recurrence(self, x, eps, y)

    def _noise(self, n: int, like: Tensor, generator: torch.Generator | None) -> Tensor:
        return randn((self.config.steps, n, self.config.z_dim), like, generator)  # (T, n, z)

    def forward(self, x: Tensor, y: Tensor | None = None) -> LossTerms:
        return loss_terms(x, *self._recurrence(x, self._noise(x.shape[0], x, None), y))

    def log_weights(self, x: Tensor, k: int, generator: torch.Generator | None = None,
                    y: Tensor | None = None) -> Tensor:
        bsz = x.shape[0]
        xk = x.repeat(k, 1, 1, 1)  # (k B, 1, 28, 28): row i B + b is sample i of image b
        yk = None if y is None else self.labels(y, bsz).repeat(k)
        eps = self._noise(k * bsz, xk, generator)
        canvas, mu, logsig = self._recurrence(xk, eps, yk)
        z = mu + logsig.exp() * eps
        # sum_t log N(z_t; 0, I) - log N(z_t; mu_t, sigma_t^2); the log 2 pi terms cancel
        log_p_minus_q = (0.5 * (eps.square() - z.square()) + logsig).sum((0, 2))
        return (log_p_minus_q - bernoulli_nll(canvas, xk.flatten(1))).view(k, bsz)

    def _generate(self, eps: Tensor, keep_steps: bool, y: Tensor | None = None) -> Tensor:
        """The decoder alone, z_t = eps_t ~ N(0, I) fresh at every step (eqs. 13-15): sigmoid
        canvases (T, n, 784) when ``keep_steps``, else the last one (n, 784)."""
        n = eps.shape[1]
        dec_bias = self.class_biases(y, n)[0]
        h_dec, c_dec = self.h_dec0.expand(n, -1), eps.new_zeros(n, self.config.dec_hidden)
        canvas = self.canvas0.expand(n, -1)
        frames = []
        for z in eps:
            h_dec, c_dec = self.decode(z, h_dec, c_dec, dec_bias)  # eq. (14)
            canvas = canvas + self.written(h_dec)  # eq. (15)
            if keep_steps:
                frames.append(torch.sigmoid(canvas))
        return torch.stack(frames) if keep_steps else torch.sigmoid(canvas)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0,
               y: Tensor | None = None) -> Tensor:
        eps = temperature * self._noise(n, self.canvas0, generator)  # z_t ~ N(0, temperature^2 I)
        return self._generate(eps, keep_steps=False, y=y).view(n, *IMAGE_SHAPE)

    @torch.no_grad()
    def sample_steps(self, n: int, generator: torch.Generator | None = None, y: Tensor | None = None) -> Tensor:
        eps = self._noise(n, self.canvas0, generator)
        return self._generate(eps, keep_steps=True, y=y).view(self.config.steps, n, *IMAGE_SHAPE)

    def latent_mean(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """(B, T, z): z_t = mu_t, the mean of q(z_t | x, z_<t) with the earlier latents at their means."""
        zeros = x.new_zeros(self.config.steps, x.shape[0], self.config.z_dim)
        return self.unroll(x, zeros, y=y)[1].transpose(0, 1)

    def decode_latent(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return self._generate(z.transpose(0, 1), keep_steps=False, y=y).view(-1, *IMAGE_SHAPE)

    def latent_pass(self, x: Tensor, z: Tensor | None = None, generator: torch.Generator | None = None,
                    y: Tensor | None = None) -> LatentPass:
        """z = (z_1 .. z_T) as ``(B, T, z)``; log q(z | x) = sum_t log N(z_t; mu_t, sigma_t^2)."""
        given = None if z is None else z.transpose(0, 1)
        eps = self._noise(x.shape[0], x, generator) if given is None else torch.zeros_like(given)
        canvas, mu, logsig = self.unroll(x, eps, given, y)
        z_steps = mu + logsig.exp() * eps if given is None else given  # (T, B, z)
        log_q = log_normal(z_steps, mu, 2 * logsig).sum(0)
        return LatentPass(z_steps.transpose(0, 1), canvas.view(-1, *IMAGE_SHAPE), log_q)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, generator: torch.Generator | None = None, y: Tensor | None = None) -> Tensor:
        canvas, _, _ = self._recurrence(x, self._noise(x.shape[0], x, generator), y)
        return torch.sigmoid(canvas).view(-1, *IMAGE_SHAPE)
