"""The Row LSTM layer's fast paths (van den Oord et al. 2016, sec. 3.1): the row loop with a
hand-written backward (PyTorch ops, any device) and the whole layer as the C++ kernel
(``csrc/row_lstm.cpp``). :class:`rnngen.models.pixelrnn_layers.RowLSTMLayer` picks one; both compute
what the plain per-row implementation (:mod:`rnngen.models.reference.pixelrnn`) does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rnngen.models.lstm import cell, cell_backward


class RowRecurrence(torch.autograd.Function):
    """The Row LSTM's row loop (sec. 3.1) with a hand-written backward.

    ``gates_in`` ``(H, B, W, 4h)`` is the hoisted input-to-state part; each row adds the 1xk
    state-to-state convolution of the previous row's h, one GEMM over the row's unfolded states
    (kept for the backward), then the LSTM cell. The backward runs the rows in reverse with one
    GEMM a row (the gradient into the previous row's states) and computes the state-to-state
    weight gradient as a single GEMM over all rows at the end. With ``low_precision`` the GEMM operands
    are bfloat16 (fp32 accumulation); gates, cell states and weights stay fp32.
    """

    @staticmethod
    def forward(ctx: Any, gates_in: Tensor, w_ss: Tensor, h0: Tensor, c0: Tensor, kernel: int,
                low_precision: bool) -> Tensor:
        height, b, width, g4 = gates_in.shape
        hid, half = g4 // 4, kernel // 2
        dtype = torch.bfloat16 if low_precision else gates_in.dtype
        w = w_ss.detach().to(dtype)
        # unfolded[i]: the states row i convolves, tap-major; zeros beyond the row's ends
        unfolded = gates_in.new_zeros(height, b, width, kernel, hid, dtype=dtype)
        hs = gates_in.new_empty(height, b, width, hid)
        acts = gates_in.new_empty(height, b * width, g4)

        def unfold_into(i: int, h: Tensor) -> None:
            for t in range(kernel):  # tap t of position j is the state at j + t - half
                lo, hi = max(0, half - t), min(width, width + half - t)
                unfolded[i, :, lo:hi, t] = h[:, lo + t - half : hi + t - half]

        unfold_into(0, h0.detach().to(dtype).expand(b, width, hid))
        c = c0.detach().expand(b * width, hid)
        saved = []
        for i in range(height):
            states = unfolded[i].view(b * width, kernel * hid)
            if low_precision:  # bfloat16 product, added to the fp32 input part
                torch.add(gates_in[i].view(b * width, g4), states @ w, out=acts[i])
            else:
                torch.addmm(gates_in[i].view(b * width, g4), states, w, out=acts[i])
            h, c, keep = cell(acts[i], c)
            saved.append(keep)
            hs[i] = h.view(b, width, hid)
            if i + 1 < height:
                unfold_into(i + 1, hs[i])
        ctx.kernel, ctx.saved_cells = kernel, saved
        ctx.save_for_backward(unfolded, w)
        return hs

    @staticmethod
    def backward(ctx: Any, d_hs: Tensor) -> tuple:
        unfolded, w = ctx.saved_tensors
        kernel, saved = ctx.kernel, ctx.saved_cells
        height, b, width, _, hid = unfolded.shape
        half, rows = kernel // 2, b * width
        d_gates = d_hs.new_empty(height, b, width, 4 * hid)
        d_pad = d_hs.new_empty(b, width + 2 * half, hid)  # gradient into the padded previous row
        dh_next = d_hs.new_zeros(rows, hid)
        dc = d_hs.new_zeros(rows, hid)
        w_t = w.t()
        for i in reversed(range(height)):
            dh = d_hs[i].reshape(rows, hid) + dh_next
            dc = cell_backward(dh, dc, saved[i], out=d_gates[i].view(rows, 4 * hid))
            # the gradient into the previous row's states: fold the k taps back onto positions
            d_taps = (d_gates[i].view(rows, 4 * hid).to(w.dtype) @ w_t).view(b, width, kernel, hid)
            d_pad.zero_()
            for t in range(kernel):
                d_pad[:, t : t + width] += d_taps[:, :, t]
            dh_next = d_pad[:, half : half + width].reshape(rows, hid)
        flat = d_gates.view(-1, 4 * hid)
        d_w = (unfolded.view(-1, kernel * hid).t() @ flat.to(w.dtype)).to(d_hs.dtype)  # all rows at once
        return d_gates, d_w, dh_next.sum(0), dc.sum(0), None, None


class RowLayerKernel(torch.autograd.Function):
    """A whole Row LSTM layer, residual included, run by the C++ kernel (``csrc/row_lstm.cpp``):
    per row one GEMM for both 1xk convolutions and one fused sweep for the cell; the backward
    gives every gradient itself, so autograd sees one node a layer. Everything in ``m``'s dtype
    (bfloat16 under autocast: GEMM operands and outputs); gates and cell states in fp32 (fp64
    for fp64 inputs)."""

    @staticmethod
    def forward(ctx: Any, m: Tensor, w_all: Tensor, bias: Tensor, h0: Tensor, c0: Tensor, w_up: Tensor,
                b_up: Tensor, kernel: int, ops: Any) -> Tensor:
        height, b, width, ch = m.shape
        out, u, act, cs, hs = ops.layer_forward(m.reshape(height, b * width, ch), w_all, bias, h0, c0, w_up, b_up,
                                                b, kernel)
        ctx.meta = (b, kernel, ops, bias.dtype, bias.dim() == 2)
        ctx.save_for_backward(u, w_all, act, cs, hs, c0, w_up)
        return out.view(m.shape)

    @staticmethod
    def backward(ctx: Any, d_out: Tensor) -> tuple:
        u, w_all, act, cs, hs, c0, w_up = ctx.saved_tensors
        b, kernel, ops, bias_dtype, per_image = ctx.meta
        height, _, width, ch = d_out.shape
        d_m, d_w_all, d_bias, dh0, dc0, d_w_up, d_b_up = ops.layer_backward(
            d_out.reshape(height, b * width, ch), u, w_all, act, cs, hs, c0, w_up, b, kernel, per_image)
        return (d_m.view(d_out.shape), d_w_all, d_bias.to(bias_dtype), dh0.to(c0.dtype), dc0.to(c0.dtype), d_w_up,
                d_b_up, None, None)

