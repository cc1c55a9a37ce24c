"""A PixelRNN trained to repair (``model.pixelrnn.repair``): p(hidden | observed) for any hole,
exact in one pass. Checked against brute force on tiny images (every completion enumerated),
by gradients (no hidden pixel at or after a pixel reaches its distribution), and through the
samplers; and the hole NLL of the models that are not trained to repair, an estimate, against
the brute-force value."""

from __future__ import annotations

import itertools

import pytest
import torch

from rnngen.models.holes import MIXTURE, rectangles, strokes, training_holes
from rnngen.models.pixelrnn import PixelRNN, PixelRNNConfig

VARIANTS = ("row_lstm", "diagonal_bilstm")


def repair_model(variant: str, seed: int = 0, **kw: object) -> PixelRNN:
    """A small repair model, its conditioner's last layer (zero at the start) made random so
    that the observed pixels do move the distributions."""
    torch.manual_seed(seed)
    model = PixelRNN(PixelRNNConfig(variant=variant, layers=2, hidden=6, out_hidden=8, repair=True, **kw))
    torch.nn.init.normal_(model.conditioner[-1].weight, std=0.5)
    return model.double().eval()


def every_image(height: int, width: int) -> torch.Tensor:
    """All 2^(H W) binary images ``(2^(H W), 1, H, W)``, float64."""
    bits = torch.tensor(list(itertools.product([0.0, 1.0], repeat=height * width)), dtype=torch.float64)
    return bits.view(-1, 1, height, width)


def test_training_holes_cover_the_mixture_and_hide_something() -> None:
    gen = torch.Generator().manual_seed(0)
    holes = training_holes(2000, (28, 28), gen)
    assert holes.shape == (2000, 1, 28, 28) and holes.dtype == torch.bool
    assert holes.flatten(1).any(1).all()
    everything = holes.flatten(1).all(1).float().mean().item()
    assert abs(everything - MIXTURE["everything"]) < 0.04
    rect = rectangles(500, (28, 28), gen)
    area = rect.flatten(1).sum(1)
    assert area.min() >= 16 and area.max() <= 24 * 24
    rows, cols = rect.any(3), rect.any(2)  # a rectangle: its rows x its columns
    assert torch.equal(rect, rows.unsqueeze(3) & cols.unsqueeze(2))
    stroke = strokes(500, (28, 28), gen)
    assert stroke.flatten(1).any(1).all() and stroke.float().mean() < 0.5
    assert training_holes(50, (1, 2), gen).flatten(1).any(1).all()  # tiny images: never an empty hole


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_hidden_pixel_at_or_after_a_pixel_reaches_its_distribution(variant: str) -> None:
    """d logit_i / d x_j is zero for every hidden j at or after i in raster order; observed
    pixels anywhere, after i included, may move it (and some do)."""
    model = repair_model(variant)
    height, width = 5, 6
    x = (torch.rand(1, 1, height, width, generator=torch.Generator().manual_seed(1)) < 0.5).double()
    hidden = torch.zeros_like(x, dtype=torch.bool)
    hidden[..., 1:4, 2:5] = True  # a hole in the middle: observed pixels before and after it
    order = torch.arange(height * width).view(1, 1, height, width)
    moved_by_later_observed = False
    for i in hidden.flatten().nonzero().flatten().tolist():
        x_in = x.clone().requires_grad_(True)
        model.logits(x_in, None, hidden).flatten()[i].backward()
        grad = x_in.grad
        assert grad[hidden & (order >= i)].abs().max() == 0, f"pixel {i} peeks"
        moved_by_later_observed |= bool(grad[~hidden & (order > i)].abs().max() > 0)
    assert moved_by_later_observed


