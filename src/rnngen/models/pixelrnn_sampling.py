"""PixelRNN generation, pixel by pixel in raster order (van den Oord et al. 2016, sec. 2): each
pixel computes one position (Row LSTM) or one diagonal step (Diagonal BiLSTM) per layer with the
rows above cached, never a full forward pass per pixel. Each layer kind names its samplers
(``sampler`` and ``compiled_sampler`` on the classes of :mod:`rnngen.models.pixelrnn_layers`):
the C++ one (:mod:`rnngen.models.fast.pixelrnn_sampler`) where it builds, else the PyTorch one
here, which computes the same draws. :class:`Generation`, one call of
:meth:`rnngen.models.pixelrnn.PixelRNN.generate`, drives it: ``row(run, i, u, temperature)`` for
each row (pixel = u < p, one uniform a pixel drawn for the row), ``end_row(x, i)`` after it, and
``select(index)`` when :class:`Particles` resamples. Around it: classifier-free guidance (a
label-free twin of every image) and the observed pixels of a completion, weighed by :class:`Particles`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from rnngen.models.lstm import lstm_cell

if TYPE_CHECKING:
    from rnngen.models.pixelrnn import PixelRNN


class Sampler(Protocol):
    """What :class:`Generation` asks of a layer kind's sampler (:class:`RowSampler`,
    :class:`DiagonalSampler`, or their compiled twins)."""

    def row(self, run: Generation, i: int, u: Tensor, temperature: float) -> Tensor:
        """Draws row i of ``run``'s images (:meth:`Generation.put`); returns each image's logit
        at every pixel of the row, ``(n, W)``."""

    def end_row(self, x: Tensor, i: int) -> None:
        """Row i is complete: what row i + 1 reads of it."""

    def select(self, index: Tensor) -> None:
        """Keep the sequences ``index`` (particles resampled)."""


class PixelByPixel:
    """A PyTorch sampler's row: ``logit(x, i, j)`` of every sequence, pixel by pixel."""

    model: PixelRNN
    #: a repair model's maps ``(n, H, W, layers, 2h)`` added to each layer's input, or None
    maps: Tensor | None = None

    def layer_input(self, m: Tensor, i: int, j: int, layer: int) -> Tensor:
        """``m`` ``(n, 2h)`` as layer ``layer`` takes it at (i, j): a repair model adds its map."""
        return m if self.maps is None else m + self.maps[:, i, j, layer]

    def logit(self, x: Tensor, i: int, j: int) -> Tensor:
        raise NotImplementedError

    def row(self, run: Generation, i: int, u: Tensor, temperature: float) -> Tensor:
        return torch.stack([run.put(self.logit(run.x, i, j), i, j, u[:, j], temperature)
                            for j in range(run.x.shape[-1])], 1)


