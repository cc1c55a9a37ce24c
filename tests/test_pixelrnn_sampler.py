"""PixelRNN's compiled sampler (csrc/pixelrnn_sampler.cpp) against its oracle, the PyTorch-op
sampler (rnngen.models.pixelrnn_sampling): for a seed both draw exactly the same images, in fp32,
for both layer kinds, on odd shapes and kernel widths, conditional and guided, with observed
pixels clamped and with particles; and the probabilities either reports along the way are the
model's forward pass on the drawn images."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rnngen.models import build_model, kernels, model_config
from rnngen.models.pixelrnn import PixelRNN
from rnngen.models.pixelrnn_sampling import Generation

#: (layers' config, image size, images, generate's keywords)
CASES: list[tuple[dict[str, Any], tuple[int, int], int, dict[str, Any]]] = [
    ({"variant": "row_lstm"}, (28, 28), 9, {}),
    ({"variant": "diagonal_bilstm"}, (28, 28), 9, {}),
    ({"variant": "row_lstm", "kernel": 1, "hidden": 3}, (3, 1), 5, {"temperature": 0.7}),
    ({"variant": "row_lstm", "kernel": 5, "hidden": 3}, (4, 3), 3, {}),
    ({"variant": "diagonal_bilstm", "hidden": 3}, (1, 1), 1, {}),
    ({"variant": "diagonal_bilstm", "hidden": 3}, (2, 7), 6, {"temperature": 1.5}),
    ({"variant": "row_lstm", "hidden": 20, "conditional": True, "guidance": 2.0}, (9, 8), 7, {"y": True}),
    ({"variant": "diagonal_bilstm", "conditional": True, "guidance": 2.0}, (9, 8), 7, {"y": True}),
    ({"variant": "row_lstm", "conditional": True}, (6, 5), 4, {"y": True, "mask": "random", "particles": 4}),
    ({"variant": "diagonal_bilstm"}, (6, 5), 4, {"mask": "random", "particles": 4}),
    ({"variant": "diagonal_bilstm", "conditional": True}, (6, 5), 5, {"y": True, "mask": "bottom"}),
    # trained to repair: every layer's conditioning maps, guided toward the observed pixels or not
    ({"variant": "row_lstm", "repair": True}, (5, 4), 3, {}),
    ({"variant": "diagonal_bilstm", "repair": True, "conditional": True, "guidance": 2.0}, (5, 4), 3, {"y": True}),
    ({"variant": "diagonal_bilstm", "repair": True, "repair_guidance": 1.0}, (6, 5), 4, {"mask": "random"}),
    ({"variant": "row_lstm", "repair": True, "repair_guidance": 2.0, "conditional": True}, (9, 8), 5,
     {"y": True, "mask": "random"}),
    ({"variant": "diagonal_bilstm", "repair": True, "repair_guidance": 1.5}, (7, 6), 4, {"mask": "bottom"}),
]


def model_for(section: dict[str, Any], seed: int = 0) -> PixelRNN:
    torch.manual_seed(seed)
    model = build_model("pixelrnn", model_config("pixelrnn", {"layers": 2, "hidden": 8, "out_hidden": 8, **section}))
    with torch.no_grad():  # larger than the init: every path (initial states, class biases) carries signal
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model.eval()


def keywords(spec: dict[str, Any], n: int, size: tuple[int, int]) -> dict[str, Any]:
    """generate's keywords for a case: labels, and the observed image and hidden pixels of a completion."""
    out = {k: v for k, v in spec.items() if k in ("temperature", "particles")}
    gen = torch.Generator().manual_seed(7)
    if spec.get("y"):
        out["y"] = torch.arange(n) % 3
    if "mask" in spec:
        out["given"] = torch.bernoulli(torch.full((n, 1, *size), 0.5), generator=gen)
        mask = torch.rand(n, 1, *size, generator=gen) < 0.5
        if spec["mask"] == "bottom":
            mask = torch.zeros_like(mask)
            mask[:, :, size[0] // 2 :] = True
        out["mask"] = mask
    return out


def draw(model: PixelRNN, n: int, size: tuple[int, int], kw: dict[str, Any], seed: int = 1) -> tuple:
    return model.generate(n, torch.Generator().manual_seed(seed), size=size, **kw)


@pytest.mark.parametrize(("section", "size", "n", "spec"), CASES)
def test_the_compiled_sampler_draws_what_the_pytorch_sampler_draws(
        section: dict[str, Any], size: tuple[int, int], n: int, spec: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert kernels.ops("pixelrnn_sampler", torch.zeros(1)) is not None, "the C++ sampler did not build (g++, ninja?)"
    model, kw = model_for(section), keywords(spec, n, size)
    compiled = draw(model, n, size, kw)
    monkeypatch.setenv("RNNGEN_KERNELS", "0")  # the oracle: the PyTorch-op sampler
    images, probs = draw(model, n, size, kw)
    assert torch.equal(compiled[0], images)
    assert (compiled[1] - probs).abs().max() < 1e-5
    assert ((images == 0) | (images == 1)).all()
    if "mask" in kw:
        assert torch.equal(images[~kw["mask"]], kw["given"][~kw["mask"]])
    cfg = model.config  # what the draws were guided by: the observed pixels (repair models), or the class
    guidance = (cfg.repair_guidance if cfg.repair else 1) if "mask" in kw else (cfg.guidance if "y" in kw else 1)
    if guidance == 1:  # unguided: the model's own conditionals (a repair model's given the observed pixels)
        expected = torch.sigmoid(model.logits(images, kw.get("y"), kw.get("mask")) / kw.get("temperature", 1.0))
        assert (compiled[1] - expected).abs().max() < 1e-5


def test_the_compiled_sampler_follows_the_seed_not_the_threads() -> None:
    model, size = model_for({"variant": "diagonal_bilstm"}), (8, 8)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        a = draw(model, 7, size, {})
        torch.set_num_threads(1)
        b = draw(model, 7, size, {})
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], draw(model, 7, size, {}, seed=2)[0])


@pytest.mark.parametrize("variant", ["row_lstm", "diagonal_bilstm"])
def test_the_compiled_sampler_runs_where_it_can_and_the_pytorch_one_elsewhere(
        variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = model_for({"variant": variant})
    kinds = {dtype: type(Generation(model.to(dtype), 2, (3, 3), None, None, 1, None).sampler).__name__
             for dtype in (torch.float32, torch.float64, torch.bfloat16)}
    assert kinds[torch.float32].startswith("Compiled") and kinds[torch.float64].startswith("Compiled")
    assert not kinds[torch.bfloat16].startswith("Compiled")  # the kernel's dtypes: float and double
    monkeypatch.setenv("RNNGEN_KERNELS", "0")
    assert not type(Generation(model.float(), 2, (3, 3), None, None, 1, None).sampler).__name__.startswith("Compiled")