@pytest.mark.parametrize("variant", VARIANTS)
def test_hole_likelihood_sums_to_one_over_every_completion(variant: str) -> None:
    """On a 2x3 image, for holes of every kind: the exact -log p(hidden | observed) of every
    completion sums (as probabilities) to one; with everything hidden, p(x) over all 64 images."""
    model = repair_model(variant)
    images = every_image(2, 3)
    everything = torch.ones_like(images, dtype=torch.bool)
    with torch.no_grad():
        assert torch.exp(-model.hole_nll(images, everything)).sum().item() == pytest.approx(1.0, abs=1e-9)
        assert torch.allclose(model.hole_nll(images, everything), -model.log_likelihood(images))
        gen = torch.Generator().manual_seed(2)
        for _ in range(6):
            hidden = torch.rand(1, 1, 2, 3, generator=gen) < 0.5
            hidden.view(-1)[torch.randint(6, (1,), generator=gen)] = True
            x = images[torch.randint(64, (1,), generator=gen)]
            # every completion: the images that agree with x on the observed pixels
            agree = (images == x)[:, ~hidden[0]].all(1) if (~hidden).any() else torch.ones(64, dtype=torch.bool)
            total = torch.exp(-model.hole_nll(images[agree], hidden.expand_as(images[agree]))).sum()
            assert total.item() == pytest.approx(1.0, abs=1e-9), hidden


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_pass_draws_completions_with_their_exact_probabilities(variant: str) -> None:
    """4,000 completions of one 2x3 image by ``complete`` (the compiled sampler, one pass)
    against p(hidden | observed) enumerated; the observed pixels never change."""
    model = repair_model(variant, repair_guidance=1.0).float()  # exact draws, unguided
    x = torch.tensor([[[[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]]])
    hidden = torch.tensor([[[[False, True, False], [True, False, True]]]])
    n = 4000
    done = model.complete(x.expand(n, -1, -1, -1), hidden.expand(n, -1, -1, -1), 8, torch.Generator().manual_seed(3))
    assert torch.equal(done.drawn[:, ~hidden[0]], x[:, ~hidden[0]].expand(n, -1))
    images = every_image(2, 3).float()
    agree = (images == x)[:, ~hidden[0]].all(1)
    candidates = images[agree]
    exact = torch.exp(-model.hole_nll(candidates, hidden.expand_as(candidates))).detach()
    counts = torch.stack([(done.drawn == c).flatten(1).all(1).sum() for c in candidates]).float() / n
    assert counts.sum() == 1
    assert (counts - exact).abs().sum() / 2 < 0.03  # total variation


@pytest.mark.parametrize("variant", VARIANTS)
def test_completion_keeps_every_observed_pixel_and_needs_no_particles(variant: str) -> None:
    model = repair_model(variant).float()
    gen = torch.Generator().manual_seed(4)
    x = (torch.rand(6, 1, 28, 28, generator=gen) < 0.3).float()
    hidden = training_holes(6, (28, 28), gen)
    one = model.complete(x, hidden, 1, torch.Generator().manual_seed(5))
    many = model.complete(x, hidden, 16, torch.Generator().manual_seed(5))
    assert torch.equal(one.drawn[~hidden], x[~hidden]) and torch.equal(one.means[~hidden], x[~hidden])
    assert torch.equal(one.drawn, many.drawn)  # exact in one pass: effort is not used


def test_the_estimated_hole_nll_of_a_raster_model_matches_brute_force() -> None:
    """A PixelRNN not trained to repair estimates -log p(hidden | observed) as
    log p(observed) - log p(x), log p(observed) from its particle filter: near the value
    enumerated with many particles, and exact when the observed pixels all come first."""
    torch.manual_seed(0)
    model = PixelRNN(PixelRNNConfig(variant="diagonal_bilstm", layers=2, hidden=6, out_hidden=8)).double().eval()
    images = every_image(2, 3)
    with torch.no_grad():
        log_p = model.log_likelihood(images)
    x = images[37:38]
    for hidden, atol in ((torch.tensor([[[[True, False, True], [False, True, False]]]]), 0.02),
                         (torch.tensor([[[[False, False, False], [True, True, True]]]]), 1e-9)):
        agree = (images == x)[:, ~hidden[0]].all(1)
        brute = -(log_p[37] - torch.logsumexp(log_p[agree], 0))
        estimate = model.hole_nll(x.expand(64, -1, -1, -1), hidden.expand(64, -1, -1, -1), 256,
                                  torch.Generator().manual_seed(6))
        assert estimate.mean().item() == pytest.approx(brute.item(), abs=atol)
        assert not model.exact_hole_nll


@pytest.mark.parametrize("repair", [True, False])
def test_the_evaluate_stages_hole_nll_is_the_models(repair: bool) -> None:
    """``inpainting_metrics`` (the evaluate stage's repair scores) reports the mean of the
    model's own -log p(hidden | observed): exact for a repair model, the particle estimate from
    the completion's own filter (same seed, same value) for another."""
    from rnngen.classifier import DigitClassifier
    from rnngen.inpaint import inpainting_metrics, make_mask

    model = repair_model("row_lstm").float() if repair else PixelRNN(PixelRNNConfig(layers=1, hidden=4)).eval()
    gen = torch.Generator().manual_seed(8)
    x, y = (torch.rand(12, 1, 28, 28, generator=gen) < 0.3).float(), torch.arange(12) % 10
    scores = inpainting_metrics(model, DigitClassifier(10).eval(), x, y, "centre_square", 3, seed=0, batch_size=5)
    mask = make_mask("centre_square", 12, torch.Generator().manual_seed(0))
    if repair:
        expected = model.hole_nll(x, mask).mean()
    else:  # the same batches and generator as the metric's completions
        run = torch.Generator().manual_seed(0)
        expected = torch.cat([model.hole_nll(x[i : i + 5], mask[i : i + 5], 3, run) for i in range(0, 12, 5)]).mean()
    assert scores["hole_nll"] == pytest.approx(expected.item(), rel=1e-6)
    assert model.exact_hole_nll == repair