class RowSampler(PixelByPixel):
    """Row LSTM generation, pixel by pixel, one position per layer. A Row LSTM state at (i, j)
    depends on the row above (cached) and on the layer's input at (i, j - k//2 .. j) only (there
    is no recurrence along the row, sec. 3.1), so each pixel computes column j of every layer
    from this row's inputs, cached as they are made: one position, not the whole row, a pixel."""

    def __init__(self, model: PixelRNN, n: int, size: tuple[int, int], gate_biases: list[Tensor | None],
                 maps: Tensor | None = None) -> None:
        self.model, self.gate_biases = model, gate_biases  # per layer: (n, 4h) of a conditional model, or None
        self.maps = maps
        width, cfg = size[1], model.config
        self.half, channels = cfg.kernel // 2, 2 * cfg.hidden
        like = {"device": model.input_conv.weight.device, "dtype": model.input_conv.weight.dtype}
        self.w_is = [layer.input_matrix() for layer in model.layers]
        self.w_ss = [layer.state_matrix() for layer in model.layers]
        pad = (0, 0, self.half, self.half)
        # per layer: this row's inputs, zeros left of the row (n, k//2 + W, C); the row above's
        # h with zeros beyond both ends (n, k//2 + W + k//2, h) and its c (n, W, h); the same
        # two for this row, filled as it is generated
        self.inputs = [torch.zeros(n, self.half + width, channels, **like) for _ in model.layers]
        self.h_above = [F.pad(layer.h0.expand(n, width, cfg.hidden), pad) for layer in model.layers]
        self.c_above = [layer.c0.expand(n, width, cfg.hidden).clone() for layer in model.layers]
        self.h_row = [torch.zeros_like(h) for h in self.h_above]
        self.c_row = [torch.zeros_like(c) for c in self.c_above]

    def logit(self, x: Tensor, i: int, j: int) -> Tensor:
        model, n, half = self.model, len(x), self.half
        m = model.first_layer_at(x, i, j)  # (n, 2h)
        for l_idx, layer in enumerate(model.layers):
            m = self.layer_input(m, i, j, l_idx)
            self.inputs[l_idx][:, half + j] = m
            taps_in = self.inputs[l_idx][:, j : j + half + 1].reshape(n, -1)  # inputs at j - k//2 .. j
            taps_h = self.h_above[l_idx][:, j : j + 2 * half + 1].reshape(n, -1)  # states at j - k//2 .. j + k//2
            gates = torch.addmm(layer.bias, taps_in, self.w_is[l_idx]) + taps_h @ self.w_ss[l_idx]
            if self.gate_biases[l_idx] is not None:
                gates = gates + self.gate_biases[l_idx]
            h, c = lstm_cell(gates, self.c_above[l_idx][:, j])
            self.h_row[l_idx][:, half + j], self.c_row[l_idx][:, j] = h, c
            m = m + layer.up(h)  # residual (sec. 3.3)
        return model.head(m)[:, 0]

    def end_row(self, x: Tensor, i: int) -> None:
        """Row i is complete: its states become the row above (the buffers swap; every
        position of the new row is written before it is read, the zero ends stay zero)."""
        self.h_above, self.h_row = self.h_row, self.h_above
        self.c_above, self.c_row = self.c_row, self.c_above

    def select(self, index: Tensor) -> None:
        """After ``end_row``: keep the sequences ``index`` (the next row's inputs and states
        are written before they are read, so only the row above travels)."""
        self.h_above = [h[index] for h in self.h_above]
        self.c_above = [c[index] for c in self.c_above]
        self.gate_biases = [None if g is None else g[index] for g in self.gate_biases]
        self.maps = None if self.maps is None else self.maps[index]


