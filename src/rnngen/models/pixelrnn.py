"""PixelRNN (van den Oord, Kalchbrenner and Kavukcuoglu 2016, "Pixel Recurrent Neural
Networks"): the Row LSTM and the Diagonal BiLSTM, autoregressive models with an exact
likelihood p(x) = prod_i p(x_i | x_1..x_{i-1}) over the pixels in raster order (eq. 1-2).

The network (sec. 3, as for binarized MNIST: one Bernoulli logit per pixel, sec. 5.1):

- a 7x7 convolution with mask A (it sees only the pixels before the current one, sec. 3.4)
  from the image to ``2h`` feature maps;
- ``layers`` recurrent layers, each with a residual connection (sec. 3.3): the layer's LSTM
  has ``h`` units (its gates ``4h``), its output is brought back to ``2h`` maps by a 1x1
  convolution and added to the layer's input;
- two 1x1 convolutions with ReLU (mask B; with one input channel mask B on a 1x1 kernel masks
  nothing), then the logit.

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

Learned initial states: the state "above the first row" and "left of the first column".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnngen.config import under_minimum
from rnngen.models import kernels
from rnngen.models.base import (
    Completion,
    GenerativeModel,
    LossTerms,
    SamplingError,
    bernoulli_nll,
    bf16_autocast,
)
from rnngen.models.fast.diagonal_bilstm import DiagonalLayerKernel
from rnngen.models.fast.row_lstm import RowLayerKernel, RowRecurrence
from rnngen.models.lstm import lstm_cell
from rnngen.models.pixelrnn_sampling import DiagonalSampler, Particles, RowSampler

SIZE = 28

PRESETS: dict[str, dict[str, Any]] = {
    # Table 4 of the paper: binarized MNIST, 79.20 nats with a 7-layer Diagonal BiLSTM, h = 16
    "paper": {"variant": "diagonal_bilstm", "layers": 7, "hidden": 16},
}


@dataclass(frozen=True)
class PixelRNNConfig:
    #: "" | paper (the paper's MNIST setting: Diagonal BiLSTM, 7 layers, h = 16)
    preset: str = ""
    variant: Literal["row_lstm", "diagonal_bilstm"] = "diagonal_bilstm"
    #: recurrent layers, each with a residual connection
    layers: int = 4
    #: h: LSTM units per position; the feature maps between layers have 2h channels
    hidden: int = 32
    #: Row LSTM: width k of the 1xk input-to-state and state-to-state convolutions (odd)
    kernel: int = 3
    #: channels of the ReLU 1x1 output layer
    out_hidden: int = 64
    #: dropout on each recurrent layer's output (the maps between layers and into the output
    #: layer), training only; 0 = off
    dropout: float = 0.0
    #: p(x | y): a learned per-class bias on every recurrent layer's gates (Conditional PixelCNN,
    #: van den Oord et al. 2016, eq. 4), zero at the start
    conditional: bool = False
    #: labels 0 .. classes - 1 (conditional only)
    classes: int = 10
    #: conditional only: the share of training images shown without their label (zero class
    #: biases), so the one network also learns p(x), which guidance needs (Ho and Salimans 2022)
    label_dropout: float = 0.1
    #: conditional only: classifier-free guidance scale s of the samplers, each pixel's logit
    #: l(x | no label) + s (l(x | y) - l(x | no label)); 1 = exact draws of p(x | y), > 1 truer to
    #: the class and less varied. Completion (repair) and the likelihood never use it
    guidance: float = 1.25

    def problems(self) -> list[str]:
        out = under_minimum(self, layers=1, hidden=1, kernel=1, out_hidden=1, classes=1)
        if not self.guidance >= 0:
            out.append(f"guidance: must be >= 0 (0 = the label-free model, 1 = p(x | y)), got {self.guidance}")
        for name in ("dropout", "label_dropout"):
            if not 0 <= getattr(self, name) < 1:
                out.append(f"{name}: must be in [0, 1), got {getattr(self, name)}")
        if self.conditional and self.guidance != 1 and self.label_dropout == 0:
            out.append(f"guidance: {self.guidance:g} needs a model that also learned p(x) without a label: set "
                       "label_dropout above 0 (e.g. 0.1), or guidance: 1 for plain draws of p(x | y)")
        if self.preset and self.preset not in PRESETS:
            out.append(f"preset: unknown preset {self.preset!r}; choose one of: {', '.join(PRESETS)}")
        if self.kernel % 2 == 0:
            out.append(f"kernel: must be odd (a centred 1xk convolution), got {self.kernel}")
        return out


def causal_mask(height: int, width: int, kind: Literal["A", "B"]) -> Tensor:
    """``(height, width)`` kernel mask: 1 at the taps before the centre in raster order, and at
    the centre itself for mask B (sec. 3.4); the rows below and the taps right of the centre 0."""
    mask = torch.zeros(height, width)
    cy, cx = height // 2, width // 2
    mask[:cy] = 1
    mask[cy, : cx + (kind == "B")] = 1
    return mask


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

    def __init__(self, channels: int, hidden: int, kernel: int) -> None:
        super().__init__()
        self.hidden, self.kernel = hidden, kernel
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
        ops = kernels.row_lstm(m)
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

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        #: input-to-state 1x1, per direction
        self.w_is = nn.Parameter(torch.randn(2, channels, 4 * hidden) * channels**-0.5)
        self.bias = nn.Parameter(torch.zeros(2, 4 * hidden))
        #: state-to-state 2x1 down the skewed column: rows [state above, state left] of the input
        self.w_ss = nn.Parameter(torch.randn(2, 2 * hidden, 4 * hidden) * (2 * hidden) ** -0.5)
        self.h0 = nn.Parameter(torch.zeros(2, hidden))
        self.c0 = nn.Parameter(torch.zeros(2, hidden))
        self.up = nn.Linear(hidden, channels)

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
        ops = kernels.diagonal_bilstm(m)
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


# ------------------------------------------------------------------------------- model


class PixelRNN(GenerativeModel):
    """Row LSTM or Diagonal BiLSTM PixelRNN; see the module docstring."""

    name = "pixelrnn"
    config_cls = PixelRNNConfig
    presets = PRESETS
    exact_likelihood: ClassVar[bool] = True
    sampling_fields: ClassVar[tuple[str, ...]] = ("guidance",)
    legacy_config: ClassVar[dict[str, Any]] = {"label_dropout": 0.0, "guidance": 1.0}

    def __init__(self, config: PixelRNNConfig) -> None:
        super().__init__(config)
        channels = 2 * config.hidden
        self.input_conv = nn.Conv2d(1, channels, 7, padding=3)
        self.register_buffer("mask_a", causal_mask(7, 7, "A").view(1, 1, 7, 7), persistent=False)
        #: the kernel rows and columns of the taps mask A keeps (first_layer's GEMM)
        self.taps_a = tuple(map(list, zip(*self.mask_a[0, 0].nonzero().tolist(), strict=True)))
        if config.variant == "row_lstm":
            layers = [RowLSTMLayer(channels, config.hidden, config.kernel) for _ in range(config.layers)]
        else:
            layers = [DiagonalBiLSTMLayer(channels, config.hidden) for _ in range(config.layers)]
        self.layers = nn.ModuleList(layers)
        self.out1 = nn.Linear(channels, config.out_hidden)  # the 1x1 output convolutions
        self.out2 = nn.Linear(config.out_hidden, 1)
        if config.conditional:  # per layer, a gate bias per class (and direction): V^T y of eq. 4
            dirs = 1 if config.variant == "row_lstm" else 2
            self.class_gates = nn.ModuleList(nn.Embedding(config.classes, dirs * 4 * config.hidden)
                                             for _ in range(config.layers))
            for table in self.class_gates:
                nn.init.zeros_(table.weight)  # starts as the unconditional model

    def gate_biases(self, y: Tensor | None, drop: float = 0.0) -> list[Tensor | None]:
        """Per layer, the gate bias of each image's class: ``(B, 4h)`` (Row LSTM) or
        ``(B, 2, 4h)`` (Diagonal BiLSTM); Nones for an unconditional model. With ``drop`` > 0
        each image loses its label (zero biases: the label-free model) with that probability."""
        labels = self.labels(y)
        if labels is None:
            return [None] * len(self.layers)
        dirs = 1 if self.config.variant == "row_lstm" else 2
        shape = (-1, 4 * self.config.hidden) if dirs == 1 else (-1, 2, 4 * self.config.hidden)
        biases = [table(labels).view(shape) for table in self.class_gates]
        if drop > 0:
            keep = (torch.rand(len(labels), device=labels.device) >= drop).view(-1, *[1] * (len(shape) - 1))
            biases = [b * keep for b in biases]
        return biases

    def with_sampling(self, **settings: Any) -> PixelRNN:
        if settings.get("guidance", 1) != 1 and not self.conditional:
            raise SamplingError("guidance: this model is unconditional, so there is no class to guide toward (train "
                                "one with model.pixelrnn.conditional: true and label_dropout above 0)")
        return super().with_sampling(**settings)  # type: ignore[return-value]

    # ------------------------------------------------------------------- likelihood

    def first_layer(self, x: Tensor) -> Tensor:
        """The 7x7 mask-A convolution (sec. 3.4): ``(B, 1, H, W)`` -> row-major maps ``(H, B, W, 2h)``.
        One GEMM over the 24 taps that mask A keeps (the three rows above, the three pixels left),
        unfolded straight into the layers' layout: no product with the 25 masked-out taps, and no
        copy from the convolution's ``(B, 2h, H, W)`` into it."""
        b, _, height, width = x.shape
        rows, cols = self.taps_a  # kernel row 3 is the pixel's own row
        padded = F.pad(x[:, 0], (3, 3, 3, 0))  # zeros above and beside the image: (B, H + 3, W + 6)
        patches = torch.stack([padded[:, r : r + height, c : c + width].transpose(0, 1)
                               for r, c in zip(rows, cols, strict=True)], -1)  # (H, B, W, 24)
        weight = self.input_conv.weight[:, 0, rows, cols]  # (2h, 24)
        return torch.addmm(self.input_conv.bias, patches.flatten(0, 2), weight.t()).view(height, b, width, -1)

    def first_layer_at(self, x: Tensor, i: int, j: int) -> Tensor:
        """The mask-A convolution at pixel (i, j) only, ``(n, 2h)`` (generation): the 7x7 kernel's
        rows i-3..i over columns j-3..j+3 (mask A zeroes the rest)."""
        patch = F.pad(x, (3, 3, 3, 0))[:, :, i : i + 4, j : j + 7]
        weight = self.input_conv.weight[..., :4, :] * self.mask_a[..., :4, :]
        return torch.einsum("nchw,ochw->no", patch, weight) + self.input_conv.bias

    def head(self, m: Tensor) -> Tensor:
        """Output layers (sec. 3.4) on channels-last maps: ReLU, 1x1, ReLU, 1x1 -> one logit."""
        return self.out2(F.relu(self.out1(F.relu(m))))

    def logits(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Bernoulli logits of p(x_i = 1 | x_<i) (of p(x_i = 1 | x_<i, y) for a conditional
        model, labels ``y`` ``(B,)``) for every pixel, ``(B, 1, H, W)``."""
        m = self.first_layer(x)  # row-major, channels last from here: (H, B, W, 2h)
        drop = self.config.label_dropout if self.training else 0.0
        for layer, bias in zip(self.layers, self.gate_biases(y, drop), strict=True):
            m = layer(m, bias)  # residual inside (sec. 3.3)
            if self.training and self.config.dropout:
                m = F.dropout(m, self.config.dropout)
        return self.head(m).permute(1, 3, 0, 2)

    def forward(self, x: Tensor, y: Tensor | None = None) -> LossTerms:
        nll = bernoulli_nll(self.logits(x, y), x)
        return LossTerms(recon=nll, kl=torch.zeros_like(nll))

    def log_weights(self, x: Tensor, k: int, generator: torch.Generator | None = None,
                    y: Tensor | None = None) -> Tensor:
        return (-bernoulli_nll(self.logits(x, y), x)).expand(k, -1)

    def log_likelihood(self, x: Tensor, k: int = 1, generator: torch.Generator | None = None,
                       y: Tensor | None = None) -> Tensor:
        return -bernoulli_nll(self.logits(x, y), x)

    def reconstruct(self, x: Tensor, generator: torch.Generator | None = None, y: Tensor | None = None) -> Tensor:
        """p(x_i = 1 | the true x_<i) for every pixel: the model's prediction of each pixel
        from the ones before it (teacher forcing)."""
        return torch.sigmoid(self.logits(x, y))

    # -------------------------------------------------------------------- sampling

    @torch.no_grad()
    def generate(
        self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0, *,
        size: tuple[int, int] = (SIZE, SIZE), given: Tensor | None = None, mask: Tensor | None = None,
        particles: int = 1, on_row: Any = None, y: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Draw images pixel by pixel in raster order, each pixel computing one position (Row
        LSTM) or one diagonal step (Diagonal BiLSTM) per layer with the rows above cached (states
        and maps), never a full forward per pixel.

        With ``given`` and ``mask`` ``(n, 1, H, W)``, pixels where ``mask`` is False are taken
        from ``given`` instead of sampled, and ``particles`` sequences per image are run as a
        particle filter (:class:`~rnngen.models.pixelrnn_sampling.Particles`), one of them
        returned. Returns ``(images, probs)``: the binary images and p(x_i = 1 | x_<i) at every
        pixel along the way. ``on_row(i, images)`` is called after each row (the pictures of
        generation). A conditional model draws image b of class ``y[b]``, with the config's
        ``guidance`` when nothing is ``given``.
        """
        device = self.input_conv.weight.device
        height, width = size
        labels = self.labels(y, n)
        smc = None
        if given is not None and mask is not None:
            given, mask = given.repeat_interleave(particles, 0), mask.repeat_interleave(particles, 0)
            labels = None if labels is None else labels.repeat_interleave(particles, 0)
            smc = Particles(n, particles, device) if particles > 1 else None
            n *= particles
        biases = self.gate_biases(labels)
        scale = self.config.guidance if labels is not None and given is None else 1.0
        guided = scale != 1
        if guided:  # a label-free twin of every image runs beside it (rows n..2n-1)
            biases = [torch.cat([b, torch.zeros_like(b)]) for b in biases]
        x = torch.zeros(2 * n if guided else n, 1, height, width, device=device, dtype=self.input_conv.weight.dtype)
        probs = torch.zeros_like(x[:n])
        sampler_cls = RowSampler if self.config.variant == "row_lstm" else DiagonalSampler
        sampler = sampler_cls(self, len(x), size, biases)
        for i in range(height):
            for j in range(width):
                logit = sampler.logit(x, i, j)  # (n,), or (2n,) guided
                if guided:  # classifier-free guidance (Ho and Salimans 2022, eq. 6) on the logits
                    cond, free = logit.chunk(2)
                    logit = free + scale * (cond - free)
                p = torch.sigmoid(logit / temperature)
                drawn = torch.bernoulli(p, generator=generator)
                if given is not None and mask is not None:
                    observed, value = ~mask[:, 0, i, j], given[:, 0, i, j]
                    drawn = torch.where(observed, value, drawn)
                    if smc is not None:
                        smc.observe(logit, value, observed)
                x[:n, 0, i, j] = drawn
                if guided:
                    x[n:, 0, i, j] = drawn  # the label-free twin follows the drawn pixels
                probs[:, 0, i, j] = p
            sampler.end_row(x, i)
            keep = smc.resample(generator) if smc is not None and i < height - 1 else None
            if keep is not None:
                x, probs = x[keep], probs[keep]
                sampler.select(keep)
            if on_row is not None:
                on_row(i, x[:n])
        if smc is not None:
            chosen = smc.choose(generator)
            x, probs = x[chosen], probs[chosen]
        return x[:n], probs

    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0,
               y: Tensor | None = None) -> Tensor:
        """New images: each pixel drawn from p(x_i | x_<i) (logits divided by ``temperature``),
        returned as the Bernoulli probabilities along the drawn path (grey levels, like the
        other models' Bernoulli means)."""
        return self.generate(n, generator, temperature, y=y)[1]

    def sample_binary(self, n: int, generator: torch.Generator | None = None, y: Tensor | None = None) -> Tensor:
        """The drawn pixels themselves: an exact sample of p(x) (of p(x | y); guided when the
        config's ``guidance`` is not 1). Redrawing each pixel from the probabilities
        :meth:`sample` returns would not be one."""
        return self.generate(n, generator, y=y)[0]

    def complete(
        self, x: Tensor, mask: Tensor, effort: int, generator: torch.Generator | None = None,
        y: Tensor | None = None,
    ) -> Completion:
        """The hidden pixels drawn from p(hidden | observed) by a particle filter in raster order
        with ``effort`` particles per image (:class:`~rnngen.models.pixelrnn_sampling.Particles`):
        every observed pixel, above or below a hidden one, weighs in. When every observed pixel
        precedes every hidden one (the bottom half) ancestral sampling is already exact, and one
        particle is run. ``means`` are p(x_i = 1 | x_<i) along the drawn path."""
        flat = mask.flatten(1)
        position = torch.arange(flat.shape[1], device=flat.device)
        first_hidden = torch.where(flat, position, flat.shape[1]).min(1, keepdim=True).values
        looks_ahead = bool((~flat & (position > first_hidden)).any())
        given = (x > 0.5).to(x.dtype)  # the likelihood's view of the observed pixels: binary
        drawn, probs = self.generate(len(x), generator, size=(x.shape[-2], x.shape[-1]), given=given, mask=mask,
                                     particles=effort if looks_ahead else 1, y=y)
        return Completion(drawn=torch.where(mask, drawn, x), means=torch.where(mask, probs, x))

    def sample_steps(self, n: int, generator: torch.Generator | None = None, y: Tensor | None = None) -> Tensor:
        """``(28, n, 1, 28, 28)``: the image after each row is generated (rows not yet drawn grey)."""
        frames = []

        def keep(i: int, x: Tensor) -> None:
            frame = torch.full_like(x, 0.5)
            frame[:, :, : i + 1] = x[:, :, : i + 1]
            frames.append(frame.clone())

        self.generate(n, generator, on_row=keep, y=y)
        return torch.stack(frames)
