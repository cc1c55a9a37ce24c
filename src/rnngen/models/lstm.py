"""The LSTM cell of the hand-written recurrences (DRAW's and the Row LSTM's), forward and
backward, on pre-activations in PyTorch's (i, f, g, o) gate order along the last dimension.

Autograd would record a dozen small ops per cell and step; these write in place and keep only
what the backward needs, so a recurrence's step costs its GEMMs and a few element-wise passes.
"""

from __future__ import annotations

import torch
from torch import Tensor


def cell(gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor, tuple]:
    """One LSTM update from pre-activations ``(..., 4H)``, which it overwrites. Returns h, c
    and what :func:`cell_backward` needs: the sigmoids (i, f, sigmoid(2 u_g), o),
    g = tanh(u_g) = 2 sigmoid(2 u_g) - 1, c_prev and tanh(c) (one sigmoid pass for all gates)."""
    hid = c_prev.shape[-1]
    gates[..., 2 * hid : 3 * hid].mul_(2)
    act = gates.sigmoid_()
    i, f, g, o = act.chunk(4, -1)
    g = (g + g).sub_(1)
    c = torch.addcmul(f * c_prev, i, g)
    tanh_c = torch.sigmoid(c + c).mul_(2).sub_(1)
    return o * tanh_c, c, (act, g, c_prev, tanh_c)


def cell_backward(dh: Tensor, dc: Tensor, saved: tuple, out: Tensor) -> Tensor:
    """Backward of :func:`cell` given its saved (act, g, c_prev, tanh_c): writes the gradient
    of the pre-activations into ``out`` ``(..., 4H)`` and returns that of c_prev."""
    act, g, c_prev, tanh_c = saved
    i, f, _, o = act.chunk(4, -1)
    di, df, dg, do = out.chunk(4, -1)
    torch.mul(dh, tanh_c, out=do)
    dc = torch.addcmul(dc, dh, torch.addcmul(o, o, tanh_c * tanh_c, value=-1))  # + dh o (1 - tanh^2 c)
    torch.mul(dc, g, out=di)
    torch.mul(dc, c_prev, out=df)
    torch.mul(dc, i, out=dg).mul_(4)  # d/du [2 sigmoid(2u) - 1] = 4 s (1 - s)
    out.mul_(torch.addcmul(act, act, act, value=-1))  # s (1 - s)
    return dc * f
