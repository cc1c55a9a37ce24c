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

The layers, both variants, are in :mod:`rnngen.models.pixelrnn_layers` (the Row LSTM, sec. 3.1;
the Diagonal BiLSTM, sec. 3.2); generation, pixel by pixel, in :mod:`rnngen.models.pixelrnn_sampling`.
The plain per-row / per-pixel implementation of the same network is
:mod:`rnngen.models.reference.pixelrnn`, which the tests check this one against (values and
gradients).

Learned initial states: the state "above the first row" and "left of the first column".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnngen.config import under_minimum
from rnngen.models.base import Completion, GenerativeModel, LossTerms, SamplingError, bernoulli_nll
from rnngen.models.holes import training_holes
from rnngen.models.likelihood import mixture_logits, observed_class_posterior
from rnngen.models.pixelrnn_layers import DiagonalBiLSTMLayer, RowLSTMLayer
from rnngen.models.pixelrnn_sampling import Generation

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
    #: p(hidden | observed) for any hole, p(x) the case where everything is hidden: the masked
    #: image and its mask go through a non-causal convolution stack whose maps enter every
    #: layer's input at every position (the Conditional PixelCNN's spatial conditioning, eq. 5),
    #: trained on holes of :mod:`rnngen.models.holes` and scored on the hidden pixels only
    repair: bool = False
    #: repair models: guidance s toward the observed pixels in a completion, each hidden pixel's
    #: logit l(x | nothing seen) + s (l(x | observed) - l(x | nothing seen)) (classifier-free
    #: guidance with the observation as the condition); 1 = exact draws of p(hidden | observed)
    repair_guidance: float = 2.0

    def problems(self) -> list[str]:
        out = under_minimum(self, layers=1, hidden=1, kernel=1, out_hidden=1, classes=1)
        if not self.guidance >= 0:
            out.append(f"guidance: must be >= 0 (0 = the label-free model, 1 = p(x | y)), got {self.guidance}")
        if not self.repair_guidance >= 0:
            out.append(f"repair_guidance: must be >= 0 (1 = p(hidden | observed)), got {self.repair_guidance}")
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


def conditioner(hidden: int, channels: int) -> nn.Sequential:
    """A repair model's non-causal stack from the masked image and its mask (2 channels) to
    ``channels`` maps (every layer's): 3x3 convolutions dilated 1, 2, 4, 8 (a 31x31 field: every
    pixel of a hole sees the whole digit around it), then a 1x1 convolution, zero at the start so
    that training starts from the unconditional network."""
    stack: list[nn.Module] = [nn.Conv2d(2, hidden, 3, padding=1), nn.ReLU()]
    for dilation in (2, 4, 8):
        stack += [nn.Conv2d(hidden, hidden, 3, padding=dilation, dilation=dilation), nn.ReLU()]
    out = nn.Conv2d(hidden, channels, 1)
    nn.init.zeros_(out.weight)
    nn.init.zeros_(out.bias)
    return nn.Sequential(*stack, out)


# ------------------------------------------------------------------------------- model


