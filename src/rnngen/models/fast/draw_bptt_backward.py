"""Backpropagation through time for DRAW's fast recurrence (:mod:`rnngen.models.fast.draw_bptt`):
the gradients of x and of every fused weight, one method per equation of a step, run from step T
down to 1 (Gregor et al. 2015, eqs. 3-8, 17-18 and 27-29).

Row t of the h_dec gradient rows is the gradient w.r.t. the output of the h_dec_t GEMM
(t = 0..T): its decoder and encoder gate blocks are written while processing step t+1, its write
and attention blocks while processing step t; the h_enc rows likewise. Both are float32 (the
bias gradients sum them); their operand copies are in the GEMM dtype (the same tensors in the
one-dtype path), filled as each row becomes final. The weight gradients are then one GEMM per
chunk of steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from rnngen.models.draw import PIXELS, SIZE, Filterbank
from rnngen.models.lstm import cell_backward

if TYPE_CHECKING:
    from rnngen.models.fast.draw_bptt import FusedWeights, RecurrenceSizes

_CHUNK_BYTES = 8 << 20


def mm(a: Tensor, mat: Tensor, dtype: torch.dtype) -> Tensor:
    """a @ mat in ``dtype`` (a no-op cast in the one-dtype path); ``a`` already in mat's dtype."""
    return (a @ mat).to(dtype)


def filterbank_backward(dF: Tensor, dlog_gamma: Tensor, bank: Filterbank, offsets: Tensor) -> Tensor:
    """Gradient of :func:`rnngen.models.draw.filterbank_parts` w.r.t. its params (..., 5) given
    dF and d log gamma (eqs. 19-26)."""
    F, size = bank.F, bank.F.shape[-1]
    dlogits = F * (dF - (dF * F).sum(-1, keepdim=True))  # softmax backward
    inv_var = bank.var.reciprocal()
    # logits = -(a - mu)^2 / (2 var): d/dmu = (a - mu) / var, d/dlog var = (a - mu)^2 / (2 var)
    dmu = (dlogits * bank.diff).sum(-1) * inv_var[..., None, None]  # (..., 2, N)
    dlog_var = (dlogits * bank.sq).sum((-1, -2, -3)) * (0.5 * inv_var)
    dlog_stride = (dmu * offsets.unsqueeze(-2)).sum((-1, -2)) * bank.stride
    dg_tilde = dmu.sum(-1) * ((size + 1) / 2)  # (..., 2)
    return torch.cat([dg_tilde, torch.stack([dlog_var, dlog_stride, dlog_gamma], -1)], -1)


class _GradRows(NamedTuple):
    """Gradient rows (B, sum(widths)) for steps 0..T, allocated in chunks of about 8 MB: glibc
    serves larger blocks from fresh pages, which would fault on every training step."""

    chunks: list[Tensor]  # (steps in the chunk, B, sum(widths))
    rows: list[Tensor]  # per step
    blocks: list[list[Tensor]]  # per column block, its per-step views
    op_chunks: list[Tensor]  # the chunks as GEMM operands (the same tensors in the one-dtype path)
    ops: list[Tensor]  # per step, filled by :func:`_as_operand` once the row is final


