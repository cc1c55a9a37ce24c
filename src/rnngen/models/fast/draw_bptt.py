"""DRAW's T-step recurrence (Gregor et al. 2015, eqs. 3-8) with backpropagation through time
written by hand: what :meth:`rnngen.models.draw.DRAW.unroll` computes, for training and scoring.

No autograd graph is recorded per step, gradients go into preallocated rows, and each weight
gradient is a few large GEMMs over chunks of steps instead of T small ones. The paper's layers
are regrouped by the state they read (:func:`fused_weights`): everything linear in h_dec_t
(decoder recurrence, the encoder's h_dec input, the write patch, both attention windows) is one
GEMM, and everything linear in h_enc_t (q(z_t) and the encoder recurrence) another; the read
window of step t+1 and the write window of step t both come from h_dec_t, so their filterbanks
are built in one batched call. Under bfloat16 autocast the GEMMs (per step and the weight
gradients) take bfloat16 operands, 3-4x faster than float32 on an AVX512-BF16 CPU, while cell
states, canvas, attention and gradients stay float32. tests/test_draw.py checks values and every
gradient against autograd through the readable recurrence.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from rnngen.models.base import bf16_autocast
from rnngen.models.draw import PIXELS, SIZE, Filterbank, filterbank_parts, glimpse_products, pixel_grid
from rnngen.models.fast.draw_bptt_backward import backward, mm
from rnngen.models.lstm import cell

if TYPE_CHECKING:
    from rnngen.models.draw import DRAW, DRAWConfig


class RecurrenceSizes(NamedTuple):
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


def recurrence_sizes(cfg: DRAWConfig) -> RecurrenceSizes:
    read_dim = 2 * cfg.read_n**2 if cfg.attention else 2 * PIXELS
    write_dim = cfg.write_n**2 if cfg.attention else PIXELS
    return RecurrenceSizes(cfg.steps, cfg.attention, cfg.read_n, cfg.write_n, cfg.enc_hidden, cfg.dec_hidden,
                           cfg.z_dim, read_dim, write_dim)


class FusedWeights(NamedTuple):
    canvas0: Tensor  # (784,)
    h_enc0: Tensor  # (He,)
    h_dec0: Tensor  # (Hd,)
    w_dec: Tensor  # (Hd, dec_splits) applied to h_dec_t
    b_dec: Tensor
    w_enc: Tensor  # (He, enc_splits) applied to h_enc_t
    b_enc: Tensor
    w_read: Tensor  # (read_dim, 4 He): the encoder's r_t input
    w_z: Tensor  # (z, 4 Hd): the decoder's z_t input


@functools.cache
def _glimpse_order(n: int, device: torch.device, chans: int = 2) -> Tensor:
    """Position in [c, i, j] order (r_t's, eq. 27) of each entry of :func:`glimpse_products`'s
    [(j, c), i] order, which the recurrence reads glimpses in."""
    j, c, i = torch.meshgrid(torch.arange(n), torch.arange(chans), torch.arange(n), indexing="ij")
    return ((c * n + i) * n + j).flatten().to(device)


def fused_weights(model: DRAW, y: Tensor | None = None, n: int = 0) -> FusedWeights:
    """The paper's layers regrouped by the state they read (see the module docstring). For a
    conditional model (labels ``y`` of ``n`` images) ``b_dec`` is per image, ``(n, cols)``:
    each image's class bias on the decoder's and the encoder's gates."""
    cfg, sizes = model.config, recurrence_sizes(model.config)
    enc, read_dim = model.enc, sizes.read_dim
    w_dec = [model.dec.weight_hh, enc.weight_ih[:, read_dim:], model.write.weight]
    b_dec = [model.dec.bias_ih + model.dec.bias_hh, enc.bias_ih + enc.bias_hh, model.write.bias]
    if model.att is not None:
        w_dec.append(model.att.weight)
        b_dec.append(model.att.bias)
    dec_bias, enc_bias = model.class_biases(y, n)
    if dec_bias is not None and enc_bias is not None:
        b_dec = [dec_bias + b_dec[0], enc_bias + b_dec[1], *(b.expand(n, -1) for b in b_dec[2:])]
        b_dec = [torch.cat(b_dec, 1)]
    w_read = enc.weight_ih[:, _glimpse_order(cfg.read_n, enc.weight_ih.device)] if cfg.attention \
        else enc.weight_ih[:, :read_dim]
    return FusedWeights(
        canvas0=model.canvas0,
        h_enc0=model.h_enc0,
        h_dec0=model.h_dec0,
        w_dec=torch.cat(w_dec).t(),
        b_dec=torch.cat(b_dec, -1),
        w_enc=torch.cat([model.q.weight, enc.weight_hh]).t(),
        b_enc=torch.cat([model.q.bias, model.q.bias.new_zeros(4 * cfg.enc_hidden)]),
        w_read=w_read.t(),
        w_z=model.dec.weight_ih.t(),
    )


def recurrence(model: DRAW, x: Tensor, eps: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """c_T logits (B, 784), mu and log sigma (T, B, z) for images x and noise eps (T, B, z)
    (labels y for a conditional model), in the weights' dtype (float32 under autocast too)."""
    # It runs with autocast off: its in-place updates and hand-made backward pick their dtypes
    # themselves. Under bfloat16 autocast (float32 weights) its big GEMMs take bfloat16 operands,
    # 2-4x faster on CPU; the cell states and the canvas, summed over T steps, and everything
    # else stay float32. (With train.amp on CUDA, fit also allows TF32 for what stays float32.)
    low_precision = bf16_autocast(x)
    with torch.autocast(x.device.type, enabled=False):
        w = fused_weights(model, y, x.shape[0])
        sizes = recurrence_sizes(model.config)
        if low_precision and w.w_dec.dtype == torch.float32:
            sizes = sizes._replace(gemm_dtype=torch.bfloat16)
        x, eps = x.reshape(x.shape[0], PIXELS).to(w.w_dec.dtype), eps.to(w.w_dec.dtype)
        if torch.is_grad_enabled() and (x.requires_grad or w.w_dec.requires_grad):
            return _Recurrence.apply(x, eps, model.offsets, sizes, *w)
        return run_forward(x, eps, w, sizes, model.offsets, keep=False)[:3]


class Windows(NamedTuple):
    """Views of one bank (from h_dec_t): read window of step t+1, write window of step t."""

    read_x: Tensor  # (B, Nr, S)
    read_y: Tensor
    read_gamma: Tensor  # (B, 1, 1)
    write_x: Tensor  # (B, Nw, S)
    write_y: Tensor
    write_gamma: Tensor  # (B, 1, 1)


def _windows(bank: Filterbank, nr: int, nw: int) -> Windows:
    bsz, _, _, n, size = bank.F.shape
    rx, ry, wx, wy = bank.F.view(bsz, 4, n, size).unbind(1)
    gr, gw = bank.gamma.view(bsz, 2, 1, 1).unbind(1)
    if nr < n:
        rx, ry = rx[:, :nr], ry[:, :nr]
    if nw < n:
        wx, wy = wx[:, :nw], wy[:, :nw]
    return Windows(rx, ry, gr, wx, wy, gw)


# The GEMM helpers. In the fp32 (or fp64) path the weights and activations share one dtype and
# each helper is exactly the plain torch op. With ``gemm_dtype`` bfloat16 (autocast) the weights
# come cast once per forward and each activation operand is cast where it is used: the product
# (fp32 accumulation inside, rounded to bfloat16, as autocast's) is added in float32, so cell
# states, canvas, filterbanks, mu / log sigma and all gradients stay float32. (CPU PyTorch has no
# bfloat16 x bfloat16 -> float32 matmul.)


def _gemm_weights(w: FusedWeights, dtype: torch.dtype | None) -> FusedWeights:
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


SAVED = ("sig", "r", "xf", "lstm_e", "h_enc", "sigma", "z", "lstm_d", "h_dec", "bank", "win", "u", "uf")


def _from_h_dec(h_dec: Tensor, w: FusedWeights, sizes: RecurrenceSizes, offsets: Tensor,
                grid: Tensor) -> tuple[Tensor, Tensor, Tensor, Filterbank | None, Windows | None]:
    """Everything linear in h_dec_t, one GEMM: the decoder's gates, the encoder's h_dec term, the
    write patch, and with attention one bank for the read window of step t+1 (eq. 21) and the
    write window of step t (eq. 29)."""
    dec_gates, enc_gates, patch, *att_params = _addmm(w.b_dec, h_dec, w.w_dec).split(sizes.dec_splits, 1)
    if not sizes.attention:
        return dec_gates, enc_gates, patch, None, None
    bank = filterbank_parts(att_params[0].view(h_dec.shape[0], 2, 5), offsets, grid)
    return dec_gates, enc_gates, patch, bank, _windows(bank, sizes.read_n, sizes.write_n)


def _add_read(enc_in: Tensor, x_hat: Tensor, pair_t: Tensor, x_gates: Tensor | None, win: Windows | None,
              w_read: Tensor, keep: bool) -> tuple[Tensor | None, Tensor | None]:
    """Adds r_t's term of eq. (5) to the encoder's gates ``enc_in`` in place; returns r_t and
    the glimpse's half product xf (attention) as the backward pass needs them."""
    if win is not None:  # eq. (27): r_t = gamma [F_Y x F_X^T, F_Y x_hat F_X^T]
        glimpse, xf = glimpse_products(pair_t, win.read_x, win.read_y)  # (B, 2 Nr, Nr), (B, Nr, 2 S)
        r = (glimpse * win.read_gamma).view(enc_in.shape[0], -1)  # (B, 2 Nr^2), the order of w_read's rows
        _addmm_(enc_in, r.to(w_read.dtype), w_read)
        return r, xf
    # eq. (17): r_t = [x, x_hat]; read(x) is the same every step (x_gates)
    r = x_hat.clone() if keep else None
    _addmm_(enc_in.add_(x_gates), x_hat.to(w_read.dtype), w_read[PIXELS:])
    return r, None


def _write(canvas: Tensor, patch: Tensor, win: Windows | None, nw: int) -> tuple[Tensor | None, Tensor | None]:
    """Adds write(h_dec_t) to the canvas in place (eq. 8); with attention (eq. 29) returns the
    patch over gamma, u, and u F_X as the backward pass needs them."""
    if win is None:
        canvas += patch  # write = W(h_dec_t) (eq. 18)
        return None, None
    u = patch.view(-1, nw, nw) / win.write_gamma  # (B, Nw, Nw)
    uf = torch.bmm(u, win.write_x)  # (B, Nw, S)
    canvas.view(-1, SIZE, SIZE).baddbmm_(win.write_y.transpose(1, 2), uf)
    return u, uf


def run_forward(x: Tensor, eps: Tensor, w: FusedWeights, sizes: RecurrenceSizes, offsets: Tensor,
                keep: bool) -> tuple:
    """Encoder + decoder over T steps with z_t = mu_t + sigma_t eps_t (eqs. 3-8).

    x (B, 784), eps (T, B, z). Returns canvas logits c_T (B, 784), mu and log sigma (T, B, z),
    and (when ``keep``) the per-step tensors the backward pass needs, by name, with the GEMM
    weights under "weights". h_enc, z and h_dec are saved as the GEMMs took them (bfloat16 with
    ``sizes.gemm_dtype``): the backward uses them only as GEMM operands.
    """
    bsz = x.shape[0]
    w = _gemm_weights(w, sizes.gemm_dtype)
    gemm_dtype, grid = w.w_dec.dtype, pixel_grid(SIZE, x)
    # step 0: h_dec_0 and h_enc_0 are learned, the same for every image
    h_dec, h_enc = w.h_dec0.expand(bsz, -1).to(gemm_dtype), w.h_enc0.expand(bsz, -1).to(gemm_dtype)
    dec_gates, enc_gates, _, bank, win = _from_h_dec(h_dec, w, sizes, offsets, grid)  # win: step 1's read
    enc_rec = _addmm(w.b_enc, h_enc, w.w_enc)[:, 2 * sizes.z_dim :]
    c_enc, c_dec = x.new_zeros(bsz, sizes.enc_hidden), x.new_zeros(bsz, sizes.dec_hidden)
    canvas = w.canvas0.expand(bsz, -1).clone()
    images = torch.stack([x, x], 1)  # (B, 2, 784): [x, x_hat]
    x_hat, pair_t = images[:, 1], images.view(bsz, 2 * SIZE, SIZE).transpose(1, 2)  # pair_t: (B, S, 2 S)
    x_gates = None if sizes.attention else mm(x.to(gemm_dtype), w.w_read[:PIXELS], x.dtype)  # eq. (17)
    saved: dict[str, Any] = {k: [] for k in SAVED} | {"weights": w}
    for key, value in (("h_enc", h_enc), ("h_dec", h_dec), ("bank", bank), ("win", win)):
        saved[key].append(value)
    mus, logsigs = [], []
    for t in range(sizes.steps):
        s = torch.sigmoid(canvas)  # (B, 784)
        torch.sub(x, s, out=x_hat)  # eq. (3)
        enc_in = enc_gates + enc_rec  # (B, 4 He): h_dec_{t-1} and h_enc_{t-1} terms of eq. (5)
        r, xf = _add_read(enc_in, x_hat, pair_t, x_gates, win, w.w_read, keep)  # eq. (4)
        h_enc, c_enc, lstm_e = cell(enc_in, c_enc, gemm_dtype)  # eq. (5): h_enc_t, (B, He)
        mu, logsig, enc_rec = _addmm(w.b_enc, h_enc, w.w_enc).split(sizes.enc_splits, 1)  # eqs. (1)-(2)
        sigma = logsig.exp()
        z = torch.addcmul(mu, sigma, eps[t]).to(gemm_dtype)  # eq. (6), reparameterised, (B, z)
        h_dec, c_dec, lstm_d = cell(_addmm(dec_gates, z, w.w_z), c_dec, gemm_dtype)  # eq. (7), (B, Hd)
        dec_gates, enc_gates, patch, bank, win = _from_h_dec(h_dec, w, sizes, offsets, grid)
        u, uf = _write(canvas, patch, win, sizes.write_n)  # eq. (8)
        mus.append(mu)
        logsigs.append(logsig)
        if keep:
            for key, value in zip(SAVED, (s, r, xf, lstm_e, h_enc, sigma, z, lstm_d, h_dec, bank, win, u, uf),
                                  strict=True):
                saved[key].append(value)
    return canvas, torch.stack(mus), torch.stack(logsigs), saved


class _Recurrence(torch.autograd.Function):
    """:func:`run_forward` with a hand-written backward pass through time
    (:func:`rnngen.models.fast.draw_bptt_backward.backward`)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, eps: Tensor, offsets: Tensor, sizes: RecurrenceSizes, *weights: Tensor) -> tuple:
        canvas, mu, logsig, saved = run_forward(x, eps, FusedWeights(*weights), sizes, offsets, keep=True)
        ctx.sizes, ctx.saved = sizes, saved
        ctx.save_for_backward(x, eps, offsets, *weights)
        return canvas, mu, logsig

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, d_canvas: Tensor, d_mu: Tensor, d_logsig: Tensor) -> tuple:
        x, eps, offsets, *weights = ctx.saved_tensors
        # a backward() called inside the autocast block runs here with autocast on
        with torch.autocast(x.device.type, enabled=False):
            dx, *d_weights = backward(x, eps, offsets, FusedWeights(*weights), ctx.sizes, ctx.saved,
                                      (d_canvas, d_mu, d_logsig), ctx.needs_input_grad[0])
        ctx.saved = None
        return dx, None, None, None, *d_weights
