"""A class-conditional PixelRNN asked no class (``GenerativeModel.class_optional``): the mixture
p(x) = (1 / C) sum_y p(x | y), scored exactly, drawn by class, and repaired with the class
hidden too. Checked against brute force on 2x3 images, every image and completion enumerated."""

from __future__ import annotations

import math

import pytest
import torch

from rnngen.models.likelihood import mixture_logits, observed_class_posterior
from rnngen.models.pixelrnn import PixelRNN, PixelRNNConfig
from rnngen.models.pixelrnn_sampling import Particles
from test_repair import every_image

CLASSES = 3


def mixture_model(variant: str = "diagonal_bilstm", **kw: object) -> PixelRNN:
    """A small conditional model whose classes (zero at the start) differ at random."""
    torch.manual_seed(0)
    model = PixelRNN(PixelRNNConfig(variant=variant, layers=2, hidden=6, out_hidden=8, conditional=True,
                                    classes=CLASSES, guidance=1.0, **kw))
    for table in model.class_gates:
        torch.nn.init.normal_(table.weight, std=4.0)
    torch.nn.init.normal_(model.out2.weight, std=3.0)  # far from uniform: a sampler's error shows
    return model.double().eval()


def by_class(model: PixelRNN, images: torch.Tensor) -> torch.Tensor:
    """``(C, N)`` log p(x | y) of every image under every class."""
    with torch.no_grad():
        return torch.stack([model.log_likelihood(images, y=torch.full((len(images),), c)) for c in range(CLASSES)])


def test_mixture_logits_are_bayes_rule_over_the_components() -> None:
    """Two components on three pixels: each pixel's mixture probability against the ratio of
    the enumerated joint probabilities."""
    torch.manual_seed(1)
    logits, x = torch.randn(2, 1, 3), torch.tensor([[1.0, 0.0, 1.0]])
    p = torch.sigmoid(logits)
    pixel = torch.where(x > 0.5, p, 1 - p)  # (C, 1, 3)
    for i in range(3):
        before = pixel[:, 0, :i].prod(1)
        expected = (before * p[:, 0, i]).sum() / before.sum()
        assert torch.sigmoid(mixture_logits(logits, x))[0, i].item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("variant", ["row_lstm", "diagonal_bilstm"])
def test_without_a_class_the_likelihood_is_the_mixture_and_sums_to_one(variant: str) -> None:
    model = mixture_model(variant)
    images = every_image(2, 3)
    with torch.no_grad():
        log_p = model.log_likelihood(images)
    mixture = torch.logsumexp(by_class(model, images), 0) - math.log(CLASSES)
    assert torch.allclose(log_p, mixture, atol=1e-5)
    assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-5)
    assert model.class_optional and not mixture_model(repair=True).class_optional


def test_draws_without_a_class_follow_the_mixture() -> None:
    model = mixture_model().float()
    n = 20000
    drawn = model.generate(n, torch.Generator().manual_seed(2), size=(2, 3))[0]
    images = every_image(2, 3)
    exact = torch.exp(torch.logsumexp(by_class(model.double(), images), 0) - math.log(CLASSES))
    counts = torch.stack([(drawn.double() == im).flatten(1).all(1).sum() for im in images]).double() / n
    assert (counts - exact).abs().sum() / 2 < 0.04  # total variation


@pytest.mark.parametrize(("hidden", "effort", "tv", "atol"), [
    ([[False, False, False], [True, True, True]], 1, 0.02, 1e-5),  # observed first: the class drawn exactly
    ([[True, False, True], [False, True, False]], 64, 0.03, 0.02),  # each particle holds a class, weighed
])
def test_a_completion_without_a_class_draws_the_mixtures_posterior(hidden: list, effort: int, tv: float,
                                                                   atol: float) -> None:
    """Completions of one image against p(hidden | observed) of the mixture, enumerated: the
    class is inferred from the observed pixels, never given; its hole NLL against brute force."""
    model = mixture_model().float()
    x = torch.tensor([[[[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]]])
    mask = torch.tensor([[hidden]])
    n = 20000
    done = model.complete(x.expand(n, -1, -1, -1), mask.expand(n, -1, -1, -1), effort, torch.Generator().manual_seed(3))
    assert torch.equal(done.drawn[:, ~mask[0]], x[:, ~mask[0]].expand(n, -1))
    images = every_image(2, 3)
    log_p = torch.logsumexp(by_class(model.double(), images), 0)
    agree = (images.float() == x)[:, ~mask[0]].all(1)
    exact = torch.softmax(log_p[agree], 0)
    counts = torch.stack([(done.drawn == c).flatten(1).all(1).sum() for c in images[agree].float()]).double() / n
    assert (counts - exact).abs().sum() / 2 < tv
    brute = -(log_p[(images.float() == x).flatten(1).all(1)] - torch.logsumexp(log_p[agree], 0))
    assert done.hole_nll.double().mean().item() == pytest.approx(brute.item(), abs=atol)


def test_the_class_posterior_of_the_observed_pixels_is_bayes_rule_enumerated() -> None:
    """Where the observed pixels come first, p(y | observed) from the observed pixels' own
    conditionals against p(observed | y) summed over every completion."""
    model = mixture_model()
    images = every_image(2, 3)
    x, hidden = images[6:7], torch.tensor([[[[False, False, False], [False, True, True]]]])
    agree = (images == x)[:, ~hidden[0]].all(1)
    exact = torch.softmax(torch.logsumexp(by_class(model, images)[:, agree], 1), 0)
    with torch.no_grad():
        posterior = observed_class_posterior(model.class_logits(x), x, hidden)[0].exp()
    assert torch.allclose(posterior, exact, atol=1e-6)
    assert (exact - 1 / CLASSES).abs().max() > 0.1  # the classes differ: a uniform guess would fail


def test_particles_holding_classes_stand_for_a_uniform_prior() -> None:
    """4 particles over 3 classes (two hold class 0): their start weights give each class 1/3,
    and the evidence starts at log 1."""
    smc = Particles(2, 4, torch.device("cpu"), classes=CLASSES)
    assert smc.classes.tolist() == [0, 1, 2, 0]
    w = torch.softmax(smc.log_w, 1)
    for c in range(CLASSES):
        assert w[:, smc.classes == c].sum(1).tolist() == pytest.approx([1 / CLASSES] * 2)
    assert smc.log_evidence().tolist() == pytest.approx([0.0, 0.0], abs=1e-12)


def test_resampling_is_systematic_each_sequence_kept_its_weights_share_of_times() -> None:
    """Systematic resampling (Kitagawa 1996): each sequence is kept floor or ceil of k times its
    weight, for any seed; multinomial resampling's counts stray further (and its variance cost
    the class-hidden repair's centre square 1.7 points on 1,000 digits, bench/repair_quality.py).
    Every sequence's weight starts anew, and the evidence keeps the log mean weight."""
    k, weights = 8, torch.tensor([[0.5, 0.3, 0.1, 0.05, 0.05, 0.0, 0.0, 0.0], [0.01] * 7 + [0.93]])
    for seed in range(50):
        smc = Particles(2, k, torch.device("cpu"))
        smc.log_w = weights.double().log() + 3.0  # mean weight e^3 / k
        keep = smc.resample(torch.Generator().manual_seed(seed))
        counts = torch.bincount(keep, minlength=2 * k).view(2, k).double()
        assert ((counts - k * weights).abs() < 1).all(), (seed, counts)
        assert (smc.log_w == 0).all()
        assert smc.log_evidence().tolist() == pytest.approx([3.0 - math.log(k)] * 2)