def _grad_rows(steps: int, bsz: int, widths: list[int], like: Tensor, gemm_dtype: torch.dtype) -> _GradRows:
    width = sum(widths)
    per = max(1, _CHUNK_BYTES // (bsz * width * like.element_size()))
    chunks = [like.new_empty(min(per, steps - s), bsz, width) for s in range(0, steps, per)]
    rows = [row for c in chunks for row in c.unbind(0)]
    blocks: list[list[Tensor]] = [[] for _ in widths]
    for c in chunks:
        for views, block in zip(blocks, c.split(widths, 2), strict=True):
            views.extend(block.unbind(0))
    if gemm_dtype == like.dtype:
        return _GradRows(chunks, rows, blocks, chunks, rows)
    operands = [torch.empty_like(c, dtype=gemm_dtype) for c in chunks]
    return _GradRows(chunks, rows, blocks, operands, [row for c in operands for row in c.unbind(0)])


def _as_operand(grads: _GradRows, t: int) -> Tensor:
    """Row t cast into its operand copy (nothing to do when they are one tensor)."""
    operand, row = grads.ops[t], grads.rows[t]
    return operand if operand is row else operand.copy_(row)


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


class _Backward:
    """The state of the backward pass while it walks the steps from T down to 1: the gradient
    rows, the running gradients of the canvas, of both cell states and of x, and those of the
    bank of h_dec_t (the read window of step t+1, the write window of step t)."""

    def __init__(self, x: Tensor, eps: Tensor, offsets: Tensor, w: FusedWeights, sizes: RecurrenceSizes,
                 saved: dict, d_out: tuple[Tensor, Tensor, Tensor], need_dx: bool) -> None:
        T, bsz = sizes.steps, x.shape[0]
        self.x, self.eps, self.offsets, self.w, self.sizes, self.saved = x, eps, offsets, w, sizes, saved
        self.d_canvas, self.d_mu, self.d_logsig = d_out
        ops_w = saved["weights"]  # w's GEMM matrices in the GEMM dtype
        self.gemm_dtype, self.dtype = ops_w.w_dec.dtype, x.dtype
        self.dec = _grad_rows(T + 1, bsz, sizes.dec_splits, x, self.gemm_dtype)
        self.enc = _grad_rows(T + 1, bsz, sizes.enc_splits, x, self.gemm_dtype)
        d_dec_gates, d_enc_gates, d_patch, *_ = self.dec.blocks
        d_mu_rows, d_logsig_rows, d_enc_rec = self.enc.blocks
        for block in (d_dec_gates[T], d_enc_gates[T], d_patch[0], d_enc_rec[T], d_mu_rows[0], d_logsig_rows[0]):
            block.zero_()  # nothing follows step T; nothing is written at step 0
        self.w_dec_t, self.w_enc_t, self.w_z_t, self.w_read_t = (
            ops_w.w_dec.t(), ops_w.w_enc.t(), ops_w.w_z.t(), ops_w.w_read.t())
        self.dcan = self.d_canvas.clone()  # (B, 784): gradient w.r.t. c_t
        self.dc_dec, self.dc_enc = x.new_zeros(bsz, sizes.dec_hidden), x.new_zeros(bsz, sizes.enc_hidden)
        self.dx = x.new_zeros(bsz, PIXELS) if need_dx else None
        images = torch.stack([x, x], 1)
        self.x_hat, self.pair = images[:, 1], images.view(bsz, 2 * SIZE, SIZE)
        if sizes.attention:  # gradients w.r.t. one bank: read window of step t+1 and write window of step t
            nr, nw = sizes.read_n, sizes.write_n
            self.dF = torch.zeros_like(saved["bank"][0].F)  # read slots past N_r stay 0
            (rx, ry), (wx, wy) = (f.unbind(1) for f in self.dF.unbind(1))
            self.dF_rx, self.dF_ry, self.dF_wx, self.dF_wy = rx[:, :nr], ry[:, :nr], wx[:, :nw], wy[:, :nw]
            self.dlog_gamma_read = x.new_zeros(bsz)  # nothing reads after step T

    def write(self, t: int) -> None:
        """eq. (8) with eq. (29), c_t += F_Y^T u F_X with u = w_t / gamma; or eq. (18)."""
        d_patch = self.dec.blocks[2]
        if not self.sizes.attention:
            d_patch[t].copy_(self.dcan)
            return
        bsz, i, win, u = self.x.shape[0], t - 1, self.saved["win"][t], self.saved["u"]
        dcan_2d = self.dcan.view(bsz, SIZE, SIZE)
        duf = torch.bmm(win.write_y, dcan_2d)  # (B, Nw, S)
        du = torch.bmm(duf, win.write_x.transpose(1, 2))  # (B, Nw, Nw)
        self.dF_wx.copy_(torch.bmm(u[i].transpose(1, 2), duf))
        self.dF_wy.copy_(torch.bmm(self.saved["uf"][i], dcan_2d.transpose(1, 2)))
        torch.div(du.view(bsz, -1), win.write_gamma.view(bsz, 1), out=d_patch[t])
        dlog_gamma = torch.stack([self.dlog_gamma_read, (du * u[i]).sum((1, 2)).neg_()], 1)
        self._attention_grad(t, dlog_gamma)

    def _attention_grad(self, t: int, dlog_gamma: Tensor) -> None:
        """eq. (21): the attention parameters from h_dec_t, through the filterbank."""
        grad = filterbank_backward(self.dF, dlog_gamma, self.saved["bank"][t], self.offsets)
        self.dec.blocks[3][t].copy_(grad.view(self.x.shape[0], 10))

    def decode(self, t: int) -> None:
        """eq. (7), the decoder; z_t = mu_t + sigma_t eps_t, eq. (6)."""
        i, d_dec_gates = t - 1, self.dec.blocks[0]
        d_mu_rows, d_logsig_rows, _ = self.enc.blocks
        dh_dec = mm(_as_operand(self.dec, t), self.w_dec_t, self.dtype)
        self.dc_dec = cell_backward(dh_dec, self.dc_dec, self.saved["lstm_d"][i], out=d_dec_gates[i])
        dz = mm(d_dec_gates[i].to(self.gemm_dtype), self.w_z_t, self.dtype)
        torch.add(dz, self.d_mu[i], out=d_mu_rows[t])
        torch.addcmul(self.d_logsig[i], dz, self.eps[i] * self.saved["sigma"][i], out=d_logsig_rows[t])

    def encode(self, t: int) -> Tensor:
        """eq. (5), the encoder: its gate gradient is that of h_dec_{t-1}'s and h_enc_{t-1}'s
        GEMMs too. Returns it as a GEMM operand."""
        i, d_enc_gates = t - 1, self.dec.blocks[1]
        dh_enc = mm(_as_operand(self.enc, t), self.w_enc_t, self.dtype)
        self.dc_enc = cell_backward(dh_enc, self.dc_enc, self.saved["lstm_e"][i], out=d_enc_gates[i])
        self.enc.blocks[2][i].copy_(d_enc_gates[i])
        return d_enc_gates[i].to(self.gemm_dtype)

    def read(self, t: int, d_enc_op: Tensor) -> None:
        """eq. (27) or (17), the read; x_hat = x - sigmoid(c_{t-1}), eq. (3)."""
        s = self.saved["sig"][t - 1]
        dx_hat = self._read_attention(t, d_enc_op, s) if self.sizes.attention else self._read_whole(d_enc_op)
        self.dcan.addcmul_(dx_hat, torch.addcmul(s, s, s, value=-1), value=-1)  # sigmoid' = s (1 - s)

    def _read_attention(self, t: int, d_enc_op: Tensor, s: Tensor) -> Tensor:
        bsz, nr, i = self.x.shape[0], self.sizes.read_n, t - 1
        win = self.saved["win"][i]
        dr = mm(d_enc_op, self.w_read_t, self.dtype)  # (B, 2 Nr^2)
        dglimpse = dr.view(bsz, 2 * nr, nr) * win.read_gamma  # [(j, c), i]
        dxf = torch.bmm(dglimpse, win.read_y).view(bsz, nr, 2 * SIZE)  # [j, (c, y)]
        self.dF_ry.copy_(torch.bmm(dglimpse.transpose(1, 2), self.saved["xf"][i].view(bsz, 2 * nr, SIZE)))
        torch.sub(self.x, s, out=self.x_hat)
        self.dF_rx.copy_(torch.bmm(dxf, self.pair))
        self.dlog_gamma_read = (dr * self.saved["r"][i]).sum(1)
        if self.dx is None:
            return torch.bmm(dxf[:, :, SIZE:].transpose(1, 2), win.read_x).view(bsz, PIXELS)
        dimages = torch.bmm(dxf.transpose(1, 2), win.read_x).view(bsz, 2, PIXELS)
        self.dx += dimages.sum(1)
        return dimages[:, 1]

    def _read_whole(self, d_enc_op: Tensor) -> Tensor:
        dx_hat = mm(d_enc_op, self.w_read_t[:, PIXELS:], self.dtype)
        if self.dx is not None:
            self.dx += dx_hat
        return dx_hat

    def finish(self) -> tuple:
        """After step 1: step 0's bank, then every weight's gradient."""
        if self.sizes.attention:  # step 0's bank only gave step 1 its read window
            self.dF[:, 1].zero_()
            dlog_gamma = torch.stack([self.dlog_gamma_read, torch.zeros_like(self.dlog_gamma_read)], 1)
            self._attention_grad(0, dlog_gamma)
        _as_operand(self.dec, 0)
        _as_operand(self.enc, 0)
        return self._weight_grads()

    def _weight_grads(self) -> tuple:
        """One GEMM per chunk of steps; row t holds step t+1's gate gradients."""
        w, sizes, saved, dtype, x = self.w, self.sizes, self.saved, self.dtype, self.x
        dec_cols = slice(0, sizes.dec_splits[0])
        enc_cols = slice(sizes.dec_splits[0], sum(sizes.dec_splits[:2]))
        d_w_read = _weight_grad(torch.stack(saved["r"]).to(self.gemm_dtype), self.dec.op_chunks, enc_cols, dtype)
        if not sizes.attention:
            d_enc_sum = torch.stack(self.dec.blocks[1][: sizes.steps]).sum(0)  # (B, 4 He): read(x) = x, eq. (17)
            d_w_read = torch.cat([x.t() @ d_enc_sum, d_w_read])
            if self.dx is not None:
                self.dx += d_enc_sum @ w.w_read.t()[:, :PIXELS]
        return (
            self.dx,
            self.dcan.sum(0),
            self.enc.rows[0].sum(0) @ w.w_enc.t(),  # h_enc_0 and h_dec_0 are shared by every image
            self.dec.rows[0].sum(0) @ w.w_dec.t(),
            _weight_grad(torch.stack(saved["h_dec"]), self.dec.op_chunks, dtype=dtype),
            # per image for a conditional model's b_dec (its class biases), else over the batch too
            sum(c.sum(0) if w.b_dec.dim() == 2 else c.sum((0, 1)) for c in self.dec.chunks),
            _weight_grad(torch.stack(saved["h_enc"]), self.enc.op_chunks, dtype=dtype),
            sum(c.sum((0, 1)) for c in self.enc.chunks),
            d_w_read,
            _weight_grad(torch.stack(saved["z"]), self.dec.op_chunks, dec_cols, dtype),
        )


def backward(x: Tensor, eps: Tensor, offsets: Tensor, w: FusedWeights, sizes: RecurrenceSizes, saved: dict,
             d_out: tuple[Tensor, Tensor, Tensor], need_dx: bool) -> tuple:
    """The gradients of x (None unless ``need_dx``) and of every weight of ``w``, in its order,
    given those of the recurrence's outputs ``d_out`` (canvas logits, mu, log sigma)."""
    grads = _Backward(x, eps, offsets, w, sizes, saved, d_out, need_dx)
    for t in range(sizes.steps, 0, -1):
        grads.write(t)
        grads.decode(t)
        grads.read(t, grads.encode(t))
    return grads.finish()
