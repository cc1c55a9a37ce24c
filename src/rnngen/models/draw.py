"""DRAW: Deep Recurrent Attentive Writer (Gregor et al., 2015, arXiv:1502.04623).

An encoder LSTM reads the image and the error of the current canvas through a Gaussian
attention window; a latent z_t ~ q(z_t | h_enc_t) is drawn at each of T steps; a decoder LSTM
writes a patch onto the canvas c_t; p(x | z_1:T) is Bernoulli with logits c_T. Equation numbers
in the comments are the paper's. Initial states c_0, h_enc_0, h_dec_0 are learned biases
(Section 2.1); LSTM cell states start at zero.

Speed. Training runs the T-step loop through :class:`_Recurrence`, whose backward pass (BPTT)
is written by hand: no autograd graph is recorded per step, gradients go into preallocated
rows, and each weight gradient is a few large GEMMs over chunks of steps instead of T small ones.
Everything linear in h_dec_t (decoder recurrence, the encoder's h_dec input, the write patch,
both attention windows) is one GEMM, and everything linear in h_enc_t (q(z_t) and the encoder
recurrence) another; the read window of step t+1 and the write window of step t both come from
h_dec_t, so their filterbanks are built in one batched call. tanh is computed as
2 sigmoid(2u) - 1, about twice as fast as ``torch.tanh`` on CPU. Under bfloat16 autocast the
GEMMs (per step and the weight gradients) take bfloat16 operands, 3-4x faster than float32 on an
AVX512-BF16 CPU, while cell states, canvas, attention and gradients stay float32. tests/test_draw.py
checks the forward pass against the plain step-by-step implementation of the equations with
nn.LSTMCell (:mod:`rnngen.models.draw_reference`), every gradient against autograd through it, and
the bfloat16 path against it within measured tolerances.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from rnngen.models.base import IMAGE_SHAPE, GenerativeModel, LossTerms, bernoulli_nll, gaussian_kl, randn
from rnngen.models.lstm import cell, cell_backward

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
    #: p = 1/2 everywhere). Measured: mean is 8 nats better for attention at equal epochs
    #: (README, "DRAW with attention")
    canvas_init: str = "mean"

    def problems(self) -> list[str]:
        out = []
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


class _Bank(NamedTuple):
    """A filterbank and what its backward pass needs."""

    F: Tensor  # (..., 2, N, size): F_X, F_Y
    diff: Tensor  # (..., 2, N, size): a - mu^i
    sq: Tensor  # (a - mu^i)^2
    var: Tensor  # (...,): sigma^2
    stride: Tensor  # (...,): delta~
    gamma: Tensor  # (...,): intensity


def _bank(params: Tensor, offsets: Tensor, grid: Tensor) -> _Bank:
    g = (grid.shape[0] + 1) / 2 * (params[..., 0:2] + 1)  # (..., 2): g_X, g_Y, eqs. (22)-(23)
    var, stride, gamma = params[..., 2:5].exp().unbind(-1)  # exp(log sigma^2): not squared again
    mu = g.unsqueeze(-1) + (offsets * stride.unsqueeze(-1)).unsqueeze(-2)  # (..., 2, N), eqs. (19)-(20)
    diff = grid - mu.unsqueeze(-1)  # (..., 2, N, size)
    sq = diff * diff
    # eqs. (25)-(26): exp(-(a - mu)^2 / (2 sigma^2)) / Z; a softmax is exactly that, and stays
    # finite when every a is far from mu (the direct formula gives 0 / 0 there)
    F = torch.softmax(sq * (-0.5 / var)[..., None, None, None], dim=-1)
    return _Bank(F, diff, sq, var, stride, gamma)


def filterbank(params: Tensor, offsets: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Filterbanks (..., 2, N, size) holding F_X, F_Y, and gamma (...) from attention parameters
    (..., 5) = (g~X, g~Y, log sigma^2, log delta~, log gamma), eq. (21), for size x size images;
    ``offsets`` (N,) or (..., N) from :func:`centre_offsets`."""
    bank = _bank(params, offsets, pixel_grid(size, params))
    return bank.F, bank.gamma


def _filterbank_backward(dF: Tensor, dlog_gamma: Tensor, bank: _Bank, offsets: Tensor) -> Tensor:
    """Gradient of :func:`_bank` w.r.t. its params (..., 5) given dF and d log gamma."""
    F, size = bank.F, bank.F.shape[-1]
    dlogits = F * (dF - (dF * F).sum(-1, keepdim=True))  # softmax backward
    inv_var = bank.var.reciprocal()
    # logits = -(a - mu)^2 / (2 var): d/dmu = (a - mu) / var, d/dlog var = (a - mu)^2 / (2 var)
    dmu = (dlogits * bank.diff).sum(-1) * inv_var[..., None, None]  # (..., 2, N)
    dlog_var = (dlogits * bank.sq).sum((-1, -2, -3)) * (0.5 * inv_var)
    dlog_stride = (dmu * offsets.unsqueeze(-2)).sum((-1, -2)) * bank.stride
    dg_tilde = dmu.sum(-1) * ((size + 1) / 2)  # (..., 2)
    return torch.cat([dg_tilde, torch.stack([dlog_var, dlog_stride, dlog_gamma], -1)], -1)


