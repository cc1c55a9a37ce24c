"""PixelRNN generation as one C++ call a row (``csrc/pixelrnn_sampler.cpp``): every pixel of the
row, through the mask-A convolution, every layer and the head, with guidance, temperature and the
observed pixels of a completion, and for the Diagonal BiLSTM the row's right-to-left pass. The
samplers of :mod:`rnngen.models.pixelrnn_sampling` compute the same thing pixel by pixel in PyTorch
ops: the fallback (other devices and dtypes, no compiler) and the tests' oracle.

Here: the weights packed as the kernel reads them, and the state that travels from row to row
(what the rows above left behind, per layer), which resampled particles index like the images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnngen.models import kernels

if TYPE_CHECKING:
    from rnngen.models.pixelrnn import PixelRNN
    from rnngen.models.pixelrnn_sampling import Generation


class CompiledSampler:
    """A layer kind's sampler in C++ (see the module docstring); :meth:`build` returns None where
    it cannot run, and the PyTorch one runs instead."""

    diagonal: ClassVar[bool]

    def __init__(self, model: PixelRNN, n: int, width: int, gate_biases: list[Tensor | None], ops: object,
                 maps: Tensor | None = None) -> None:
        self.ops, self.kernel = ops, model.config.kernel
        first_w = model.input_conv.weight[:, 0, model.taps_a[0], model.taps_a[1]].t()  # (24, 2h), raster order
        head = [first_w, model.input_conv.bias, model.out1.weight.t(), model.out1.bias, model.out2.weight[0],
                model.out2.bias]
        self.weights = [w.detach().contiguous() for w in head + [w for layer in model.layers
                                                                  for w in self.layer_weights(layer)]]
        self.state = [s.contiguous() for layer in model.layers for s in self.initial_state(layer, n, width)]
        empty = self.weights[0].new_empty(0)
        self.gate_biases = [empty if g is None else g.contiguous() for g in gate_biases]
        #: a repair model's maps (n, H, W, layers, 2h) added to each layer's input; empty for others
        self.maps = empty if maps is None else maps.detach().contiguous()

    @classmethod
    def build(cls, model: PixelRNN, n: int, size: tuple[int, int],
              gate_biases: list[Tensor | None], maps: Tensor | None = None) -> CompiledSampler | None:
        weight = model.input_conv.weight
        ops = kernels.ops("pixelrnn_sampler", weight) if weight.dtype in (torch.float32, torch.float64) else None
        return None if ops is None else cls(model, n, size[1], gate_biases, ops, maps)

    @staticmethod
    def layer_weights(layer: nn.Module) -> list[Tensor]:
        """The layer's weights as the kernel reads them: the gates' products stacked into one matrix."""
        raise NotImplementedError

    @staticmethod
    def initial_state(layer: nn.Module, n: int, width: int) -> list[Tensor]:
        """The two state tensors above the first row."""
        raise NotImplementedError

    def row(self, run: Generation, i: int, u: Tensor, temperature: float) -> Tensor:
        """Draws row i into ``run`` (pixel = u < p); each image's logit at every pixel, ``(n, W)``."""
        observed = run.observed
        given, hidden = (observed.given, observed.mask) if observed is not None else (u.new_empty(0),) * 2
        return self.ops.draw_row(self.weights, self.state, self.gate_biases, self.maps, run.x, run.probs,
                                 u.contiguous(), given, hidden, i, temperature, run.scale, self.diagonal, self.kernel)

    def end_row(self, x: Tensor, i: int) -> None:
        """Nothing left: the row's call moved the state on."""

    def select(self, index: Tensor) -> None:
        """Keep the sequences ``index`` (particles resampled)."""
        self.state = [s[index] for s in self.state]
        self.gate_biases = [g[index] if g.numel() else g for g in self.gate_biases]
        self.maps = self.maps[index] if self.maps.numel() else self.maps


class CompiledRowSampler(CompiledSampler):
    """Row LSTM: the state is the row above's h, with k//2 zeros beyond both ends, and its c."""

    diagonal = False

    @staticmethod
    def layer_weights(layer: nn.Module) -> list[Tensor]:
        return [torch.cat([layer.input_matrix(), layer.state_matrix()]), layer.bias, layer.up.weight.t(), layer.up.bias]

    @staticmethod
    def initial_state(layer: nn.Module, n: int, width: int) -> list[Tensor]:
        half = layer.kernel // 2
        return [F.pad(layer.h0.detach().expand(n, width, -1), (0, 0, half, half)),
                layer.c0.detach().expand(n, width, -1).clone()]


class CompiledDiagonalSampler(CompiledSampler):
    """Diagonal BiLSTM: the state is the row above's h in each direction."""

    diagonal = True

    @staticmethod
    def layer_weights(layer: nn.Module) -> list[Tensor]:
        # per direction [input; state above; state left] (w_ss holds the 2x1 kernel's rows in that order)
        return [torch.cat([layer.w_is, layer.w_ss], 1), layer.bias, layer.up.weight.t(), layer.up.bias, layer.h0,
                layer.c0]

    @staticmethod
    def initial_state(layer: nn.Module, n: int, width: int) -> list[Tensor]:
        return [h.detach().expand(n, width, -1).clone() for h in layer.h0]
