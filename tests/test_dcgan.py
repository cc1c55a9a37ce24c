"""The GAN baseline: each network gets the gradient of its own loss from the one backward pass,
a step moves both losses the documented way, the gradient penalty is its definition, the
latent search repairs, the tuner and promotion treat a model without a likelihood as such."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from rnngen.config import ConfigError
from rnngen.models import build_model, model_config
from rnngen.models.dcgan import DCGAN, RESTARTS
from rnngen.promote import Candidate, PromoteConfig, decide
from rnngen.tracking import TrackingError
from rnngen.train import TrainConfig, make_optimizer
from rnngen.tuning.space import validate
from test_models import binary_batch


def gan(loss: str, **config: object) -> DCGAN:
    torch.manual_seed(0)
    return build_model("dcgan", model_config("dcgan", {"loss": loss, "hidden": 4, "z_dim": 3, **config}))


def losses_by_hand(model: DCGAN, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two losses written out, every weight live (no detaching): the brute force."""
    fake = torch.sigmoid(model.generator(z))
    real_score, fake_score = model.disc(x), model.disc(fake)
    if model.config.loss == "gan":  # -log D(x) - log(1 - D(G(z))) and -log D(G(z))
        return (-F.logsigmoid(real_score) - torch.log1p(-torch.sigmoid(fake_score))).sum(), \
            -F.logsigmoid(fake_score).sum()
    return (fake_score - real_score).sum(), -fake_score.sum()


@pytest.mark.parametrize("loss", ["gan", "wgan_gp"])
def test_one_backward_gives_each_network_the_gradient_of_its_own_loss(loss: str) -> None:
    model, x = gan(loss, penalty=0.0), binary_batch(6)
    torch.manual_seed(1)
    model(x).objective().backward()
    torch.manual_seed(1)
    z = torch.randn(6, 3)  # the forward's first draw: the same noise
    disc_loss, gen_loss = losses_by_hand(model, x, z)
    discs, gens = list(model.disc.parameters()), list(model.generator.parameters())
    for params, loss_alone in ((discs, disc_loss), (gens, gen_loss)):
        expected = torch.autograd.grad(loss_alone, params, retain_graph=True)
        for p, g in zip(params, expected, strict=True):
            torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("loss", ["gan", "wgan_gp"])
def test_a_step_lowers_the_discriminator_loss_with_the_generator_held_and_vice_versa(loss: str) -> None:
    before, x = gan(loss, penalty=0.0).train(), binary_batch(16)
    after = copy.deepcopy(before)
    optimizer = make_optimizer(after, TrainConfig(optimizer="sgd", lr=0.01, momentum=0.0))
    torch.manual_seed(2)
    (after(x).objective() / len(x)).backward()  # the batch mean, as training takes it
    optimizer.step()
    torch.manual_seed(2)
    z = torch.randn(16, 3)  # the noise the step was taken on
    new_disc, new_gen = copy.deepcopy(before), copy.deepcopy(before)
    new_disc.disc.load_state_dict(after.disc.state_dict())
    new_gen.generator.load_state_dict(after.generator.state_dict())
    with torch.no_grad():
        old_d, old_g = losses_by_hand(before, x, z)
        assert losses_by_hand(new_disc, x, z)[0] < old_d  # D tells real from fake better
        assert losses_by_hand(new_gen, x, z)[1] < old_g  # G fools the held D more


def test_the_gradient_penalty_is_its_definition_by_finite_differences() -> None:
    model = gan("wgan_gp").double()
    real, fake = binary_batch(2).double(), torch.rand(2, 1, 28, 28, dtype=torch.float64,
                                                      generator=torch.Generator().manual_seed(4))
    torch.manual_seed(5)
    penalty = model.gradient_penalty(real, fake, None)
    torch.manual_seed(5)
    e = torch.rand(2, 1, 1, 1, dtype=torch.float64)
    mixed = e * real + (1 - e) * fake
    h = 1e-6
    expected = []
    with torch.no_grad():
        for i in range(2):
            steps = torch.eye(784, dtype=torch.float64).view(784, 1, 28, 28) * h
            rows = mixed[i : i + 1]
            grad = (model.disc(rows + steps) - model.disc(rows - steps)) / (2 * h)  # (784,)
            expected.append((grad.norm() - 1) ** 2)
    torch.testing.assert_close(penalty, torch.stack(expected), atol=1e-6, rtol=1e-5)


