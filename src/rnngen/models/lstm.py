"""The LSTM cell every rnngen model uses (Hochreiter & Schmidhuber 1997; PixelRNN's eq. 3), on
pre-activations in PyTorch's (i, f, g, o) gate order along the last dimension:

    c = sigmoid(f) c_prev + sigmoid(i) tanh(g),    h = sigmoid(o) tanh(c)

:func:`lstm_cell` is the cell under autograd (the models' readable code, the samplers).
:func:`cell` and :func:`cell_backward` are the same cell for the recurrences that run their own
backward pass (DRAW's, the Row LSTM's op loop): they keep only what the backward needs, and on
the CPU each direction is one fused C++ sweep (``csrc/lstm_cell.cpp``) where the layout allows,
else the very operations of :func:`lstm_cell`.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnngen.models import kernels


@functools.cache
def _gate_scale(h_dim: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """1 for the sigmoid gates, 2 for g: sigmoid(2 g) gives tanh(g) = 2 sigmoid(2 g) - 1."""
    return torch.tensor([1.0, 1.0, 2.0, 1.0], dtype=dtype, device=device).repeat_interleave(h_dim)


def _cell_ops(gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor, tuple]:
    """The cell as PyTorch ops: one sigmoid for all four gates, and ``unbind`` rather than slices
    (a slice's backward fills a zero tensor the size of the whole input, every step). Returns h,
    c and the activations :func:`cell_backward` reads."""
    h_dim = c_prev.shape[-1]
    act = torch.sigmoid(gates * _gate_scale(h_dim, gates.dtype, gates.device))  # (..., 4h)
    i, f, sg, o = act.unflatten(-1, (4, h_dim)).unbind(-2)
    g = 2 * sg - 1  # tanh(g)
    c = f * c_prev + i * g
    tanh_c = torch.tanh(c)
    return o * tanh_c, c, (act, g, c_prev, tanh_c)


def lstm_cell(gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM update under autograd: pre-activations ``(..., 4h)`` and c_prev ``(..., h)`` ->
    the new (h, c)."""
    h, c, _ = _cell_ops(gates, c_prev)
    return h, c


def lstm_step(layer: nn.LSTMCell, inputs: Tensor, h: Tensor, c: Tensor,
              bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One step of ``layer``'s LSTM (its own weights) with :func:`lstm_cell`: the new (h, c);
    ``bias`` ``(B, 4h)`` is added to the gates (a class's)."""
    gates = F.linear(inputs, layer.weight_ih, layer.bias_ih) + F.linear(h, layer.weight_hh, layer.bias_hh)
    return lstm_cell(gates if bias is None else gates + bias, c)


def _fused(gates: Tensor, c_prev: Tensor) -> object | None:
    if gates.dim() != 2 or gates.stride(1) != 1 or not c_prev.is_contiguous() or gates.dtype != c_prev.dtype:
        return None
    return kernels.ops("lstm_cell", gates)


def cell(gates: Tensor, c_prev: Tensor, h_dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor, tuple]:
    """:func:`lstm_cell` for a hand-written backward pass: returns h (in ``h_dtype``, default the
    gates'), c and what :func:`cell_backward` needs. The fused C++ cell overwrites ``gates`` with
    the activations. Not differentiable by autograd."""
    ops = _fused(gates, c_prev)
    if ops is not None:  # gates become (i, f, tanh g, o); None marks this layout
        h, c, tanh_c = ops.cell_forward(gates, c_prev, h_dtype or gates.dtype)
        return h, c, (gates, None, c_prev, tanh_c)
    h, c, saved = _cell_ops(gates, c_prev)
    return (h if h_dtype is None else h.to(h_dtype)), c, saved


def cell_backward(dh: Tensor, dc: Tensor, saved: tuple, out: Tensor) -> Tensor:
    """Backward of :func:`cell` given what it saved: writes the gradient of the
    pre-activations into ``out`` ``(..., 4H)`` and returns that of c_prev."""
    act, g, c_prev, tanh_c = saved
    if g is None:  # the fused forward's layout
        return kernels.ops("lstm_cell", dh).cell_backward(dh.contiguous(), dc.contiguous(), act, c_prev, tanh_c, out)
    i, f, _, o = act.chunk(4, -1)  # act holds sigmoid(2 u_g) in the g slot
    di, df, dg, do = out.chunk(4, -1)
    torch.mul(dh, tanh_c, out=do)
    dc = torch.addcmul(dc, dh, torch.addcmul(o, o, tanh_c * tanh_c, value=-1))  # + dh o (1 - tanh^2 c)
    torch.mul(dc, g, out=di)
    torch.mul(dc, c_prev, out=df)
    torch.mul(dc, i, out=dg).mul_(4)  # d/du [2 sigmoid(2u) - 1] = 4 s (1 - s)
    out.mul_(torch.addcmul(act, act, act, value=-1))  # s (1 - s)
    return dc * f
