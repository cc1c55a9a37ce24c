"""The Diagonal BiLSTM layer's fast path (van den Oord et al. 2016, sec. 3.2): the whole layer,
both directions, the un-skew and the right-to-left half's shift included, as the C++ kernel
(``csrc/diagonal_bilstm.cpp``). :class:`rnngen.models.pixelrnn_layers.DiagonalBiLSTMLayer` uses it on the
CPU and its PyTorch-op column loop elsewhere; both compute what the plain per-pixel
implementation (:mod:`rnngen.models.reference.pixelrnn`) does.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.autograd import Function


class DiagonalLayerKernel(Function):
    """A whole Diagonal BiLSTM layer, residual included, run by the C++ kernel: per anti-diagonal
    one batched GEMM (both directions) for the 2x1 state-to-state convolution and one fused sweep
    for the cell; the backward gives every gradient itself, so autograd sees one node a layer.
    GEMM operands in ``m``'s dtype (bfloat16 under autocast); gates and cell states in fp32 (fp64
    for fp64 inputs)."""

    @staticmethod
    def forward(ctx: Any, m: Tensor, w_is: Tensor, bias: Tensor, w_ss: Tensor, h0: Tensor, c0: Tensor,
                w_up: Tensor, b_up: Tensor, ops: Any) -> Tensor:
        height, b, width, ch = m.shape
        m3 = m.reshape(height, b * width, ch)
        out, u, act, cs, s = ops.layer_forward(m3, w_is, bias, w_ss, h0, c0, w_up, b_up, b)
        ctx.meta = (b, ops, bias.dtype, bias.dim() == 3)
        ctx.save_for_backward(m3, u, act, cs, s, w_is, w_ss, c0, w_up)
        return out.view(m.shape)

    @staticmethod
    def backward(ctx: Any, d_out: Tensor) -> tuple:
        m3, u, act, cs, s, w_is, w_ss, c0, w_up = ctx.saved_tensors
        b, ops, bias_dtype, per_image = ctx.meta
        height, _, width, ch = d_out.shape
        d_m, d_w_is, d_bias, d_w_ss, dh0, dc0, d_w_up, d_b_up = ops.layer_backward(
            d_out.reshape(height, b * width, ch), m3, u, act, cs, s, w_is, w_ss, c0, w_up, b, per_image)
        return (d_m.view(d_out.shape), d_w_is, d_bias.to(bias_dtype), d_w_ss, dh0.to(c0.dtype), dc0.to(c0.dtype),
                d_w_up, d_b_up, None)