class PixelRNN(GenerativeModel):
    """Row LSTM or Diagonal BiLSTM PixelRNN; see the module docstring."""

    name = "pixelrnn"
    config_cls = PixelRNNConfig
    presets = PRESETS
    exact_likelihood: ClassVar[bool] = True
    sampling_fields: ClassVar[tuple[str, ...]] = ("guidance", "repair_guidance")
    legacy_config: ClassVar[dict[str, Any]] = {"label_dropout": 0.0, "guidance": 1.0}

    def __init__(self, config: PixelRNNConfig) -> None:
        super().__init__(config)
        channels = 2 * config.hidden
        self.input_conv = nn.Conv2d(1, channels, 7, padding=3)
        self.register_buffer("mask_a", causal_mask(7, 7, "A").view(1, 1, 7, 7), persistent=False)
        #: the kernel rows and columns of the taps mask A keeps (first_layer's GEMM)
        self.taps_a = tuple(map(list, zip(*self.mask_a[0, 0].nonzero().tolist(), strict=True)))
        # the one place the variant is read: from here on the model asks its layers' kind (their
        # gate-bias shape, their generation step)
        self.layer_cls = RowLSTMLayer if config.variant == "row_lstm" else DiagonalBiLSTMLayer
        self.layers = nn.ModuleList(self.layer_cls.for_config(config) for _ in range(config.layers))
        self.out1 = nn.Linear(channels, config.out_hidden)  # the 1x1 output convolutions
        self.out2 = nn.Linear(config.out_hidden, 1)
        if config.conditional:  # per layer, a gate bias per class (and direction): V^T y of eq. 4
            self.class_gates = nn.ModuleList(nn.Embedding(config.classes, math.prod(layer.gate_shape))
                                             for layer in self.layers)
            for table in self.class_gates:
                nn.init.zeros_(table.weight)  # starts as the unconditional model
        if config.repair:
            self.conditioner = conditioner(config.hidden, config.layers * channels)

    def condition(self, given: Tensor, hidden: Tensor) -> Tensor | None:
        """Repair models: the maps ``(B, H, W, layers, 2h)`` that the observed pixels of ``given``
        (where ``hidden`` is False) add to each layer's input; None for the others. The hidden
        pixels' values are multiplied by zero: nothing of them reaches the maps."""
        if not self.config.repair:
            return None
        seen = (~hidden).to(given.dtype)
        maps = self.conditioner(torch.cat([given * seen, seen], 1)).permute(0, 2, 3, 1)
        return maps.unflatten(-1, (len(self.layers), -1))

    def gate_biases(self, y: Tensor | None, drop: float = 0.0) -> list[Tensor | None]:
        """Per layer, the gate bias of each image's class: ``(B, 4h)`` (Row LSTM) or
        ``(B, 2, 4h)`` (Diagonal BiLSTM); Nones for an unconditional model. With ``drop`` > 0
        each image loses its label (zero biases: the label-free model) with that probability."""
        labels = self.labels(y)
        if labels is None:
            return [None] * len(self.layers)
        biases = [table(labels).view(-1, *layer.gate_shape)
                  for layer, table in zip(self.layers, self.class_gates, strict=True)]
        if drop > 0:
            keep = torch.rand(len(labels), device=labels.device) >= drop
            biases = [b * keep.view(-1, *[1] * (b.dim() - 1)) for b in biases]
        return biases

    def with_sampling(self, **settings: Any) -> PixelRNN:
        if settings.get("guidance", 1) != 1 and not self.conditional:
            raise SamplingError("guidance: this model is unconditional, so there is no class to guide toward (train "
                                "one with model.pixelrnn.conditional: true and label_dropout above 0)")
        if settings.get("repair_guidance", 1) != 1 and not self.config.repair:
            raise SamplingError("repair_guidance: this model was not trained to repair (model.pixelrnn.repair: true), "
                                "so it has no p(x | nothing seen) to guide away from")
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

    @property
    def class_optional(self) -> bool:
        return self.conditional and not self.config.repair

    def logits(self, x: Tensor, y: Tensor | None = None, hidden: Tensor | None = None) -> Tensor:
        """Bernoulli logits of p(x_i = 1 | x_<i) (of p(x_i = 1 | x_<i, y) for a conditional
        model, labels ``y`` ``(B,)``; of the mixture over classes for one given none) for every
        pixel, ``(B, 1, H, W)``; a repair model's are of p(x_i = 1 | x_<i, the pixels of ``x``
        outside ``hidden``) (default: everything hidden)."""
        if self.class_optional and y is None:
            return mixture_logits(self.class_logits(x), x)
        m = self.first_layer(x)  # row-major, channels last from here: (H, B, W, 2h)
        maps = self.condition(x, torch.ones_like(x, dtype=torch.bool) if hidden is None else hidden)
        maps = [None] * len(self.layers) if maps is None else maps.transpose(0, 1).unbind(3)  # (H, B, W, 2h) each
        drop = self.config.label_dropout if self.training else 0.0
        for layer, bias, cond in zip(self.layers, self.gate_biases(y, drop), maps, strict=True):
            m = layer(m if cond is None else m + cond, bias)  # residual inside (sec. 3.3)
            if self.training and self.config.dropout:
                m = F.dropout(m, self.config.dropout)
        return self.head(m).permute(1, 3, 0, 2)

    def class_logits(self, x: Tensor) -> Tensor:
        """``(C, B, 1, H, W)``: the logits of every class's p(x_i = 1 | x_<i, y) for each image, a
        pass per class (one batch of C B images runs slower than C batches of B)."""
        return torch.stack([self.logits(x, torch.full((len(x),), c, device=x.device))
                            for c in range(self.config.classes)])

    def forward(self, x: Tensor, y: Tensor | None = None) -> LossTerms:
        """-log p(x); a repair model in training: -log p(hidden | observed) of a hole drawn per
        image (:func:`~rnngen.models.holes.training_holes`), its "everything" holes being p(x)."""
        if not (self.config.repair and self.training):
            nll = bernoulli_nll(self.logits(x, y), x)
            return LossTerms(recon=nll, kl=torch.zeros_like(nll))
        hidden = training_holes(len(x), (x.shape[-2], x.shape[-1]), device=x.device)
        nll = self.hole_nll(x, hidden, y=y)
        return LossTerms(recon=nll, kl=torch.zeros_like(nll))

    def hole_nll(self, x: Tensor, hidden: Tensor, effort: int = 1, generator: torch.Generator | None = None,
                 y: Tensor | None = None) -> Tensor | None:
        """``(B,)`` -log p(hidden | observed) of binary ``x``: a repair model's exact, the sum over
        hidden i of -log p(x_i | x_<i, observed) in one pass; any other's the estimate of
        :meth:`complete`'s particle filter with ``effort`` (at least 2) particles."""
        if not self.config.repair:
            return self.complete(x, hidden, max(effort, 2), generator, y).hole_nll
        terms = F.binary_cross_entropy_with_logits(self.logits(x, y, hidden), x, reduction="none")
        return (terms * hidden).flatten(1).sum(1)

    @property
    def exact_hole_nll(self) -> bool:
        return self.config.repair

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
        if given is None and self.class_optional and y is None:  # a draw of p(x): y ~ p(y), then x ~ p(x | y)
            y = torch.randint(self.config.classes, (n,), generator=generator, device=self.device)
        return self.draw(Generation(self, n, size, given, mask, particles, y), temperature, generator,
                         on_row).result(generator)

    @staticmethod
    def draw(run: Generation, temperature: float, generator: torch.Generator | None,
             on_row: Any = None) -> Generation:
        """Every row of ``run``, top to bottom."""
        for i in range(run.height):
            run.draw_row(i, temperature, generator)
            run.end_row(i, generator)
            if on_row is not None:
                on_row(i, run.images)
        return run

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
        """The hidden pixels drawn from p(hidden | observed). A repair model (``repair``) gives
        every conditional p(x_i | x_<i, observed) itself: one ancestral pass with the observed
        pixels clamped is exact, and ``effort`` is not used. Any other runs a particle filter in
        raster order with ``effort`` particles per image
        (:class:`~rnngen.models.pixelrnn_sampling.Particles`): every observed pixel, above or below
        a hidden one, weighs in; when every observed pixel precedes every hidden one (the bottom
        half) ancestral sampling is already exact, and one particle is run. ``means`` are
        p(x_i = 1 | ...) along the drawn path. A class-conditional model given no class draws the
        class too: from p(y | observed), exact, when the observed pixels come first, else each
        particle holds one (at least one particle per class).

        ``hole_nll``: a repair model's exact; any other's log p(observed) - log p(x), exact for
        the bottom half, else with log p(observed) the particle filter's estimate (None with
        one particle)."""
        flat = mask.flatten(1)
        position = torch.arange(flat.shape[1], device=flat.device)
        first_hidden = torch.where(flat, position, flat.shape[1]).min(1, keepdim=True).values
        looks_ahead = bool((~flat & (position > first_hidden)).any()) and not self.config.repair
        given = (x > 0.5).to(x.dtype)  # the likelihood's view of the observed pixels: binary
        unknown = self.class_optional and y is None  # the class is hidden too
        with torch.no_grad():
            by_class = self.class_logits(given) if unknown else None
            if unknown and not looks_ahead:  # a class from p(y | observed), exact: then one pass
                posterior = observed_class_posterior(by_class, given, mask)
                y = torch.multinomial(posterior.exp().float(), 1, generator=generator)[:, 0]
            k = max(effort, self.config.classes, 2) if unknown and looks_ahead else effort if looks_ahead else 1
            run = self.draw(Generation(self, len(x), (x.shape[-2], x.shape[-1]), given, mask, k, y), 1.0, generator)
            hole = self.hole_nll(given, mask, y=y) if self.config.repair else None
            if not self.config.repair and (run.smc is not None or not looks_ahead):
                logits = self.logits(given, y) if by_class is None else mixture_logits(by_class, given)
                terms = F.binary_cross_entropy_with_logits(logits, given, reduction="none")
                hole = ((terms * mask).flatten(1).sum(1) if run.smc is None  # observed first: exact
                        else (run.smc.log_evidence() + terms.flatten(1).sum(1).double()).to(x.dtype))
            drawn, probs = run.result(generator)
        return Completion(torch.where(mask, drawn, x), torch.where(mask, probs, x), hole)

    def sample_steps(self, n: int, generator: torch.Generator | None = None, y: Tensor | None = None) -> Tensor:
        """``(28, n, 1, 28, 28)``: the image after each row is generated (rows not yet drawn grey)."""
        frames = []

        def keep(i: int, x: Tensor) -> None:
            frame = torch.full_like(x, 0.5)
            frame[:, :, : i + 1] = x[:, :, : i + 1]
            frames.append(frame.clone())

        self.generate(n, generator, on_row=keep, y=y)
        return torch.stack(frames)