def test_repair_keeps_the_observed_pixels_and_its_search_improves_on_every_start() -> None:
    model, x = gan("gan").eval(), binary_batch(4)
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[:, :, 14:] = True
    done = model.complete(x, mask, 4, torch.Generator().manual_seed(0))
    assert torch.equal(done.drawn[~mask], x[~mask]) and torch.equal(done.means[~mask], x[~mask])
    assert ((done.drawn == 0) | (done.drawn == 1)).all()

    found = model.search(x, ~mask, 4, torch.Generator().manual_seed(0))
    starts = torch.randn(RESTARTS, 4, 3, generator=torch.Generator().manual_seed(0))  # the search's own starts
    with torch.no_grad():
        best_start = torch.stack([model.search_loss(z, x, ~mask, None) for z in starts]).min(0).values
        assert (model.search_loss(found, x, ~mask, None) < best_start).all()


def test_each_network_has_its_own_learning_rate_and_betas() -> None:
    model = gan("wgan_gp", lr_scale=0.5, disc_lr_ratio=3.0)
    adam = make_optimizer(model, TrainConfig(lr=0.002))
    assert [(g["lr"], g["betas"]) for g in adam.param_groups] == [(0.001, (0.0, 0.9)), (0.003, (0.0, 0.9))]
    sgd = make_optimizer(model, TrainConfig(lr=0.002, optimizer="sgd"))
    assert [g["lr"] for g in sgd.param_groups] == [0.001, 0.003]


def test_the_validation_distance_is_seeded_and_falls_to_zero_on_the_data_itself() -> None:
    model, x = gan("gan").eval(), binary_batch(40)
    assert model.validation_distance(x, None, 0) == model.validation_distance(x, None, 0) > 0
    assert model.validation_distance(x, None, 0) != model.validation_distance(x, None, 1)


def test_a_search_over_a_gan_and_a_likelihood_model_is_refused_before_compute() -> None:
    from conftest import ROOT
    from rnngen.config import load_params

    params = load_params(ROOT / "params.yaml")
    params["model"]["name"] = "dcgan"
    params["tune"] = {**params["tune"], "n_trials": 4, "models": ["mlp_vae"]}
    with pytest.raises(ConfigError, match="dcgan has no likelihood"):
        validate(params)


# ---------------------------------------------------------------------- promotion

IDENTITY = {"data_sha256": "abc", "k": "4", "n_test": "100", "n_quality": "50"}


def version(v: str, likelihood: str, **metrics: float) -> Candidate:
    return Candidate("rnngen", v, f"run{v}", metrics, dict(IDENTITY), likelihood=likelihood)


def test_promotion_between_a_gan_and_a_likelihood_model() -> None:
    gan_v = version("2", "none", test_fcd=10.0, test_classifier_score_samples=8.0)
    pixelrnn = version("1", "exact", test_nll_iwae=85.0, test_nll_elbo=85.0, test_fcd=14.0)
    default = PromoteConfig()  # ranks by test_nll_iwae, which the GAN lacks: refused both ways
    with pytest.raises(TrackingError, match="challenger rnngen v2 has no likelihood") as err:
        decide(gan_v, pixelrnn, default)
    assert "--primary test_fcd" in str(err.value)
    with pytest.raises(TrackingError, match=r"champion \(@champion\) rnngen v2 has no likelihood"):
        decide(pixelrnn, gan_v, default)
    # ranked by a metric both have, the rule runs as for any two models; the NLL is shown, not judged
    by_fcd = PromoteConfig(primary="test_fcd", margin=1.0, tolerances={"test_nll_elbo": 1.0})
    won = decide(gan_v, pixelrnn, by_fcd)
    assert won.outcome == "promoted" and [r.ok for r in won.rows] == [True, None]
    assert "champion" not in won.rows[1].note and "challenger has none" in won.rows[1].note
    assert decide(pixelrnn, gan_v, by_fcd).outcome == "kept"  # FCD 14 does not beat 10
    # the first model needs no comparison; --force moves the alias whatever
    assert decide(gan_v, None, by_fcd).outcome == "first"
    assert decide(pixelrnn, gan_v, default, force=True).outcome == "forced"