class DiagonalSampler(PixelByPixel):
    """Diagonal BiLSTM generation, pixel by pixel. Left-to-right states at (i, j) come from
    (i, j - 1) (this row, just computed) and (i - 1, j) (cached); the right-to-left direction
    adds, shifted down a row, only context from the rows above, so it is run over a row once
    that row is complete, from the layer inputs cached while generating it."""

    def __init__(self, model: PixelRNN, n: int, size: tuple[int, int], gate_biases: list[Tensor | None],
                 maps: Tensor | None = None) -> None:
        self.model, self.gate_biases = model, gate_biases  # per layer: (n, 2, 4h) of a conditional model, or None
        self.maps = maps
        width = size[1]
        hidden, channels, layers = model.config.hidden, 2 * model.config.hidden, len(model.layers)
        like = {"device": model.input_conv.weight.device, "dtype": model.input_conv.weight.dtype}
        self.width = width
        # per layer: forward states of the row above, (n, W, h); the reverse direction's
        # output of the row above, already shifted: what row i adds, (n, W, h)
        self.above_f = [layer.h0[0].expand(n, width, hidden) for layer in model.layers]
        self.above_r = [layer.h0[1].expand(n, width, hidden) for layer in model.layers]
        self.rev_out = [torch.zeros(n, width, hidden, **like) for _ in model.layers]
        self.inputs = torch.zeros(layers, n, width, channels, **like)  # layer inputs, this row
        self.row_f = [torch.zeros(n, width, hidden, **like) for _ in model.layers]
        self.left = [(layer.h0[0].expand(n, hidden), layer.c0[0].expand(n, hidden)) for layer in model.layers]

    def logit(self, x: Tensor, i: int, j: int) -> Tensor:
        model = self.model
        m = model.first_layer_at(x, i, j)  # (n, 2h)
        for l_idx, layer in enumerate(model.layers):
            m = self.layer_input(m, i, j, l_idx)
            self.inputs[l_idx, :, j] = m
            if j == 0:
                self.left[l_idx] = (layer.h0[0].expand(len(m), layer.hidden), layer.c0[0].expand(len(m), layer.hidden))
            h_left, c_left = self.left[l_idx]
            state = torch.cat([self.above_f[l_idx][:, j], h_left], -1)  # [above, left]
            gates = m @ layer.w_is[0] + layer.bias[0] + state @ layer.w_ss[0]
            if self.gate_biases[l_idx] is not None:
                gates = gates + self.gate_biases[l_idx][:, 0]
            h, c = lstm_cell(gates, c_left)
            self.left[l_idx] = (h, c)
            self.row_f[l_idx][:, j] = h
            m = m + layer.up(h + self.rev_out[l_idx][:, j])
        return model.head(m)[:, 0]

    def end_row(self, x: Tensor, i: int) -> None:
        """Row i is complete: run the right-to-left direction over it (from its right end),
        which row i + 1 receives after the shift."""
        for l_idx, layer in enumerate(self.model.layers):
            n = self.inputs.shape[1]
            h, c = layer.h0[1].expand(n, layer.hidden), layer.c0[1].expand(n, layer.hidden)
            row_r = torch.zeros_like(self.row_f[l_idx])
            for j in reversed(range(self.width)):
                state = torch.cat([self.above_r[l_idx][:, j], h], -1)
                gates = self.inputs[l_idx, :, j] @ layer.w_is[1] + layer.bias[1] + state @ layer.w_ss[1]
                if self.gate_biases[l_idx] is not None:
                    gates = gates + self.gate_biases[l_idx][:, 1]
                h, c = lstm_cell(gates, c)
                row_r[:, j] = h
            self.above_r[l_idx] = row_r
            self.rev_out[l_idx] = row_r
            self.above_f[l_idx] = self.row_f[l_idx].clone()

    def select(self, index: Tensor) -> None:
        """After ``end_row``: keep the sequences ``index`` (what the rows above left behind)."""
        for states in (self.above_f, self.above_r, self.rev_out):
            states[:] = [s[index] for s in states]
        self.gate_biases = [None if g is None else g[index] for g in self.gate_biases]
        self.maps = None if self.maps is None else self.maps[index]


