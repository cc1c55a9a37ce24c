"""Inpainting masks, the pseudo-Gibbs completion, its scores, and the pictures."""

from __future__ import annotations

import itertools

import pytest
import torch
from PIL import Image

from rnngen import inpaint as inpaint_module
from rnngen import pictures
from rnngen.classifier import ClassifierConfig, DigitClassifier
from rnngen.inpaint import MASKS, inpaint, inpainting_metrics, make_mask
from rnngen.models import build_model, model_config
from rnngen.models.base import bernoulli_nll, log_normal

TINY = {"mlp_vae": {"hidden": 32, "z_dim": 4}, "row_lstm_vae": {"hidden": 8, "z_dim": 4}}


def tiny_model(name: str = "mlp_vae"):
    torch.manual_seed(0)
    return build_model(name, model_config(name, TINY[name])).eval()


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(seed))


def grid_size(cols: int, rows: int) -> tuple[int, int]:
    return cols * 30 + 2, rows * 30 + 2  # torchvision: 28-pixel tiles, 2-pixel padding


@pytest.mark.parametrize("kind", sorted(MASKS))
def test_masks_have_shape_and_counts(kind: str) -> None:
    mask = make_mask(kind, 5, torch.Generator().manual_seed(0))
    assert mask.shape == (5, 1, 28, 28) and mask.dtype == torch.bool
    expected = {"bottom_half": 392, "centre_square": 196, "random_pixels": 392}[kind]
    assert mask.flatten(1).sum(1).tolist() == [expected] * 5


def test_mask_geometry_and_seeding() -> None:
    assert make_mask("bottom_half", 1)[0, 0, 14:].all() and not make_mask("bottom_half", 1)[0, 0, :14].any()
    centre = make_mask("centre_square", 1)[0, 0]
    assert centre[7:21, 7:21].all() and centre.sum() == 196
    a = make_mask("random_pixels", 3, torch.Generator().manual_seed(1))
    assert torch.equal(a, make_mask("random_pixels", 3, torch.Generator().manual_seed(1)))
    assert not torch.equal(a[0], a[1])  # a fresh pattern per image


def test_unknown_mask_names_the_kinds() -> None:
    with pytest.raises(ValueError, match="bottom_half, centre_square, random_pixels"):
        make_mask("top_half", 2)


@pytest.mark.parametrize("name", sorted(TINY))
def test_inpaint_keeps_observed_pixels_exactly(name: str) -> None:
    x = images(6)
    mask = make_mask("random_pixels", 6, torch.Generator().manual_seed(0))
    done = inpaint(tiny_model(name), x, mask, effort=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(done.drawn[~mask], x[~mask])
    out = done.means
    assert out.shape == x.shape
    assert torch.equal(out[~mask], x[~mask])
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out[mask], x[mask])  # the missing pixels were filled in