def _read(images_t: Tensor, fx: Tensor, fy: Tensor) -> tuple[Tensor, Tensor]:
    """F_Y x_c F_X^T for each channel c, eq. (27) without gamma. images_t (B, S, C S) holds the
    channels' columns side by side; fx, fy (B, N, S). Returns the glimpses (B, N C, N) indexed
    [(j, c), i], and F_X x_c^T laid out (B, N, C S) for the backward pass."""
    xf = torch.bmm(fx, images_t)  # [j, (c, y)]
    return torch.bmm(xf.view(xf.shape[0], -1, fx.shape[2]), fy.transpose(1, 2)), xf


def _glimpse_order(n: int, chans: int = 2) -> Tensor:
    """Position in [c, i, j] order of each entry of :func:`_read`'s [(j, c), i] order."""
    j, c, i = torch.meshgrid(torch.arange(n), torch.arange(chans), torch.arange(n), indexing="ij")
    return ((c * n + i) * n + j).flatten()


def read_glimpse(images: Tensor, F: Tensor, gamma: Tensor) -> Tensor:
    """eq. (27): gamma F_Y x F_X^T per channel; images (B, C, S, S), F (B, 2, N, S) -> (B, C, N, N)."""
    bsz, chans, size, _ = images.shape
    n = F.shape[2]
    glimpse, _ = _read(images.reshape(bsz, chans * size, size).transpose(1, 2), F[:, 0], F[:, 1])
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


# ---------------------------------------------------------------------------------------------
# The T-step recurrence


class _Spec(NamedTuple):
    steps: int
    attention: bool
    read_n: int
    write_n: int
    enc_hidden: int
    dec_hidden: int
    z_dim: int
    read_dim: int
    write_dim: int
    #: dtype of the big GEMMs' operands, None for the weights' own; bfloat16 under autocast
    gemm_dtype: torch.dtype | None = None

    @property
    def dec_splits(self) -> list[int]:
        """Columns of the h_dec GEMM: decoder gates, encoder gates, write patch[, attention]."""
        return [4 * self.dec_hidden, 4 * self.enc_hidden, self.write_dim] + ([10] if self.attention else [])

    @property
    def enc_splits(self) -> list[int]:
        """Columns of the h_enc GEMM: mu, log sigma, encoder gates."""
        return [self.z_dim, self.z_dim, 4 * self.enc_hidden]


class _Weights(NamedTuple):
    canvas0: Tensor  # (784,)
    h_enc0: Tensor  # (He,)
    h_dec0: Tensor  # (Hd,)
    w_dec: Tensor  # (Hd, dec_splits) applied to h_dec_t
    b_dec: Tensor
    w_enc: Tensor  # (He, enc_splits) applied to h_enc_t
    b_enc: Tensor
    w_read: Tensor  # (read_dim, 4 He): the encoder's r_t input
    w_z: Tensor  # (z, 4 Hd): the decoder's z_t input


class _Windows(NamedTuple):
    """Views of one bank (from h_dec_t): read window of step t+1, write window of step t."""

    read_x: Tensor  # (B, Nr, S)
    read_y: Tensor
    read_gamma: Tensor  # (B, 1, 1)
    write_x: Tensor  # (B, Nw, S)
    write_y: Tensor
    write_gamma: Tensor  # (B, 1, 1)


def _windows(bank: _Bank, nr: int, nw: int) -> _Windows:
    bsz, _, _, n, size = bank.F.shape
    rx, ry, wx, wy = bank.F.view(bsz, 4, n, size).unbind(1)
    gr, gw = bank.gamma.view(bsz, 2, 1, 1).unbind(1)
    if nr < n:
        rx, ry = rx[:, :nr], ry[:, :nr]
    if nw < n:
        wx, wy = wx[:, :nw], wy[:, :nw]
    return _Windows(rx, ry, gr, wx, wy, gw)


# The GEMM helpers. In the fp32 (or fp64) path the weights and activations share one dtype and
# each helper is exactly the plain torch op. With ``gemm_dtype`` bfloat16 (autocast) the weights
# come cast once per forward and each activation operand is cast where it is used: the product
# (fp32 accumulation inside, rounded to bfloat16, as autocast's) is added in float32, so cell
# states, canvas, filterbanks, mu / log sigma and all gradients stay float32. (CPU PyTorch has no
# bfloat16 x bfloat16 -> float32 matmul.)