class Particles:
    """Sequential Monte Carlo in raster order (the bootstrap particle filter of Gordon, Salmond
    and Smith 1993; Doucet, de Freitas and Gordon 2001, ch. 1) for p(hidden | observed):
    ``k`` sequences per image are generated side by side, each hidden pixel drawn from the
    model's p(x_i | x_<i) (the proposal), each observed pixel weighting its sequence by
    p(x_i | x_<i) (the incremental weight of that proposal). After a row, the sequences of an
    image whose effective sample size fell below ``k / 2`` are resampled (systematic); at the
    end one sequence per image is drawn by weight. As ``k`` grows this is a draw from
    p(hidden | observed) whatever the mask; with no observed pixel after a hidden one every
    weight is equal and one sequence is the exact ancestral draw.

    Sequences are laid out image-major: rows ``b * k .. b * k + k - 1`` belong to image ``b``.
    """

    def __init__(self, n: int, k: int, device: torch.device, classes: int = 0) -> None:
        self.n, self.k = n, k
        self.log_w = torch.zeros(n, k, dtype=torch.float64, device=device)
        #: with ``classes`` (a class-conditional model asked no class), each sequence's class,
        #: round robin; their start weights are p(y) over the share of sequences holding y, so
        #: the weighted sequences stand for p(y) exactly and the filter runs on p(x, y)
        self.classes = torch.arange(k, device=device) % classes if classes else None
        if self.classes is not None:
            share = torch.bincount(self.classes, minlength=classes)[self.classes].double() / k
            self.log_w += -math.log(classes) - share.log()
        self.first = (torch.arange(n, device=device) * k).unsqueeze(1)  # (n, 1)
        #: the log mean weights of the resampled stretches so far (log_evidence's sum)
        self.log_z = torch.zeros(n, dtype=torch.float64, device=device)

    def log_evidence(self) -> Tensor:
        """``(n,)`` the filter's estimate of log p(observed): the sum over the stretches between
        resamplings of the log mean weight, unbiased in p (Del Moral 2004; Doucet and Johansen
        2011, eq. 31)."""
        return self.log_z + torch.logsumexp(self.log_w, 1) - math.log(self.k)

    def observe(self, logit: Tensor, value: Tensor, observed: Tensor) -> None:
        """Weight every sequence by log p(x_i = value | x_<i) at its observed pixels (a row's)."""
        log_p = torch.where(value > 0.5, F.logsigmoid(logit), F.logsigmoid(-logit))
        self.log_w += torch.where(observed, log_p, torch.zeros_like(log_p)).double().sum(1).view(self.n, self.k)

    def resample(self, generator: torch.Generator | None) -> Tensor | None:
        """Sequences to keep (an index over all ``n * k``), or None when no image needs it."""
        w = torch.softmax(self.log_w, 1)
        low = 1.0 / w.square().sum(1) < self.k / 2  # effective sample size (Kong et al. 1994)
        if not low.any():
            return None
        # systematic resampling (Kitagawa 1996): one uniform per image, k evenly spaced points;
        # point p keeps sequence i where cumsum[i - 1] <= p < cumsum[i]
        u = torch.rand(self.n, 1, generator=generator, device=w.device, dtype=w.dtype)
        points = (u + torch.arange(self.k, device=w.device, dtype=w.dtype)) / self.k
        drawn = torch.searchsorted(w.cumsum(1), points, side="right").clamp(max=self.k - 1)
        keep = torch.where(low.unsqueeze(1), drawn, torch.arange(self.k, device=w.device))
        self.log_z += torch.where(low, torch.logsumexp(self.log_w, 1) - math.log(self.k), 0.0)
        self.log_w = torch.where(low.unsqueeze(1), torch.zeros_like(self.log_w), self.log_w)
        return (self.first + keep).flatten()

    def choose(self, generator: torch.Generator | None) -> Tensor:
        """One sequence per image, drawn by weight: an index of ``n``."""
        w = torch.softmax(self.log_w, 1).float()
        return self.first[:, 0] + torch.multinomial(w, 1, generator=generator)[:, 0]


@dataclass
class Observed:
    """A completion's observed pixels, per sequence: ``given`` where ``mask`` is False; each one
    weighs its sequence in ``particles`` (None: one sequence per image)."""

    given: Tensor
    mask: Tensor
    particles: Particles | None

    def keep(self, drawn: Tensor, i: int, j: int) -> Tensor:
        """``drawn`` (pixel (i, j) of every sequence) with the observed values put back."""
        return torch.where(self.mask[:, 0, i, j], drawn, self.given[:, 0, i, j])

    def weigh(self, logits: Tensor, i: int) -> None:
        """Row i is drawn: its observed pixels weigh their sequences."""
        if self.particles is not None:
            self.particles.observe(logits, self.given[:, 0, i], ~self.mask[:, 0, i])