def test_inpaint_is_deterministic_for_a_seed() -> None:
    model, x, mask = tiny_model(), images(4), make_mask("centre_square", 4)
    a = inpaint(model, x, mask, 4, torch.Generator().manual_seed(7)).means
    b = inpaint(model, x, mask, 4, torch.Generator().manual_seed(7)).means
    c = inpaint(model, x, mask, 4, torch.Generator().manual_seed(8)).means
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_inpaint_rejects_bad_arguments() -> None:
    model, x = tiny_model(), images(2)
    with pytest.raises(ValueError, match="effort"):
        inpaint(model, x, make_mask("bottom_half", 2), effort=0)
    with pytest.raises(ValueError, match="mask"):
        inpaint(model, x, make_mask("bottom_half", 3), effort=1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        inpaint(model, x * 255, make_mask("bottom_half", 2), effort=1)


def test_inpainting_metrics_are_deterministic_and_bounded() -> None:
    torch.manual_seed(0)
    classifier = DigitClassifier(10).eval()
    x, y = images(12), torch.arange(12) % 10
    first = inpainting_metrics(tiny_model(), classifier, x, y, "bottom_half", effort=2, seed=0)
    assert first == inpainting_metrics(tiny_model(), classifier, x, y, "bottom_half", effort=2, seed=0)
    assert set(first) == {"hole_nll", "mse_missing", "bce_missing", "accuracy_completed", "accuracy_original",
                          "accuracy_masked"}
    assert 0 < first["mse_missing"] <= 1 and first["bce_missing"] > 0 and first["hole_nll"] > 0
    assert all(0 <= first[k] <= 1 for k in first if k.startswith("accuracy"))


@pytest.mark.parametrize("name", sorted(TINY))
def test_a_binary_completion_draws_from_the_same_chain(name: str) -> None:
    model, x = tiny_model(name), images(4)
    mask = make_mask("centre_square", 4)
    drawn, means, _ = inpaint(model, x, mask, effort=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(drawn[~mask], x[~mask]) and ((drawn == 0) | (drawn == 1)).all()
    assert not ((means[mask] == 0) | (means[mask] == 1)).all()
    # the same chain: the drawn pixels follow the means (pixels near 0 or 1 are drawn so)
    assert ((means[mask] > 0.999) <= (drawn[mask] == 1)).all() and ((means[mask] < 0.001) <= (drawn[mask] == 0)).all()


def test_inpainting_accuracy_feeds_the_judge_its_kind(monkeypatch) -> None:
    torch.manual_seed(0)
    seen: list[torch.Tensor] = []
    judge_accuracy = inpaint_module.accuracy
    monkeypatch.setattr(inpaint_module, "accuracy",
                        lambda clf, imgs, y: seen.append(imgs) or judge_accuracy(clf, imgs, y))
    grey = torch.rand(6, 1, 28, 28)  # grey originals are binarized for a binary judge
    y = torch.arange(6)
    inpainting_metrics(tiny_model(), DigitClassifier(10).eval(), grey, y, "bottom_half", effort=2, seed=0)
    assert len(seen) == 3 and all(((s == 0) | (s == 1)).all() for s in seen)
    seen.clear()
    grey_judge = DigitClassifier(10, ClassifierConfig(binarize=False)).eval()
    inpainting_metrics(tiny_model(), grey_judge, grey, y, "bottom_half", effort=2, seed=0)
    assert len(seen) == 3 and not any(((s == 0) | (s == 1)).all() for s in seen)


def test_inpainting_panel_png(tmp_path) -> None:
    x = images(5)
    mask = make_mask("centre_square", 5)
    path = pictures.inpainting_panel(x, mask, x, tmp_path / "sub" / "panel.png", ncol=3)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == grid_size(3, 6)  # 2 groups x 3 rows
        assert im.convert("L").getpixel((30 + 2 + 14, 2 + 30 + 14)) == 128  # a hidden pixel: grey


def test_canvas_gif_and_strip(tmp_path) -> None:
    frames = torch.rand(10, 6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    gif = pictures.canvas_gif(frames, tmp_path / "canvas.gif", nrow=3)
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.size == grid_size(3, 2) and im.n_frames == 10
    strip = pictures.canvas_strip(frames, tmp_path / "strip.png", n_frames=4, n_samples=2)
    with Image.open(strip) as im:
        assert im.format == "PNG" and im.size == grid_size(4, 2)
    with pytest.raises(ValueError, match="frames"):
        pictures.canvas_gif(frames[0], tmp_path / "bad.gif")


def one_dimensional_latent() -> tuple:
    """An MLP VAE with z in one dimension, random weights (so a poor q(z | x)), in float64, and
    a binary image: small enough for quadrature over z."""
    torch.manual_seed(0)
    model = build_model("mlp_vae", model_config("mlp_vae", {"hidden": 8, "z_dim": 1})).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    x = torch.bernoulli(torch.full((1, 1, 28, 28), 0.3, dtype=torch.float64),
                        generator=torch.Generator().manual_seed(1))
    return model, x


def test_metropolis_within_gibbs_targets_the_posterior_where_pseudo_gibbs_does_not() -> None:
    """A latent model with z in one dimension and three hidden pixels: p(hidden | observed) by
    quadrature over z, against the final state of 3,000 chains. With a poor q(z | x) (random
    weights) the Metropolis-within-Gibbs chain (Mattei and Frellsen 2018) reaches the posterior,
    while pseudo-Gibbs settles somewhere else, as that paper shows it can."""
    model, x = one_dimensional_latent()
    hidden = torch.tensor([100, 400, 700])
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask.view(-1)[hidden] = True
    grid = torch.linspace(-7, 7, 4001, dtype=torch.float64).unsqueeze(1)
    combos = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=torch.float64)
    with torch.no_grad():
        logits = model.decode(grid)
        log_p = []
        for values in combos:  # log of the integral over z of p(x | z) p(z), up to a constant
            xc = x.clone()
            xc.view(-1)[hidden] = values
            log_px_z = -bernoulli_nll(logits, xc.expand(len(grid), -1, -1, -1))
            log_p.append(torch.logsumexp(log_px_z + log_normal(grid), 0))
        posterior = torch.stack(log_p).softmax(0)
        n = 3000

        def distance(sampler) -> float:
            drawn = sampler(x.expand(n, -1, -1, -1), mask.expand(n, -1, -1, -1), 100, torch.Generator().manual_seed(0))
            index = (drawn.drawn.view(n, -1)[:, hidden] * torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)).sum(1)
            freq = torch.bincount(index.long(), minlength=8).double() / n
            return 0.5 * (freq - posterior).abs().sum().item()

        assert distance(model.metropolis_within_gibbs) < 0.05
        assert distance(model.pseudo_gibbs) > 0.15


def test_a_latent_models_hole_nll_estimate_meets_quadrature() -> None:
    """-log p(hidden | observed) of a latent model with z in one dimension, by quadrature over z
    (log p(observed) - log p(x): the hidden pixels marginalise out of p(x | z)), against the
    model's importance-sampled estimate with 20,000 draws; a GAN has none."""
    model, x = one_dimensional_latent()
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask.view(-1)[[100, 400, 415, 700]] = True
    grid = torch.linspace(-7, 7, 4001, dtype=torch.float64).unsqueeze(1)
    with torch.no_grad():
        per_pixel = -torch.nn.functional.binary_cross_entropy_with_logits(
            model.decode(grid), x.expand(len(grid), -1, -1, -1), reduction="none").flatten(1)
        prior = log_normal(grid)
        exact = (torch.logsumexp((per_pixel * ~mask.flatten(1)).sum(1) + prior, 0)
                 - torch.logsumexp(per_pixel.sum(1) + prior, 0))
        estimate = model.hole_nll(x, mask, 20000, torch.Generator().manual_seed(2))
    assert estimate.shape == (1,) and estimate.item() == pytest.approx(exact.item(), abs=0.05)
    assert exact.item() > 0 and not model.exact_hole_nll
    gan = build_model("dcgan", model_config("dcgan", {"hidden": 8, "z_dim": 4})).eval()
    assert gan.hole_nll(x.float(), mask, 4) is None
