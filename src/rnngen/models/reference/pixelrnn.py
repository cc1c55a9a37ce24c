"""The plain implementation of :mod:`rnngen.models.pixelrnn`: the same network, on the same
parameters, written the straightforward way (masked full kernels, a per-row ``conv1d`` for the
Row LSTM, a per-pixel loop in image coordinates for the Diagonal BiLSTM, one sigmoid per gate).

The tests check the fast model against it (values and gradients) and ``bench/throughput.py``
times it as the baseline; it is not a registered model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rnngen.models.pixelrnn import DiagonalBiLSTMLayer, PixelRNN, RowLSTMLayer, causal_mask


def conv1x1(linear: torch.nn.Linear, m: Tensor) -> Tensor:
    """A 1x1 convolution with ``linear``'s weights on an NCHW map."""
    return F.conv2d(m, linear.weight[:, :, None, None], linear.bias)


def cell(gates: Tensor, c: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    i, f, g, o = gates.chunk(4, dim)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def row_lstm(layer: RowLSTMLayer, m: Tensor) -> Tensor:
    b, _, height, width = m.shape
    k = layer.kernel
    mask = causal_mask(1, k, "B").to(m)
    gates_in = F.conv2d(m, layer.w_is * mask, layer.bias, padding=(0, k // 2))  # (B, 4h, H, W)
    h = layer.h0[None, :, None].expand(b, layer.hidden, width)
    c = layer.c0[None, :, None].expand(b, layer.hidden, width)
    rows = []
    for i in range(height):
        gates = gates_in[:, :, i] + F.conv1d(h, layer.w_ss[:, :, 0], padding=k // 2)  # (B, 4h, W)
        h, c = cell(gates, c, 1)
        rows.append(h)
    return conv1x1(layer.up, torch.stack(rows, 2))


def diagonal_bilstm(layer: DiagonalBiLSTMLayer, m: Tensor) -> Tensor:
    b, _, height, width = m.shape
    x = m.permute(0, 2, 3, 1)  # (B, H, W, C)
    outputs = []
    for d in (0, 1):  # left-to-right, then right-to-left on the mirrored map
        xs = x if d == 0 else x.flip(2)
        h0 = layer.h0[d].expand(b, layer.hidden)
        c0 = layer.c0[d].expand(b, layer.hidden)
        grid: list[list[Tensor]] = []
        for i in range(height):
            row, h_left, c_left = [], h0, c0
            for j in range(width):
                above = grid[i - 1][j] if i > 0 else h0
                gates = xs[:, i, j] @ layer.w_is[d] + layer.bias[d] + torch.cat([above, h_left], -1) @ layer.w_ss[d]
                h_left, c_left = cell(gates, c_left, -1)
                row.append(h_left)
            grid.append(row)
        out = torch.stack([torch.stack(row, 1) for row in grid], 1)  # (B, H, W, h)
        outputs.append(out if d == 0 else out.flip(2))
    shifted = torch.cat([torch.zeros_like(outputs[1][:, :1]), outputs[1][:, :-1]], 1)  # down one row
    return conv1x1(layer.up, (outputs[0] + shifted).permute(0, 3, 1, 2))


def logits(model: PixelRNN, x: Tensor) -> Tensor:
    """What ``model.logits(x)`` computes, the plain way."""
    m = F.conv2d(x, model.input_conv.weight * causal_mask(7, 7, "A").to(x), model.input_conv.bias, padding=3)
    for layer in model.layers:
        m = m + (row_lstm(layer, m) if isinstance(layer, RowLSTMLayer) else diagonal_bilstm(layer, m))
    return conv1x1(model.out2, F.relu(conv1x1(model.out1, F.relu(m))))
