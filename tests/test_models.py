"""Model maths: shapes, finite ELBO, and the importance-weighted bound against brute force."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from rnngen.models import MODELS, build_model, model_config
from rnngen.models.base import GenerativeModel, NoLikelihoodError, gaussian_kl, log_normal
from rnngen.models.latent import GaussianLatentVAE

TINY = {
    "row_lstm_vae": {"hidden": 8, "z_dim": 3},
    "mlp_vae": {"hidden": 16, "z_dim": 3},
    "draw": {"steps": 3, "enc_hidden": 8, "dec_hidden": 8, "z_dim": 3},
    "pixelrnn": {"layers": 1, "hidden": 4, "out_hidden": 8},
    "dcgan": {"hidden": 4, "z_dim": 3},
}


def tiny(name: str) -> GenerativeModel:
    torch.manual_seed(0)
    return build_model(name, model_config(name, TINY.get(name, {})))


def binary_batch(n: int = 5, seed: int = 0) -> Tensor:
    return torch.bernoulli(torch.full((n, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(TINY))
def test_interface_shapes_and_finite_elbo(name: str) -> None:
    model, x = tiny(name), binary_batch()
    terms = model(x)
    assert terms.recon.shape == terms.kl.shape == (5,) and torch.isfinite(terms.nelbo).all()
    if model.has_likelihood:
        assert (terms.kl >= 0).all() and model.log_weights(x, 7).shape == (7, 5)
    else:  # a GAN: asked for a likelihood, it says it has none
        with pytest.raises(NoLikelihoodError, match="has no likelihood"):
            model.log_weights(x, 7)
    gen = torch.Generator().manual_seed(1)
    s = model.sample(4, generator=gen)
    assert s.shape == (4, 1, 28, 28) and 0 <= s.min() and s.max() <= 1
    assert model.reconstruct(x, generator=gen).shape == x.shape


@pytest.mark.parametrize("name", sorted(TINY))
def test_sampling_is_seeded_and_fresh(name: str) -> None:
    model = tiny(name)
    a = model.sample(3, generator=torch.Generator().manual_seed(0))
    b = model.sample(3, generator=torch.Generator().manual_seed(0))
    c = model.sample(3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    cool = model.sample(3, generator=torch.Generator().manual_seed(0), temperature=0.0)
    assert torch.allclose(cool[0], cool[1])  # temperature 0: every sample is the prior mean's image


@pytest.mark.parametrize("name", sorted(TINY))
def test_binary_samples_are_seeded_draws(name: str) -> None:
    model = tiny(name).eval()
    with torch.no_grad():
        a = model.sample_binary(4, generator=torch.Generator().manual_seed(0))
        b = model.sample_binary(4, generator=torch.Generator().manual_seed(0))
    assert a.shape == (4, 1, 28, 28) and ((a == 0) | (a == 1)).all() and torch.equal(a, b)


def test_every_registered_model_is_covered() -> None:
    assert set(MODELS) <= set(TINY)  # every registered model has a tiny setting, so every one is tested


def test_kl_matches_torch_distributions() -> None:
    mu, logvar = torch.randn(4, 6), torch.randn(4, 6)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(6), torch.ones(6))
    expected = torch.distributions.kl_divergence(q, p).sum(-1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected)


def test_log_normal_matches_torch_distributions() -> None:
    z, mu, logvar = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5)
    expected = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(log_normal(z, mu, logvar), expected)
    torch.testing.assert_close(log_normal(z), torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1))


class ToyVAE(GaussianLatentVAE):
    """1-d latent, 2x2 binary images, a fixed (deliberately imperfect) Gaussian q(z|x):
    log p(x) = log ∫ N(z) Π Bern(x | σ(a z + b)) dz is computable by quadrature."""

    name = "toy"

    def __init__(self) -> None:
        nn.Module.__init__(self)
        self.config = None
        self.z_dim = 1
        self.a = nn.Parameter(torch.tensor([2.0, -1.5, 0.5, 3.0], dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor([0.3, -0.2, 1.0, -1.0], dtype=torch.float64))

    def encode(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mu = 0.8 * x.flatten(1).sum(1, keepdim=True) - 1.0
        return mu, torch.full_like(mu, math.log(0.6))

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return (z * self.a + self.b).view(-1, 1, 2, 2)


def exact_log_px(model: ToyVAE, x: Tensor) -> Tensor:
    z = torch.linspace(-12, 12, 200_001, dtype=torch.float64).unsqueeze(1)  # quadrature grid
    dz = z[1, 0] - z[0, 0]
    logits = model.decode(z).flatten(1)  # (G, 4)
    out = []
    for xi in x.flatten(1):
        log_lik = -nn.functional.binary_cross_entropy_with_logits(logits, xi.expand_as(logits), reduction="none")
        out.append(torch.logsumexp(log_lik.sum(1) + log_normal(z), 0) + dz.log())
    return torch.stack(out)


def test_importance_weighted_bound_against_exact_likelihood() -> None:
    torch.manual_seed(0)
    model = ToyVAE()
    x = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 1, 1]], dtype=torch.float64).view(-1, 1, 2, 2)
    nll_exact = -exact_log_px(model, x).mean().item()
    results = {k: model.likelihood_metrics(x.repeat(200, 1, 1, 1), k, 400, seed=k, progress=False)
               for k in (1, 10, 1000)}
    # Each bound is an upper bound on the true NLL (in expectation; 800 images average it out).
    for k, r in results.items():
        assert r["nll_iwae"] >= nll_exact - 0.02, k
        assert r["nll_iwae"] <= r["nll_elbo"] + 1e-9  # log-mean-exp >= mean, per image
    # ...that tightens as k grows and converges to the exact value.
    assert results[1]["nll_iwae"] > results[10]["nll_iwae"] > results[1000]["nll_iwae"]
    assert results[1000]["nll_iwae"] == pytest.approx(nll_exact, abs=0.02)
    # With k = 1 the two bounds coincide.
    assert results[1]["nll_iwae"] == pytest.approx(results[1]["nll_elbo"])


def test_iwae_not_below_elbo_on_a_real_model_and_tightens() -> None:
    model, x = tiny("row_lstm_vae"), binary_batch(20)
    b1 = model.likelihood_metrics(x, 1, 20, seed=0, progress=False)
    b50 = model.likelihood_metrics(x, 50, 20, seed=0, progress=False)
    assert b50["nll_iwae"] <= b50["nll_elbo"]
    assert b50["nll_iwae"] < b1["nll_iwae"]
    assert b50["bpd_iwae"] == pytest.approx(b50["nll_iwae"] / (784 * math.log(2)))


def test_row_lstm_vae_matches_its_plain_unrolled_reference() -> None:
    """nn.LSTM's fused kernel (the model) and the same weights unrolled step by step with torch's
    LSTM cell (the bench's baseline): the same loss terms and gradients, in float64."""
    from rnngen.models.reference import row_lstm_vae as row_lstm_vae_reference

    model, x = tiny("row_lstm_vae").double(), binary_batch(6).double()
    torch.manual_seed(3)
    fast = model(x)
    grads = torch.autograd.grad(fast.nelbo.sum(), list(model.parameters()))
    torch.manual_seed(3)  # the same reparameterisation noise
    plain = row_lstm_vae_reference.forward(model, x)
    plain_grads = torch.autograd.grad(plain.nelbo.sum(), list(model.parameters()))
    torch.testing.assert_close(plain.recon, fast.recon, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(plain.kl, fast.kl, rtol=1e-10, atol=1e-10)
    for (name, _), g, p in zip(model.named_parameters(), grads, plain_grads, strict=True):
        torch.testing.assert_close(p, g, rtol=1e-9, atol=1e-10, msg=name)
