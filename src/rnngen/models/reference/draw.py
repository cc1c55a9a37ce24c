"""DRAW's training loss the plain way: :meth:`rnngen.models.draw.DRAW.unroll` (the paper's
equations step by step, autograd through every op) in place of the hand-written BPTT, the
baseline ``bench/throughput.py`` times."""

from __future__ import annotations

from torch import Tensor

from rnngen.models.base import LossTerms
from rnngen.models.draw import DRAW, loss_terms


def forward(model: DRAW, x: Tensor) -> LossTerms:
    """What ``model(x)`` computes (same noise draw, same loss terms), through ``model.unroll``.
    Under autocast its layers run in the autocast dtype; the loss is taken in the parameters' dtype."""
    eps = model._noise(x.shape[0], x, None)
    dtype = model.canvas0.dtype
    canvas, mu, logsig = (t.to(dtype) for t in model.unroll(x.to(dtype), eps.to(dtype)))
    return loss_terms(x, canvas, mu, logsig)