class Generation:
    """One call of :meth:`rnngen.models.pixelrnn.PixelRNN.generate`: the images as drawn so far,
    the layer kind's sampler, and what changes a pixel's draw: the guidance scale (toward a
    class, or a repair model's toward the observed pixels), and the observed pixels of a
    completion with their :class:`Particles` (``k`` sequences per image, image-major)."""

    def __init__(self, model: PixelRNN, n: int, size: tuple[int, int], given: Tensor | None,
                 mask: Tensor | None, particles: int, y: Tensor | None) -> None:
        labels = model.labels(y, n)
        self.smc: Particles | None = None
        self.observed: Observed | None = None
        weight = model.input_conv.weight
        blank = torch.zeros(n, 1, *size, device=weight.device, dtype=weight.dtype)
        maps = model.condition(blank if given is None else given,
                                    torch.ones_like(blank, dtype=torch.bool) if mask is None else mask)
        if given is not None and mask is not None:
            unknown = labels is None and model.class_optional  # each sequence holds a class of its own
            self.smc = (Particles(n, particles, weight.device, model.config.classes if unknown else 0)
                        if particles > 1 else None)
            self.observed = Observed(given.repeat_interleave(particles, 0), mask.repeat_interleave(particles, 0),
                                     self.smc)
            labels = (self.smc.classes.repeat(n) if unknown and self.smc is not None
                      else None if labels is None else labels.repeat_interleave(particles, 0))
            maps = None if maps is None else maps.repeat_interleave(particles, 0)
            n *= particles
        biases = model.gate_biases(labels)
        self.n, self.height = n, size[0]
        self.scale = 1.0
        if labels is not None and given is None:  # toward the class: the twin has no label
            self.scale = model.config.guidance
        elif maps is not None and given is not None and self.smc is None:  # toward the observed pixels
            self.scale = model.config.repair_guidance
        if self.guided:  # a twin of every image runs beside it (rows n..2n-1), without what guides
            if given is None:
                biases = [torch.cat([b, torch.zeros_like(b)]) for b in biases]
                maps = None if maps is None else torch.cat([maps, maps])
            else:  # the twin sees no pixel: the repair model's p(x)
                free = model.condition(blank[:1], torch.ones_like(blank[:1], dtype=torch.bool))
                biases = [None if b is None else torch.cat([b, b]) for b in biases]
                maps = torch.cat([maps, free.expand_as(maps)])
        self.x = torch.zeros(2 * n if self.guided else n, 1, *size, device=weight.device, dtype=weight.dtype)
        self.probs = torch.zeros_like(self.x[:n])
        maps = None if maps is None else maps.to(weight.dtype).contiguous()
        self.sampler: Sampler = (model.layer_cls.compiled_sampler.build(model, len(self.x), size, biases, maps)
                                 or model.layer_cls.sampler(model, len(self.x), size, biases, maps))

    @property
    def guided(self) -> bool:
        return self.scale != 1

    @property
    def images(self) -> Tensor:
        """The sequences' images as drawn so far, ``(n, 1, H, W)`` (no guidance twins)."""
        return self.x[: self.n]

    def guide(self, logit: Tensor) -> Tensor:
        """``(2n,)`` -> ``(n,)``: classifier-free guidance (Ho and Salimans 2022, eq. 6) on the logits."""
        cond, free = logit.chunk(2)
        return free + self.scale * (cond - free)

    def draw_row(self, i: int, temperature: float, generator: torch.Generator | None) -> None:
        """Row i of every sequence, each pixel from its logit divided by ``temperature``."""
        u = torch.rand(self.n, self.x.shape[-1], generator=generator, device=self.x.device, dtype=self.x.dtype)
        logits = self.sampler.row(self, i, u, temperature)
        if self.observed is not None:
            self.observed.weigh(logits, i)

    def put(self, logit: Tensor, i: int, j: int, u: Tensor, temperature: float) -> Tensor:
        """Pixel (i, j) of every sequence from its logit (``(n,)``, or ``(2n,)`` guided): 1 where
        ``u`` < p, the observed pixels kept. Returns the logit drawn from, ``(n,)``."""
        if self.guided:
            logit = self.guide(logit)
        p = torch.sigmoid(logit / temperature)
        drawn = (u < p).to(p.dtype)
        if self.observed is not None:
            drawn = self.observed.keep(drawn, i, j)
        self.x[: self.n, 0, i, j] = drawn
        if self.guided:
            self.x[self.n :, 0, i, j] = drawn  # the label-free twin follows the drawn pixels
        self.probs[:, 0, i, j] = p
        return logit

    def end_row(self, i: int, generator: torch.Generator | None) -> None:
        """Row i is drawn: the sampler moves on, and particles resample (before any row but the last)."""
        self.sampler.end_row(self.x, i)
        keep = self.smc.resample(generator) if self.smc is not None and i < self.height - 1 else None
        if keep is not None:
            self.x, self.probs = self.x[keep], self.probs[keep]
            self.sampler.select(keep)

    def result(self, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """``(images, probs)``; with particles, one sequence per image drawn by weight."""
        x, probs = self.x, self.probs
        if self.smc is not None:
            chosen = self.smc.choose(generator)
            x, probs = x[chosen], probs[chosen]
        return x[: self.n], probs
