"""The LSTM cell of the hand-written recurrences (DRAW's and the Row LSTM's), forward and
backward, on pre-activations in PyTorch's (i, f, g, o) gate order along the last dimension.

Autograd would record a dozen small ops per cell and step; these write in place and keep only
what the backward needs. On the CPU each direction is one fused C++ sweep (``csrc/lstm_cell.cpp``)
where the layout allows, else the PyTorch ops below, which compute the same thing.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import kernels


def _fused(gates: Tensor, c_prev: Tensor) -> object | None:
    if gates.dim() != 2 or gates.stride(1) != 1 or not c_prev.is_contiguous() or gates.dtype != c_prev.dtype:
        return None
    return kernels.lstm_cell(gates)


def cell(gates: Tensor, c_prev: Tensor, h_dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor, tuple]:
    """One LSTM update from pre-activations ``(..., 4H)``, which it overwrites with the
    activations. Returns h (in ``h_dtype``, default the gates'), c and what
    :func:`cell_backward` needs. Not differentiable by autograd: the recurrences that call it
    run their own backward."""
    ops = _fused(gates, c_prev)
    if ops is not None:  # gates become (i, f, tanh g, o); None marks this layout
        h, c, tanh_c = ops.cell_forward(gates, c_prev, h_dtype or gates.dtype)
        return h, c, (gates, None, c_prev, tanh_c)
    # one sigmoid pass for all gates: g = tanh(u_g) = 2 sigmoid(2 u_g) - 1
    hid = c_prev.shape[-1]
    gates[..., 2 * hid : 3 * hid].mul_(2)
    act = gates.sigmoid_()
    i, f, g, o = act.chunk(4, -1)
    g = (g + g).sub_(1)
    c = torch.addcmul(f * c_prev, i, g)
    tanh_c = torch.sigmoid(c + c).mul_(2).sub_(1)
    h = o * tanh_c
    return (h if h_dtype is None else h.to(h_dtype)), c, (act, g, c_prev, tanh_c)


def cell_backward(dh: Tensor, dc: Tensor, saved: tuple, out: Tensor) -> Tensor:
    """Backward of :func:`cell` given what it saved: writes the gradient of the
    pre-activations into ``out`` ``(..., 4H)`` and returns that of c_prev."""
    act, g, c_prev, tanh_c = saved
    if g is None:  # the fused forward's layout
        return kernels.lstm_cell(dh).cell_backward(dh.contiguous(), dc.contiguous(), act, c_prev, tanh_c, out)
    i, f, _, o = act.chunk(4, -1)  # act holds sigmoid(2 u_g) in the g slot
    di, df, dg, do = out.chunk(4, -1)
    torch.mul(dh, tanh_c, out=do)
    dc = torch.addcmul(dc, dh, torch.addcmul(o, o, tanh_c * tanh_c, value=-1))  # + dh o (1 - tanh^2 c)
    torch.mul(dc, g, out=di)
    torch.mul(dc, c_prev, out=df)
    torch.mul(dc, i, out=dg).mul_(4)  # d/du [2 sigmoid(2u) - 1] = 4 s (1 - s)
    out.mul_(torch.addcmul(act, act, act, value=-1))  # s (1 - s)
    return dc * f