def _gemm_weights(w: _Weights, dtype: torch.dtype | None) -> _Weights:
    """``w`` with the four GEMM matrices in ``dtype`` (the same tensors when None)."""
    if dtype is None or dtype == w.w_dec.dtype:
        return w
    return w._replace(**{k: getattr(w, k).to(dtype) for k in ("w_dec", "w_enc", "w_read", "w_z")})


def _addmm(bias: Tensor, a: Tensor, mat: Tensor) -> Tensor:
    """bias + a @ mat, in bias's dtype; ``a`` already in mat's dtype."""
    return torch.addmm(bias, a, mat) if a.dtype == bias.dtype else torch.add(bias, a @ mat)


def _addmm_(out: Tensor, a: Tensor, mat: Tensor) -> Tensor:
    """out += a @ mat in place; ``a`` already in mat's dtype."""
    return out.addmm_(a, mat) if a.dtype == out.dtype else out.add_(a @ mat)


def _mm(a: Tensor, mat: Tensor, dtype: torch.dtype) -> Tensor:
    """a @ mat in ``dtype`` (a no-op cast in the one-dtype path); ``a`` already in mat's dtype."""
    return (a @ mat).to(dtype)


_SAVED = ("sig", "r", "xf", "lstm_e", "h_enc", "sigma", "z", "lstm_d", "h_dec", "bank", "win", "u", "uf")


def _run(x: Tensor, eps: Tensor, w: _Weights, spec: _Spec, offsets: Tensor, keep: bool) -> tuple:
    """Encoder + decoder over T steps with z_t = mu_t + sigma_t eps_t (eqs. 3-8).

    x (B, 784), eps (T, B, z). Returns canvas logits c_T (B, 784), mu and log sigma (T, B, z),
    and (when ``keep``) the per-step tensors the backward pass needs, by name, with the GEMM
    weights under "weights". h_enc, z and h_dec are saved as the GEMMs took them (bfloat16 with
    ``spec.gemm_dtype``): the backward uses them only as GEMM operands.
    """
    bsz, nr, nw, att = x.shape[0], spec.read_n, spec.write_n, spec.attention
    dec_splits, enc_splits = spec.dec_splits, spec.enc_splits
    w = _gemm_weights(w, spec.gemm_dtype)
    low = w.w_dec.dtype  # the GEMM operands' dtype
    grid = pixel_grid(SIZE, x)
    # step 0: h_dec_0 and h_enc_0 are learned, the same for every image
    h_dec, h_enc = w.h_dec0.expand(bsz, -1).to(low), w.h_enc0.expand(bsz, -1).to(low)
    dec_gates, enc_gates, patch, *att_params = _addmm(w.b_dec, h_dec, w.w_dec).split(dec_splits, 1)
    enc_rec = _addmm(w.b_enc, h_enc, w.w_enc)[:, 2 * spec.z_dim :]
    c_enc, c_dec = x.new_zeros(bsz, spec.enc_hidden), x.new_zeros(bsz, spec.dec_hidden)
    canvas = w.canvas0.expand(bsz, -1).clone()
    canvas_2d = canvas.view(bsz, SIZE, SIZE)
    images = torch.stack([x, x], 1)  # (B, 2, 784): [x, x_hat]
    x_hat, pair_t = images[:, 1], images.view(bsz, 2 * SIZE, SIZE).transpose(1, 2)  # pair_t: (B, S, 2 S)
    bank = win = None
    if att:  # the read window of step 1
        bank = _bank(att_params[0].view(bsz, 2, 5), offsets, grid)
        win = _windows(bank, nr, nw)
    x_gates = None if att else _mm(x.to(low), w.w_read[:PIXELS], x.dtype)  # eq. (17): read(x) is the same every step
    saved: dict[str, Any] = {k: [] for k in _SAVED}
    saved["weights"] = w
    for key, value in (("h_enc", h_enc), ("h_dec", h_dec), ("bank", bank), ("win", win)):
        saved[key].append(value)
    mus, logsigs = [], []
    for t in range(spec.steps):
        s = torch.sigmoid(canvas)  # (B, 784)
        torch.sub(x, s, out=x_hat)  # eq. (3)
        enc_in = enc_gates + enc_rec  # (B, 4 He): h_dec_{t-1} and h_enc_{t-1} terms of eq. (5)
        if att:  # eq. (27): r_t = gamma [F_Y x F_X^T, F_Y x_hat F_X^T]
            glimpse, xf = _read(pair_t, win.read_x, win.read_y)  # (B, 2 Nr, Nr), (B, Nr, 2 S)
            r = (glimpse * win.read_gamma).view(bsz, -1)  # (B, 2 Nr^2), the order of w_read's rows
            _addmm_(enc_in, r.to(low), w.w_read)
        else:  # eq. (17): r_t = [x, x_hat]
            r, xf = x_hat.clone() if keep else None, None
            _addmm_(enc_in.add_(x_gates), x_hat.to(low), w.w_read[PIXELS:])
        h_enc, c_enc, lstm_e = cell(enc_in, c_enc, low)  # eq. (5): h_enc_t, (B, He)
        mu, logsig, enc_rec = _addmm(w.b_enc, h_enc, w.w_enc).split(enc_splits, 1)  # eqs. (1)-(2)
        sigma = logsig.exp()
        z = torch.addcmul(mu, sigma, eps[t]).to(low)  # eq. (6), reparameterised, (B, z)
        h_dec, c_dec, lstm_d = cell(_addmm(dec_gates, z, w.w_z), c_dec, low)  # eq. (7), (B, Hd)
        dec_gates, enc_gates, patch, *att_params = _addmm(w.b_dec, h_dec, w.w_dec).split(dec_splits, 1)
        u = uf = None
        if att:  # eq. (29); the same h_dec_t gives the read window of step t+1 (eq. 21)
            bank = _bank(att_params[0].view(bsz, 2, 5), offsets, grid)
            win = _windows(bank, nr, nw)
            u = patch.view(bsz, nw, nw) / win.write_gamma  # (B, Nw, Nw)
            uf = torch.bmm(u, win.write_x)  # (B, Nw, S)
            canvas_2d.baddbmm_(win.write_y.transpose(1, 2), uf)  # eq. (8)
        else:
            canvas += patch  # eq. (8), write = W(h_dec_t) (eq. 18)
        mus.append(mu)
        logsigs.append(logsig)
        if keep:
            for key, value in zip(_SAVED, (s, r, xf, lstm_e, h_enc, sigma, z, lstm_d, h_dec, bank, win, u, uf),
                                  strict=True):
                saved[key].append(value)
    return canvas, torch.stack(mus), torch.stack(logsigs), saved


