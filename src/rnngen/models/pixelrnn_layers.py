"""The two recurrent layers of PixelRNN (van den Oord, Kalchbrenner and Kavukcuoglu 2016), each
with its residual connection (sec. 3.3), on row-major maps ``(H, B, W, C)``. The model
(:mod:`rnngen.models.pixelrnn`) picks one kind from its config's ``variant``; everything after
that asks the layer: the shape of a class's gate bias (``gate_shape``) and the generation step
of its kind (``sampler``, from :mod:`rnngen.models.pixelrnn_sampling`).

**Row LSTM** (sec. 3.1): row by row, top to bottom. The input-to-state part is a 1xk
convolution along the row with mask B (the pixel itself and the ``k // 2`` to its left),
computed for the whole map at once, outside the loop; the state-to-state part is a 1xk
convolution over the previous row's hidden state; then the LSTM cell (eq. 3).

**Diagonal BiLSTM** (sec. 3.2): the map is skewed to n x (2n-1) (row i shifted right by i), so
each column of the skewed map is a diagonal of the image. Input-to-state: a 1x1 convolution
(mask B); state-to-state: a 2x1 convolution down each skewed column (the state of the pixel to
the left and of the pixel above), column by column. The right-to-left direction runs on the
mirrored image (not the mirrored skewed map), is mirrored back and shifted down one row, so it
adds only context from the rows above; the two directions' outputs are added.

Both directions of the BiLSTM run batched (one batched GEMM per column, per-direction
weights), input-to-state products are hoisted out of the loops, and the gate nonlinearities
act on one tensor each (one sigmoid for the three gates, one tanh). On the CPU each layer of
either variant is one C++ kernel with its own backward: the Row LSTM's in
:mod:`rnngen.models.fast.row_lstm`, the Diagonal BiLSTM's (the column loop run diagonal by
diagonal, no skewed map built) in :mod:`rnngen.models.fast.diagonal_bilstm`; generation in
:mod:`rnngen.models.pixelrnn_sampling`. The plain per-row / per-pixel implementation of the same
network is :mod:`rnngen.models.reference.pixelrnn`, which the tests check this one against
(values and gradients).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnngen.models import kernels
from rnngen.models.base import bf16_autocast
from rnngen.models.fast.diagonal_bilstm import DiagonalLayerKernel
from rnngen.models.fast.pixelrnn_sampler import CompiledDiagonalSampler, CompiledRowSampler
from rnngen.models.fast.row_lstm import RowLayerKernel, RowRecurrence
from rnngen.models.lstm import lstm_cell
from rnngen.models.pixelrnn_sampling import DiagonalSampler, RowSampler

if TYPE_CHECKING:
    from rnngen.models.pixelrnn import PixelRNNConfig

# ----------------------------------------------------------------------------- skewing


def skew(x: Tensor) -> Tensor:
    """``(..., n, m, C)`` -> ``(..., n, n + m - 1, C)``: row i shifted right by i (sec. 3.2).
    Padding each row to n + m, flattening and cutting n elements off the end shifts row i by i."""
    *lead, n, m, c = x.shape
    flat = F.pad(x, (0, 0, 0, n)).reshape(*lead, n * (n + m), c)
    return flat[..., : n * (n + m - 1), :].reshape(*lead, n, n + m - 1, c)


def unskew(x: Tensor, m: int) -> Tensor:
    """Inverse of :func:`skew`: ``(..., n, n + m - 1, C)`` -> ``(..., n, m, C)``."""
    *lead, n, w, c = x.shape
    flat = F.pad(x.reshape(*lead, n * w, c), (0, 0, 0, n))
    return flat.reshape(*lead, n, w + 1, c)[..., :m, :]


# ------------------------------------------------------------------------------ layers


class RowLSTMLayer(nn.Module):
    """One Row LSTM layer (sec. 3.1) plus its residual 1x1 upsampling (sec. 3.3). It works on
    row-major maps ``(H, B, W, C)``, so that a row of the whole batch is one contiguous block."""

    #: generation's per-pixel step for this kind of layer, in PyTorch ops and in C++
    sampler: ClassVar[type[RowSampler]] = RowSampler
    compiled_sampler: ClassVar[type[CompiledRowSampler]] = CompiledRowSampler

    def __init__(self, channels: int, hidden: int, kernel: int) -> None:
        super().__init__()
        self.hidden, self.kernel = hidden, kernel
        #: one image's gate bias (a class's, conditional models): one for the 4h gates
        self.gate_shape = (4 * hidden,)
        scale = (channels * kernel) ** -0.5
        #: input-to-state 1xk (mask B: the taps right of the centre are never used)
        self.w_is = nn.Parameter(torch.randn(4 * hidden, channels, 1, kernel) * scale)
        self.bias = nn.Parameter(torch.zeros(4 * hidden))
        #: state-to-state 1xk over the previous row's state
        self.w_ss = nn.Parameter(torch.randn(4 * hidden, hidden, 1, kernel) * (hidden * kernel) ** -0.5)
        self.h0 = nn.Parameter(torch.zeros(hidden))
        self.c0 = nn.Parameter(torch.zeros(hidden))
        #: residual: the h outputs back to the 2h maps (a 1x1 convolution)
        self.up = nn.Linear(hidden, channels)

    @classmethod
    def for_config(cls, config: PixelRNNConfig) -> RowLSTMLayer:
        """One layer of the model ``config`` describes: 2h maps in and out, 1xk kernels."""
        return cls(2 * config.hidden, config.hidden, config.kernel)

    def input_matrix(self) -> Tensor:
        """The input-to-state kernel's mask-B taps (the centre and the ``k // 2`` left of it) as
        a ``((k // 2 + 1) C, 4h)`` matrix, tap-major."""
        return self.w_is[:, :, 0, : self.kernel // 2 + 1].permute(2, 1, 0).reshape(-1, 4 * self.hidden)

    def input_to_state(self, m: Tensor) -> Tensor:
        """Maps ``(H, B, W, C)`` -> the gates' input part ``(H, B, W, 4h)``: one GEMM over the
        unfolded rows."""
        half, width = self.kernel // 2, m.shape[2]
        padded = F.pad(m, (0, 0, half, 0))  # zeros left of the first column
        unfolded = torch.cat([padded[:, :, t : t + width] for t in range(half + 1)], -1)  # (H, B, W, (half+1) C)
        return torch.addmm(self.bias, unfolded.flatten(0, 2), self.input_matrix()).view(*m.shape[:3], 4 * self.hidden)

    def state_matrix(self) -> Tensor:
        """The state-to-state kernel as a ``(k h, 4h)`` matrix, tap-major."""
        return self.w_ss[:, :, 0, :].permute(2, 1, 0).reshape(self.kernel * self.hidden, 4 * self.hidden)

    def forward(self, m: Tensor, gate_bias: Tensor | None = None) -> Tensor:
        """Maps ``(H, B, W, C)`` -> the layer's output ``(H, B, W, C)``, the residual included;
        ``gate_bias`` ``(B, 4h)`` is added to every position's gates (a class's bias)."""
        low_precision = bf16_autocast(m)
        ops = kernels.ops("row_lstm", m)
        if ops is not None:  # the C++ layer: bfloat16 in and out under autocast, fp32 cells inside
            dtype = torch.bfloat16 if low_precision else m.dtype
            with torch.autocast(m.device.type, enabled=False):
                w_all = torch.cat([self.input_matrix(), self.state_matrix()]).to(dtype)
                bias = self.bias if gate_bias is None else self.bias + gate_bias.float()  # (4h) or (B, 4h)
                return RowLayerKernel.apply(m.to(dtype).contiguous(), w_all, bias, self.h0, self.c0,
                                             self.up.weight.t().to(dtype), self.up.bias.to(dtype), self.kernel, ops)
        gates_in = self.input_to_state(m)
        if low_precision:
            gates_in = gates_in.float()  # autocast gave bfloat16; the cell runs in fp32
        if gate_bias is not None:
            gates_in = gates_in + gate_bias.to(gates_in.dtype)[None, :, None, :]
        with torch.autocast(m.device.type, enabled=False):  # the loop casts its own GEMM operands
            w_ss = self.state_matrix().to(gates_in.dtype)
            hs = RowRecurrence.apply(gates_in, w_ss, self.h0, self.c0, self.kernel, low_precision)
        return m + self.up(hs)  # residual (sec. 3.3)


class DiagonalBiLSTMLayer(nn.Module):
    """One Diagonal BiLSTM layer (sec. 3.2) plus its residual 1x1 upsampling (sec. 3.3), on
    row-major maps ``(H, B, W, C)`` like the Row LSTM's. Parameters are stacked over the two
    directions: [left-to-right, right-to-left]."""

    #: generation's per-pixel step for this kind of layer, in PyTorch ops and in C++
    sampler: ClassVar[type[DiagonalSampler]] = DiagonalSampler
    compiled_sampler: ClassVar[type[CompiledDiagonalSampler]] = CompiledDiagonalSampler

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        #: one image's gate bias (a class's, conditional models): one per direction
        self.gate_shape = (2, 4 * hidden)
        #: input-to-state 1x1, per direction
        self.w_is = nn.Parameter(torch.randn(2, channels, 4 * hidden) * channels**-0.5)
        self.bias = nn.Parameter(torch.zeros(2, 4 * hidden))
        #: state-to-state 2x1 down the skewed column: rows [state above, state left] of the input
        self.w_ss = nn.Parameter(torch.randn(2, 2 * hidden, 4 * hidden) * (2 * hidden) ** -0.5)
        self.h0 = nn.Parameter(torch.zeros(2, hidden))
        self.c0 = nn.Parameter(torch.zeros(2, hidden))
        self.up = nn.Linear(hidden, channels)

    @classmethod
    def for_config(cls, config: PixelRNNConfig) -> DiagonalBiLSTMLayer:
        """One layer of the model ``config`` describes: 2h maps in and out (its kernels are fixed,
        1x1 and 2x1: ``config.kernel`` is the Row LSTM's)."""
        return cls(2 * config.hidden, config.hidden)

    def directions(self, m: Tensor, gate_bias: Tensor | None = None) -> Tensor:
        """Maps ``(H, B, W, C)`` -> each direction's hidden states ``(2, H, B, W, h)`` in the
        image's own orientation (the right-to-left one not yet shifted); ``gate_bias``
        ``(B, 2, 4h)``, per image and direction, is added to every position's gates.

        Layout: direction, row, column, then batch and features, so that skewing (over row and
        column) and taking one skewed column are views, and their backward copies no strided
        tensors."""
        height, b, width, channels = m.shape
        hid = self.hidden
        # input-to-state for both directions in one product; the reverse one sees the mirror
        w = self.w_is.permute(1, 0, 2).reshape(channels, 8 * hid)  # (C, [dir, 4h])
        gates_in = (m.permute(0, 2, 1, 3) @ w).view(height, width, b, 2, 4 * hid).permute(3, 0, 1, 2, 4)
        gates_in = torch.stack([gates_in[0], gates_in[1].flip(1)]) + self.bias[:, None, None, None]  # (2, H, W, B, 4h)
        if gate_bias is not None:
            gates_in = gates_in + gate_bias.transpose(0, 1)[:, None, None]
        skewed = skew(gates_in.reshape(2, height, width, b * 4 * hid)).unbind(2)  # T x (2, H, B 4h)
        steps = len(skewed)
        # column t holds pixel (i, t - i); the state left of column 0 is the initial state
        rows = torch.arange(height, device=m.device)
        valid = [((t - 1 - rows >= 0) & (t - 1 - rows < width)).to(m.dtype).view(1, height, 1, 1)
                 for t in range(steps)]
        h0 = self.h0[:, None, None, :].expand(2, height, b, hid)
        c0 = self.c0[:, None, None, :].expand(2, height, b, hid)
        # the 2x1 kernel as [above | left] weights side by side: one batched GEMM a column
        w_above, w_left = self.w_ss.unflatten(1, (2, hid)).unbind(1)  # (2, h, 4h) each
        w = torch.cat([w_above, w_left], -1)  # (2, h, 8h)
        # row 0 has no row above: its "above" state is the initial state, a constant term
        above0 = torch.bmm(self.h0.unsqueeze(1), w_above)  # (2, 1, 4h)
        first_row = F.pad(above0.unsqueeze(1), (0, 0, 0, 0, 0, height - 1))  # (2, H, 1, 4h): row 0 only
        h, c = h0, c0
        outs = []
        for t in range(steps):
            # arithmetic, not torch.where: its backward would fill zero tensors every step
            h = h0 + valid[t] * (h - h0)
            c = c0 + valid[t] * (c - c0)
            above, left = torch.bmm(h.reshape(2, height * b, hid), w).view(2, height, b, 2, 4 * hid).unbind(3)
            # the state of (i - 1, j) was in the previous column, a row up: shift down one row
            gates = skewed[t].view(2, height, b, 4 * hid) + left + F.pad(above, (0, 0, 0, 0, 1, -1)) + first_row
            h, c = lstm_cell(gates, c)
            outs.append(h)
        out = unskew(torch.stack(outs, 2).view(2, height, steps, b * hid), width)  # (2, H, W, B h)
        out = out.view(2, height, width, b, hid).permute(0, 1, 3, 2, 4)  # (2, H, B, W, h)
        return torch.stack([out[0], out[1].flip(2)])

    def forward(self, m: Tensor, gate_bias: Tensor | None = None) -> Tensor:
        """Maps ``(H, B, W, C)`` -> the layer's output ``(H, B, W, C)``, the residual included."""
        ops = kernels.ops("diagonal_bilstm", m)
        if ops is not None:  # the C++ layer: bfloat16 GEMM operands under autocast, fp32 cells inside
            dtype = torch.bfloat16 if bf16_autocast(m) else m.dtype
            with torch.autocast(m.device.type, enabled=False):
                w_is = self.w_is.permute(1, 0, 2).flatten(1).to(dtype)  # (C, [direction, 4h])
                bias = self.bias if gate_bias is None else self.bias + gate_bias.float()  # (2, 4h) or (B, 2, 4h)
                return DiagonalLayerKernel.apply(m.to(dtype).contiguous(), w_is, bias, self.w_ss.to(dtype),
                                                 self.h0, self.c0, self.up.weight.t().to(dtype),
                                                 self.up.bias.to(dtype), ops)
        fwd, rev = self.directions(m, gate_bias)
        rev = F.pad(rev, (0, 0, 0, 0, 0, 0, 1, 0))[:-1]  # shifted down one row: rows above only
        return m + self.up(fwd + rev)  # residual (sec. 3.3)