class _Recurrence(torch.autograd.Function):
    """:func:`_run` with a hand-written backward pass through time (:func:`_backward`)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, eps: Tensor, offsets: Tensor, spec: _Spec, *weights: Tensor) -> tuple:
        canvas, mu, logsig, saved = _run(x, eps, _Weights(*weights), spec, offsets, keep=True)
        ctx.spec, ctx.saved = spec, saved
        ctx.save_for_backward(x, eps, offsets, *weights)
        return canvas, mu, logsig

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, d_canvas: Tensor, d_mu: Tensor, d_logsig: Tensor) -> tuple:
        x, eps, offsets, *weights = ctx.saved_tensors
        # a backward() called inside the autocast block runs here with autocast on
        with torch.autocast(x.device.type, enabled=False):
            dx, *d_weights = _backward(x, eps, offsets, _Weights(*weights), ctx.spec, ctx.saved,
                                       (d_canvas, d_mu, d_logsig), ctx.needs_input_grad[0])
        ctx.saved = None
        return dx, None, None, None, *d_weights


_CHUNK_BYTES = 8 << 20


def _grad_rows(steps: int, bsz: int, widths: list[int], like: Tensor) -> tuple[list[Tensor], list, list]:
    """Gradient rows (B, sum(widths)) for steps 0..steps-1, allocated in chunks of about 8 MB:
    glibc serves larger blocks from fresh pages, which would fault on every training step.
    Returns the chunks, the per-step rows and, per column block, its per-step views."""
    width = sum(widths)
    per = max(1, _CHUNK_BYTES // (bsz * width * like.element_size()))
    chunks = [like.new_empty(min(per, steps - s), bsz, width) for s in range(0, steps, per)]
    rows = [row for c in chunks for row in c.unbind(0)]
    blocks: list[list[Tensor]] = [[] for _ in widths]
    for c in chunks:
        for views, block in zip(blocks, c.split(widths, 2), strict=True):
            views.extend(block.unbind(0))
    return chunks, rows, blocks


def _gemm_rows(chunks: list[Tensor], rows: list[Tensor], dtype: torch.dtype) -> tuple[list[Tensor], list[Tensor]]:
    """The gradient rows as GEMM operands: the same chunks in the one-dtype path, else a copy in
    ``dtype`` laid out alike, each row filled (:func:`_as_operand`) once it is final."""
    if dtype == chunks[0].dtype:
        return chunks, rows
    low = [torch.empty_like(c, dtype=dtype) for c in chunks]
    return low, [row for c in low for row in c.unbind(0)]


def _as_operand(low_row: Tensor, row: Tensor) -> Tensor:
    """``row`` cast into its operand copy ``low_row`` (nothing to do when they are one tensor)."""
    return low_row if low_row is row else low_row.copy_(row)


def _weight_grad(inputs: Tensor, chunks: list[Tensor], cols: slice = slice(None),
                 dtype: torch.dtype | None = None) -> Tensor:
    """sum_t inputs[t]^T grad[t] over the n = len(inputs) first steps of the chunked gradient
    rows: one GEMM per chunk, over about a thousand rows, instead of one per step. Returned in
    ``dtype`` (default the chunks'); with bfloat16 operands each chunk's product is rounded to
    bfloat16 and the sum over chunks is taken in ``dtype``."""
    dtype = dtype or chunks[0].dtype
    out, start = None, 0
    for chunk in chunks:
        grad = chunk[: inputs.shape[0] - start, :, cols]
        if grad.shape[0] == 0:
            break
        rows, grad_rows = inputs[start : start + grad.shape[0]].flatten(0, 1).t(), grad.flatten(0, 1)
        if out is None:
            out = (rows @ grad_rows).to(dtype)
        elif rows.dtype == dtype:
            out.addmm_(rows, grad_rows)
        else:
            out.add_(rows @ grad_rows)
        start += grad.shape[0]
    return out


def _backward(x: Tensor, eps: Tensor, offsets: Tensor, w: _Weights, spec: _Spec, saved: dict,
              d_out: tuple[Tensor, Tensor, Tensor], need_dx: bool) -> tuple:
    """Backpropagation through time for :func:`_run`: the gradients of x and of every weight.

    Row t of ``dec_rows`` is the gradient w.r.t. the output of the h_dec_t GEMM (t = 0..T): its
    decoder and encoder gate blocks are written while processing step t+1, its write and
    attention blocks while processing step t. ``enc_rows`` likewise for the h_enc_t GEMM. Both
    are float32 (the bias gradients sum them); ``dec_ops`` / ``enc_ops`` are their copies in the
    GEMM dtype (the same tensors in the one-dtype path), filled as each row becomes final.
    """
    T, bsz, nr, nw, att = spec.steps, x.shape[0], spec.read_n, spec.write_n, spec.attention
    d_canvas, d_mu, d_logsig = d_out
    lw = saved["weights"]  # w's GEMM matrices in the GEMM dtype
    low, dtype = lw.w_dec.dtype, x.dtype
    dec_chunks, dec_rows, (d_dec_gates, d_enc_gates, d_patch, *d_att) = _grad_rows(T + 1, bsz, spec.dec_splits, x)
    enc_chunks, enc_rows, (d_mu_rows, d_logsig_rows, d_enc_rec) = _grad_rows(T + 1, bsz, spec.enc_splits, x)
    (dec_op_chunks, dec_ops), (enc_op_chunks, enc_ops) = (
        _gemm_rows(dec_chunks, dec_rows, low), _gemm_rows(enc_chunks, enc_rows, low))
    for block in (d_dec_gates[T], d_enc_gates[T], d_patch[0], d_enc_rec[T], d_mu_rows[0], d_logsig_rows[0]):
        block.zero_()  # nothing follows step T; nothing is written at step 0
    w_dec_t, w_enc_t, w_z_t, w_read_t = lw.w_dec.t(), lw.w_enc.t(), lw.w_z.t(), lw.w_read.t()
    sig, r, xf, lstm_e, sigma, lstm_d, banks, wins, u, uf = (
        saved[k] for k in ("sig", "r", "xf", "lstm_e", "sigma", "lstm_d", "bank", "win", "u", "uf"))
    dcan = d_canvas.clone()  # (B, 784): gradient w.r.t. c_t
    dcan_2d = dcan.view(bsz, SIZE, SIZE)
    dc_dec, dc_enc = x.new_zeros(bsz, spec.dec_hidden), x.new_zeros(bsz, spec.enc_hidden)
    dx = x.new_zeros(bsz, PIXELS) if need_dx else None
    images = torch.stack([x, x], 1)
    x_hat, pair = images[:, 1], images.view(bsz, 2 * SIZE, SIZE)
    if att:  # gradients w.r.t. one bank: read window of step t+1 and write window of step t
        dF = torch.zeros_like(banks[0].F)  # read slots past N_r stay 0
        (dF_rx, dF_ry), (dF_wx, dF_wy) = (f.unbind(1) for f in dF.unbind(1))
        dF_rx, dF_ry, dF_wx, dF_wy = dF_rx[:, :nr], dF_ry[:, :nr], dF_wx[:, :nw], dF_wy[:, :nw]
        dlog_gamma_read = x.new_zeros(bsz)  # nothing reads after step T
    for t in range(T, 0, -1):
        i = t - 1  # this step's index in the saved lists
        if att:  # eq. (29): c_t += F_Y^T u F_X with u = w_t / gamma
            win = wins[t]
            duf = torch.bmm(win.write_y, dcan_2d)  # (B, Nw, S)
            du = torch.bmm(duf, win.write_x.transpose(1, 2))  # (B, Nw, Nw)
            dF_wx.copy_(torch.bmm(u[i].transpose(1, 2), duf))
            dF_wy.copy_(torch.bmm(uf[i], dcan_2d.transpose(1, 2)))
            torch.div(du.view(bsz, -1), win.write_gamma.view(bsz, 1), out=d_patch[t])
            dlog_gamma = torch.stack([dlog_gamma_read, (du * u[i]).sum((1, 2)).neg_()], 1)
            d_att[0][t].copy_(_filterbank_backward(dF, dlog_gamma, banks[t], offsets).view(bsz, 10))
        else:  # eq. (18)
            d_patch[t].copy_(dcan)
        # decoder, eq. (7); z_t = mu_t + sigma_t eps_t, eq. (6)
        dh_dec = _mm(_as_operand(dec_ops[t], dec_rows[t]), w_dec_t, dtype)
        dc_dec = cell_backward(dh_dec, dc_dec, lstm_d[i], out=d_dec_gates[i])
        dz = _mm(d_dec_gates[i].to(low), w_z_t, dtype)
        torch.add(dz, d_mu[i], out=d_mu_rows[t])
        torch.addcmul(d_logsig[i], dz, eps[i] * sigma[i], out=d_logsig_rows[t])
        # encoder, eq. (5): its gate gradient is that of h_dec_{t-1}'s and h_enc_{t-1}'s GEMMs too
        dh_enc = _mm(_as_operand(enc_ops[t], enc_rows[t]), w_enc_t, dtype)
        dc_enc = cell_backward(dh_enc, dc_enc, lstm_e[i], out=d_enc_gates[i])
        d_enc_rec[i].copy_(d_enc_gates[i])
        d_enc_op = d_enc_gates[i].to(low)
        # read, eq. (27) or (17); x_hat = x - sigmoid(c_{t-1}), eq. (3)
        s = sig[i]
        if att:
            win = wins[i]
            dr = _mm(d_enc_op, w_read_t, dtype)  # (B, 2 Nr^2)
            dglimpse = dr.view(bsz, 2 * nr, nr) * win.read_gamma  # [(j, c), i]
            dxf = torch.bmm(dglimpse, win.read_y).view(bsz, nr, 2 * SIZE)  # [j, (c, y)]
            dF_ry.copy_(torch.bmm(dglimpse.transpose(1, 2), xf[i].view(bsz, 2 * nr, SIZE)))
            torch.sub(x, s, out=x_hat)
            dF_rx.copy_(torch.bmm(dxf, pair))
            dlog_gamma_read = (dr * r[i]).sum(1)
            if need_dx:
                dimages = torch.bmm(dxf.transpose(1, 2), win.read_x).view(bsz, 2, PIXELS)
                dx += dimages.sum(1)
                dx_hat = dimages[:, 1]
            else:
                dx_hat = torch.bmm(dxf[:, :, SIZE:].transpose(1, 2), win.read_x).view(bsz, PIXELS)
        else:
            dx_hat = _mm(d_enc_op, w_read_t[:, PIXELS:], dtype)
            if need_dx:
                dx += dx_hat
        dcan.addcmul_(dx_hat, torch.addcmul(s, s, s, value=-1), value=-1)  # sigmoid' = s (1 - s)
    if att:  # step 0's bank only gave step 1 its read window
        dF[:, 1].zero_()
        dlog_gamma = torch.stack([dlog_gamma_read, torch.zeros_like(dlog_gamma_read)], 1)
        d_att[0][0].copy_(_filterbank_backward(dF, dlog_gamma, banks[0], offsets).view(bsz, 10))
    _as_operand(dec_ops[0], dec_rows[0])
    _as_operand(enc_ops[0], enc_rows[0])
    # weight gradients: one GEMM per chunk of steps; row t holds step t+1's gate gradients
    dec_cols, enc_cols = slice(0, spec.dec_splits[0]), slice(spec.dec_splits[0], sum(spec.dec_splits[:2]))
    d_w_read = _weight_grad(torch.stack(r).to(low), dec_op_chunks, enc_cols, dtype)
    if not att:
        d_enc_sum = torch.stack(d_enc_gates[:T]).sum(0)  # (B, 4 He): read(x) = x, eq. (17)
        d_w_read = torch.cat([x.t() @ d_enc_sum, d_w_read])
        if need_dx:
            dx += d_enc_sum @ w.w_read.t()[:, :PIXELS]
    return (
        dx,
        dcan.sum(0),
        enc_rows[0].sum(0) @ w.w_enc.t(),  # h_enc_0 and h_dec_0 are shared by every image
        dec_rows[0].sum(0) @ w.w_dec.t(),
        _weight_grad(torch.stack(saved["h_dec"]), dec_op_chunks, dtype=dtype),
        sum(c.sum((0, 1)) for c in dec_chunks),
        _weight_grad(torch.stack(saved["h_enc"]), enc_op_chunks, dtype=dtype),
        sum(c.sum((0, 1)) for c in enc_chunks),
        d_w_read,
        _weight_grad(torch.stack(saved["z"]), dec_op_chunks, dec_cols, dtype),
    )


# ---------------------------------------------------------------------------------------------


def loss_terms(x: Tensor, canvas: Tensor, mu: Tensor, logsig: Tensor) -> LossTerms:
    """The loss terms of images x (B, 1, 28, 28) from the recurrence's canvas logits c_T (B, 784)
    and mu, log sigma (T, B, z): eq. (9) and eqs. (10)-(11), with the constant -1/2 per latent
    dimension and step (not -T/2 in all)."""
    kl = gaussian_kl(mu, 2 * logsig).sum(0)
    return LossTerms(recon=bernoulli_nll(canvas, x.flatten(1)), kl=kl)


class DRAW(GenerativeModel):
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
        self.spec = _Spec(cfg.steps, cfg.attention, cfg.read_n, cfg.write_n, he, hd, z, read_dim, write_dim)
        self.enc = nn.LSTMCell(read_dim + hd, he)  # eq. (5), input [r_t, h_dec_{t-1}]
        self.q = nn.Linear(he, 2 * z)  # eqs. (1)-(2): mu_t, log sigma_t
        self.dec = nn.LSTMCell(z, hd)  # eq. (7)
        self.write = nn.Linear(hd, write_dim)  # w_t of eq. (28), or the whole patch, eq. (18)
        # eq. (21): 5 read parameters, then 5 write parameters, both linear in h_dec
        self.att = nn.Linear(hd, 10) if cfg.attention else None
        if self.att is not None:
            _init_windows(self.att.bias, cfg.read_n, cfg.write_n)
        self.canvas0 = nn.Parameter(torch.zeros(PIXELS))  # learned initial states (Section 2.1)
        self.h_enc0 = nn.Parameter(torch.zeros(he))
        self.h_dec0 = nn.Parameter(torch.zeros(hd))
        offsets = torch.zeros(2, max(cfg.read_n, cfg.write_n))  # read, write; unused slots stay 0
        offsets[0, : cfg.read_n] = centre_offsets(cfg.read_n, SIZE)
        offsets[1, : cfg.write_n] = centre_offsets(cfg.write_n, SIZE)
        self.register_buffer("offsets", offsets, persistent=False)  # (2, N)
        # the recurrence reads glimpses in another order than r_t = [read(x), read(x_hat)]
        order = _glimpse_order(cfg.read_n) if cfg.attention else None
        self.register_buffer("read_order", order, persistent=False)

    @torch.no_grad()
    def init_from_data(self, mean: Tensor) -> None:
        if self.config.canvas_init == "mean":  # sigmoid(c_0) = the mean image; clamped: no infinite logit
            self.canvas0.copy_(torch.logit(mean.flatten().clamp(1e-3, 1 - 1e-3)))

    def _weights(self) -> _Weights:
        """The paper's layers regrouped by the state they read (see the module docstring)."""
        he, read_dim = self.config.enc_hidden, self.spec.read_dim
        w_dec = [self.dec.weight_hh, self.enc.weight_ih[:, read_dim:], self.write.weight]
        b_dec = [self.dec.bias_ih + self.dec.bias_hh, self.enc.bias_ih + self.enc.bias_hh, self.write.bias]
        if self.att is not None:
            w_dec.append(self.att.weight)
            b_dec.append(self.att.bias)
        return _Weights(
            canvas0=self.canvas0,
            h_enc0=self.h_enc0,
            h_dec0=self.h_dec0,
            w_dec=torch.cat(w_dec).t(),
            b_dec=torch.cat(b_dec),
            w_enc=torch.cat([self.q.weight, self.enc.weight_hh]).t(),
            b_enc=torch.cat([self.q.bias, self.q.bias.new_zeros(4 * he)]),
            w_read=(self.enc.weight_ih[:, :read_dim] if self.read_order is None
                    else self.enc.weight_ih[:, self.read_order]).t(),
            w_z=self.dec.weight_ih.t(),
        )

    def _recurrence(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """c_T logits (B, 784), mu and log sigma (T, B, z) for images x and noise eps (T, B, z),
        in the weights' dtype (float32 under autocast too)."""
        # The hand-written recurrence runs with autocast off: its in-place updates and hand-made
        # backward pick their dtypes themselves. Under bfloat16 autocast (float32 weights) its big
        # GEMMs take bfloat16 operands, 2-4x faster on CPU; the cell states and the canvas, summed
        # over T steps, and everything else stay float32. (With train.amp on CUDA, fit also allows
        # TF32 for what stays float32.)
        kind = x.device.type
        low = torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind) == torch.bfloat16
        with torch.autocast(kind, enabled=False):
            w = self._weights()
            spec = self.spec
            if low and w.w_dec.dtype == torch.float32:
                spec = spec._replace(gemm_dtype=torch.bfloat16)
            x, eps = x.reshape(x.shape[0], PIXELS).to(w.w_dec.dtype), eps.to(w.w_dec.dtype)
            if torch.is_grad_enabled() and (x.requires_grad or w.w_dec.requires_grad):
                return _Recurrence.apply(x, eps, self.offsets, spec, *w)
            return _run(x, eps, w, spec, self.offsets, keep=False)[:3]

    def _noise(self, n: int, like: Tensor, generator: torch.Generator | None) -> Tensor:
        return randn((self.config.steps, n, self.config.z_dim), like, generator)  # (T, n, z)

    def forward(self, x: Tensor) -> LossTerms:
        return loss_terms(x, *self._recurrence(x, self._noise(x.shape[0], x, None)))

    def log_weights(self, x: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
        bsz = x.shape[0]
        xk = x.repeat(k, 1, 1, 1)  # (k B, 1, 28, 28): row i B + b is sample i of image b
        eps = self._noise(k * bsz, xk, generator)
        canvas, mu, logsig = self._recurrence(xk, eps)
        z = mu + logsig.exp() * eps
        # sum_t log N(z_t; 0, I) - log N(z_t; mu_t, sigma_t^2); the log 2 pi terms cancel
        log_p_minus_q = (0.5 * (eps.square() - z.square()) + logsig).sum((0, 2))
        return (log_p_minus_q - bernoulli_nll(canvas, xk.flatten(1))).view(k, bsz)

    def _generate(self, eps: Tensor, keep_steps: bool) -> Tensor:
        """The decoder alone, z_t = eps_t ~ N(0, I) fresh at every step (eqs. 13-15): sigmoid
        canvases (T, n, 784) when ``keep_steps``, else the last one (n, 784)."""
        spec, w = self.spec, self._weights()
        n = eps.shape[1]
        from_dec = torch.addmm(w.b_dec, w.h_dec0[None], w.w_dec).expand(n, -1)
        c_dec = eps.new_zeros(n, spec.dec_hidden)
        canvas = w.canvas0.expand(n, -1).clone()
        start = 4 * (spec.dec_hidden + spec.enc_hidden)
        frames = []
        for t in range(spec.steps):
            dec_in = torch.addmm(from_dec[:, : 4 * spec.dec_hidden], eps[t], w.w_z)
            h_dec, c_dec, _ = cell(dec_in, c_dec)  # eq. (14), (n, Hd)
            from_dec = torch.addmm(w.b_dec, h_dec, w.w_dec)
            patch = from_dec[:, start : start + spec.write_dim]
            if spec.attention:
                F, gamma = filterbank(from_dec[:, -10:].reshape(n, 2, 5), self.offsets, SIZE)
                w_patch = patch.reshape(n, spec.write_n, spec.write_n)
                patch = write_patch(w_patch, F[:, 1, :, : spec.write_n], gamma[:, 1]).view(n, PIXELS)
            canvas += patch  # eq. (15)
            if keep_steps:
                frames.append(torch.sigmoid(canvas))
        return torch.stack(frames) if keep_steps else torch.sigmoid(canvas)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
        eps = temperature * self._noise(n, self.canvas0, generator)  # z_t ~ N(0, temperature^2 I)
        return self._generate(eps, keep_steps=False).view(n, *IMAGE_SHAPE)

    @torch.no_grad()
    def sample_steps(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        eps = self._noise(n, self.canvas0, generator)
        return self._generate(eps, keep_steps=True).view(self.config.steps, n, *IMAGE_SHAPE)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        canvas, _, _ = self._recurrence(x, self._noise(x.shape[0], x, generator))
        return torch.sigmoid(canvas).view(-1, *IMAGE_SHAPE)
