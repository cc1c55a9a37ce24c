"""Class-conditional PixelRNN, p(x | y), against brute force on tiny images: the label truly
conditions, zeroed class biases give the unconditional model, causality holds, the likelihood
sums to one for every label, the C++ row loop equals the op loop with per-image biases, the
samplers use the label, and bad labels are refused."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_params
from rnngen.errors import UserError
from rnngen.models import build_model, kernels, model_config
from rnngen.models.base import LabelError, SamplingError
from rnngen.models.pixelrnn import PixelRNN
from test_pixelrnn import VARIANTS, all_images


def tiny(variant: str, conditional: bool = True, seed: int = 0, layers: int = 2, **more: Any) -> PixelRNN:
    torch.manual_seed(seed)
    model = build_model("pixelrnn", model_config("pixelrnn", {"variant": variant, "layers": layers, "hidden": 4,
                                                               "out_hidden": 8, "conditional": conditional,
                                                               "classes": 3, "label_dropout": 0.0,
                                                               "guidance": 1.0, **more}))
    with torch.no_grad():  # larger than the init (the class biases start at 0): every path carries signal
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model.double()


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_label_conditions_and_zeroed_class_biases_are_the_unconditional_model(variant: str) -> None:
    model = tiny(variant)
    x = torch.bernoulli(torch.full((3, 1, 4, 5), 0.4, dtype=torch.float64))
    by_label = [model.logits(x, torch.full((3,), k)) for k in range(3)]
    assert not torch.allclose(by_label[0], by_label[1]) and not torch.allclose(by_label[1], by_label[2])
    mixed = model.logits(x, torch.tensor([2, 0, 1]))  # each image its own label
    assert torch.allclose(mixed, torch.stack([by_label[2][0], by_label[0][1], by_label[1][2]]))
    plain = tiny(variant, conditional=False)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("class_gates")})
    with torch.no_grad():
        for table in model.class_gates:
            table.weight.zero_()
    assert torch.allclose(model.logits(x, torch.tensor([2, 0, 1])), plain.logits(x), atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
def test_causality_by_gradients_with_a_label(variant: str) -> None:
    model = tiny(variant, layers=3)
    with torch.no_grad():
        model.out1.bias.fill_(3.0)  # the head's ReLUs pass gradient
    height, width = 4, 5
    x = torch.rand(3, 1, height, width, dtype=torch.float64, requires_grad=True)
    logits = model.logits(x, torch.tensor([0, 1, 2])).flatten(1)
    for p in range(height * width):
        (grad,) = torch.autograd.grad(logits[:, p].sum(), x, retain_graph=True)
        flat = grad[:, 0].flatten(1)
        assert torch.all(flat[:, p:] == 0), (variant, p)
        if p % width:
            assert (flat[:, p - 1] != 0).any(), (variant, p)


@pytest.mark.parametrize("variant", VARIANTS)
def test_exact_likelihood_sums_to_one_for_every_label(variant: str) -> None:
    model = tiny(variant, seed=1)
    every = all_images(3, 3)  # 512 images
    for k in range(3):
        log_p = model.log_likelihood(every, y=torch.full((len(every),), k))
        assert torch.logsumexp(log_p, 0).exp().item() == pytest.approx(1.0, abs=1e-9), k


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_kernels_agree_with_the_op_loops_on_per_image_biases(variant: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The C++ layers take a per-image gate bias ((batch, 4h), or (batch, 2, 4h) for both
    directions); their values and every gradient (the class tables' too) equal the op loops',
    where the bias is a broadcast sum."""
    assert kernels.ops("row_lstm", torch.zeros(1)) is not None, "the C++ row loop did not build (g++, ninja?)"
    assert kernels.ops("diagonal_bilstm", torch.zeros(1)) is not None, "the C++ diagonal loop did not build"
    model = tiny(variant)
    x = torch.bernoulli(torch.full((3, 1, 5, 6), 0.4, dtype=torch.float64))
    y = torch.tensor([1, 0, 1])
    weights = torch.randn(3, 1, 5, 6, dtype=torch.float64)
    results = []
    for switch in ("1", "0"):  # the C++ loop, then the op loop
        monkeypatch.setenv("RNNGEN_KERNELS", switch)
        out = model.logits(x, y)
        results.append((out, torch.autograd.grad((out * weights).sum(), list(model.parameters()))))
    (a, ga), (b, gb) = results
    assert torch.allclose(a, b, atol=1e-12)
    for (name, _), u, v in zip(model.named_parameters(), ga, gb, strict=True):
        assert torch.allclose(u, v, atol=1e-10), name


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_samplers_draw_from_the_asked_class(variant: str) -> None:
    model = tiny(variant, seed=2)
    y = torch.tensor([0, 1, 2] * 4)
    images, probs = model.generate(12, torch.Generator().manual_seed(0), size=(3, 4), y=y)
    # the sampler's conditionals are the forward pass's for each image's own label
    assert torch.allclose(probs, torch.sigmoid(model.logits(images, y)), atol=1e-9)
    mask = torch.zeros(12, 1, 3, 4, dtype=torch.bool)
    mask[:, :, :, 1::2] = True  # hidden pixels with observed ones after them: the particle filter
    done = model.complete(images, mask, effort=4, generator=torch.Generator().manual_seed(1), y=y)
    assert torch.equal(done.drawn[~mask], images[~mask])
    assert torch.allclose(done.means[mask], torch.sigmoid(model.logits(done.drawn, y))[mask], atol=1e-9)


def label_free(model: PixelRNN) -> PixelRNN:
    """The same network with its class tables zeroed: what it computes for an image without a label."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for table in twin.class_gates:
            table.weight.zero_()
    return twin


@pytest.mark.parametrize("variant", VARIANTS)
def test_label_dropout_trains_some_images_without_their_label(variant: str) -> None:
    model = tiny(variant, label_dropout=0.5).eval()
    x = torch.bernoulli(torch.full((16, 1, 3, 4), 0.4, dtype=torch.float64))
    y = torch.arange(16) % 3
    cond, free = model.logits(x, y), label_free(model).logits(x, y)
    model.train()
    torch.manual_seed(0)
    dropped = model.logits(x, y)
    as_cond = torch.isclose(dropped, cond, atol=1e-12).flatten(1).all(1)
    as_free = torch.isclose(dropped, free, atol=1e-12).flatten(1).all(1)
    assert bool((as_cond ^ as_free).all())  # each image wholly one or the other
    assert 0 < int(as_free.sum()) < 16
    model.eval()
    assert torch.equal(model.logits(x, y), cond)  # no dropout outside training


@pytest.mark.parametrize("variant", VARIANTS)
def test_guided_samplers_mix_the_labelled_and_label_free_logits(variant: str) -> None:
    """Each drawn pixel's probability is sigmoid(l_free + s (l_cond - l_free)) of the forward
    passes at the drawn prefix; s = 1 is plain p(x | y), and repair never guides."""
    model = tiny(variant, seed=2, label_dropout=0.1, guidance=2.5).eval()
    y = torch.tensor([0, 1, 2] * 3)
    images, probs = model.generate(9, torch.Generator().manual_seed(0), size=(3, 4), y=y)
    cond, free = model.logits(images, y), label_free(model).logits(images, y)
    assert torch.allclose(probs, torch.sigmoid(free + 2.5 * (cond - free)), atol=1e-9)
    assert not torch.allclose(probs, torch.sigmoid(cond), atol=1e-3)
    plain = tiny(variant, seed=2, label_dropout=0.1).eval()
    plain.load_state_dict(model.state_dict())
    images, probs = plain.generate(9, torch.Generator().manual_seed(0), size=(3, 4), y=y)
    assert torch.allclose(probs, torch.sigmoid(plain.logits(images, y)), atol=1e-9)
    mask = torch.zeros(9, 1, 3, 4, dtype=torch.bool)
    mask[:, :, :, 1::2] = True
    done = [m.complete(images, mask, effort=4, generator=torch.Generator().manual_seed(1), y=y).drawn
            for m in (model, plain)]
    assert torch.equal(done[0], done[1])


def test_guidance_is_set_per_call_without_touching_the_model() -> None:
    from rnngen import service

    model = tiny("row_lstm", seed=2, label_dropout=0.1, guidance=2.5).eval()
    y = torch.tensor([0, 1, 2])
    plain = model.with_sampling(guidance=1.0)
    assert model.config.guidance == 2.5 and plain.config.guidance == 1.0
    assert plain.class_gates[0].weight is model.class_gates[0].weight  # the same weights
    unguided = tiny("row_lstm", seed=2, label_dropout=0.1).eval()
    unguided.load_state_dict(model.state_dict())
    assert torch.equal(service.draw(model, 3, seed=4, y=y, guidance=1.0), service.draw(unguided, 3, seed=4, y=y))
    assert torch.equal(service.draw(model, 3, seed=4, y=y), service.draw(unguided, 3, seed=4, y=y, guidance=2.5))
    with pytest.raises(SamplingError, match="guidance: must be >= 0"):
        model.with_sampling(guidance=-1.0)
    with pytest.raises(SamplingError, match="temperature: pixelrnn has no such sampling setting .it has: guidance"):
        model.with_sampling(temperature=2.0)
    with pytest.raises(SamplingError, match="needs a model that also learned p.x. without a label"):
        tiny("row_lstm").with_sampling(guidance=2.0)  # trained without label dropout
    request = {"task": "sample", "n": 2, "guidance": 2.0}
    with pytest.raises(service.RequestError, match="task 'sample': guidance: this model is unconditional"):
        service.answer(tiny("row_lstm", conditional=False), [], request)
    vae = build_model("mlp_vae", model_config("mlp_vae", {"hidden": 8, "z_dim": 2}))
    with pytest.raises(service.RequestError, match="guidance: mlp_vae has no such sampling setting .it has none"):
        service.answer(vae, [], request)
    assert service.answer(vae, [], {"task": "sample", "n": 2}).shape == (2, 28, 28)  # absent: the model's own


def test_guidance_needs_a_label_free_model() -> None:
    with pytest.raises(UserError, match="guidance: 2 needs a model that also learned p.x. without a label"):
        model_config("pixelrnn", {"conditional": True, "label_dropout": 0.0, "guidance": 2.0})
    with pytest.raises(UserError, match="label_dropout: must be in"):
        model_config("pixelrnn", {"conditional": True, "label_dropout": 1.0})
    model_config("pixelrnn", {"conditional": False, "guidance": 2.0})  # unconditional: no label to guide by


def test_bad_labels_are_refused() -> None:
    x = torch.zeros(2, 1, 3, 3, dtype=torch.float64)
    with pytest.raises(LabelError, match="trained without labels"):
        tiny("row_lstm", conditional=False).logits(x, torch.tensor([0, 1]))
    model = tiny("row_lstm")
    with pytest.raises(LabelError, match="is conditional: give each image a label, 0 to 2"):
        tiny("row_lstm", repair=True).logits(x)  # a repair model has no mixture over classes
    with pytest.raises(LabelError, match="label 3: this model was trained on classes 0 to 2"):
        model.logits(x, torch.tensor([0, 3]))
    with pytest.raises(LabelError, match="3 labels for 2 images: give one label for all, or one per image"):
        model.sample(2, y=torch.tensor([1, 2, 0]))
    with pytest.raises(LabelError, match="labels are class numbers, 0 to 2: got 1.5"):
        model.labels([1.5, 2.0], 2)


def test_labels_are_read_in_one_place_from_whatever_a_caller_gives() -> None:
    """An int, a list, a numpy array or a tensor: one class for all, or one per image; JSON's
    empty list is no labels."""
    model = tiny("row_lstm")
    for given in (2, [2], np.array([2]), torch.tensor(2)):
        assert model.labels(given, 3).tolist() == [2, 2, 2]
    assert model.labels([0, 1, 2], 3).tolist() == [0, 1, 2]
    assert model.labels(np.array([0, 2], dtype=np.uint8), 2).dtype == torch.long
    assert tiny("row_lstm", conditional=False).labels([], 4) is None
    assert model.labels([], 4) is None  # no class given: the mixture over classes
    with pytest.raises(LabelError, match="is conditional"):
        tiny("row_lstm", repair=True).labels([], 4)


def test_a_conditional_model_through_train_evaluate_registry_and_service(
    tmp_path: Path, split_dir: Path, mlflow_uri: str, trained_model: dict[str, Any],
) -> None:
    """The train stage trains p(x | y) on the split's labels; evaluate scores p(x), the mixture
    over classes (a conditional PixelRNN needs no label), and asks the judge about samples of
    each class; the registered model serves samples of a class (labels param), and without
    labels draws of p(x), scores and repairs."""
    from rnngen import registry, service, stages
    from rnngen.files import read_json

    params = tiny_params(**{"model.name": "pixelrnn", "model.pixelrnn.conditional": True})
    stages.train.run(params, split_dir, None, tmp_path / "models", tmp_path / "ck.pt", tmp_path / "h.csv")
    result = stages.evaluate.run(params, tmp_path / "models", split_dir, trained_model["classifier"],
                                 tmp_path / "metrics.json", tmp_path / "pictures")
    assert result["test_set"]["conditional"] == "false"  # the likelihood is of p(x)
    assert result["test_nll_exact"] > 0 and "test_hole_nll_centre_square" in result
    assert 0 <= result["test_asked_accuracy"] <= 1 and "test_asked_accuracy_7" in result
    with Image.open(tmp_path / "pictures" / "samples.png") as im:  # a row per class: 16 // 10 = 1 a row
        assert im.size == (1 * 30 + 2, 10 * 30 + 2)
    record = read_json(tmp_path / "models" / "run.json")
    model = registry.load(f"models:/rnngen/{record['model_version']}", "rnngen").model
    drawn = service.answer(model, [], {"task": "sample", "n": 2, "labels": [3], "seed": 1})
    again = service.draw(model, 2, 1, y=torch.tensor([3, 3]))
    assert np.array_equal(drawn, again.view(-1, 28, 28).numpy())
    assert np.asarray(service.answer(model, [], {"task": "sample", "n": 2})).shape == (2, 28, 28)
    x = torch.zeros(2, 1, 28, 28)
    x[:, :, 8:20, 12:16] = 1.0  # a stroke
    scores = service.score(model, x)
    labelled = [service.score(model, x, y=c) for c in range(10)]
    mixture = -np.logaddexp.reduce([-s.astype(np.float64) for s in labelled], 0) + np.log(10)
    assert np.allclose(scores, mixture, atol=1e-3)  # p(x) = mean over y of p(x | y)
    with pytest.raises(service.RequestError, match="label 12"):
        service.answer(model, [], {"task": "sample", "n": 1, "labels": [12]})


def test_unlabelled_data_is_refused_before_training(tmp_path: Path, split_dir: Path, mlflow_uri: str) -> None:
    from rnngen import stages
    from rnngen.errors import UserError

    flat = tmp_path / "split"
    shutil.copytree(split_dir, flat)
    for name in ("train", "val", "test"):  # a flat image folder: one label for every image
        np.save(flat / f"{name}_y.npy", np.zeros_like(np.load(flat / f"{name}_y.npy")))
    params = tiny_params(**{"model.name": "mlp_vae", "model.mlp_vae.conditional": True})
    with pytest.raises(UserError, match="model.mlp_vae.conditional is true but the training images are not "
                                        "labelled"):
        stages.train.run(params, flat, None, tmp_path / "models", tmp_path / "ck.pt", tmp_path / "h.csv")
    assert not (tmp_path / "models").exists() and not (tmp_path / "ck.pt").exists()
    few = tiny_params(**{"model.name": "mlp_vae", "model.mlp_vae.conditional": True, "model.mlp_vae.classes": 5})
    with pytest.raises(UserError, match="model.mlp_vae.classes is 5: set it to 10"):
        stages.train.run(few, split_dir, None, tmp_path / "models", tmp_path / "ck.pt", tmp_path / "h.csv")


@pytest.mark.parametrize("attention", [True, False])
def test_draws_fast_recurrence_equals_its_equations_with_labels(attention: bool) -> None:
    """The hand-written BPTT with per-image class biases against the paper's recurrence under
    autograd: values and every gradient, the class tables' included; the label conditions."""
    torch.manual_seed(0)
    model = build_model("draw", model_config("draw", {"steps": 3, "enc_hidden": 8, "dec_hidden": 8, "z_dim": 3,
                                                      "attention": attention, "conditional": True,
                                                      "classes": 4})).double()
    with torch.no_grad():
        for p in (model.canvas0, model.h_enc0, model.h_dec0, model.class_dec.weight, model.class_enc.weight):
            p.normal_(0, 0.3)
    x = torch.bernoulli(torch.full((3, 1, 28, 28), 0.3, dtype=torch.float64))
    eps = torch.randn(3, 3, 3, dtype=torch.float64)
    y = torch.tensor([1, 3, 1])
    outs, refs = model._recurrence(x, eps, y), model.unroll(x, eps, y=y)
    for out, ref in zip(outs, refs, strict=True):
        assert torch.allclose(out, ref, atol=1e-10)
    weights = [torch.randn_like(r) for r in refs]
    params = [p for _, p in model.named_parameters()]
    fast = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outs, weights, strict=True)), params)
    slow = torch.autograd.grad(sum((r * w).sum() for r, w in zip(refs, weights, strict=True)), params,
                               allow_unused=True)
    for (name, _), f, s in zip(model.named_parameters(), fast, slow, strict=True):
        assert torch.allclose(f, torch.zeros_like(f) if s is None else s, atol=1e-9), name
    other = model._recurrence(x, eps, torch.tensor([0, 2, 1]))
    assert not torch.allclose(other[0][0], outs[0][0]) and torch.allclose(other[0][2], outs[0][2])
    assert model.sample(2, y=torch.tensor([0, 3])).shape == (2, 1, 28, 28)


def test_rnngen_sample_guidance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``rnngen sample --guidance``: drawn with the scale asked for; refused with a sentence and
    nothing written when the model has no class to guide toward."""
    from rnngen import checkpoint
    from test_cli import run_main

    guided, plain = tmp_path / "guided.pt", tmp_path / "plain.pt"
    checkpoint.save_model(guided, tiny("row_lstm", label_dropout=0.1).float())
    checkpoint.save_model(plain, tiny("row_lstm", conditional=False).float())
    code, out, _ = run_main(["sample", "--model", str(guided), "--label", "2", "--guidance", "1.5", "--n", "2",
                             "--out", str(tmp_path / "a.png")], capsys)
    assert code == 0 and "class 2, guidance 1.5" in out and (tmp_path / "a.png").is_file()
    code, _, err = run_main(["sample", "--model", str(plain), "--guidance", "2", "--n", "2",
                             "--out", str(tmp_path / "b.png")], capsys)
    assert code == 2 and "guidance: this model is unconditional" in err and not (tmp_path / "b.png").exists()
    code, _, err = run_main(["sample", "--model", str(guided), "--label", "2", "--guidance", "-1",
                             "--out", str(tmp_path / "c.png")], capsys)
    assert code == 2 and "expected a number >= 0" in err


def test_a_checkpoint_from_before_guidance_samples_as_it_was_trained(tmp_path: Path) -> None:
    """A checkpoint whose config predates label_dropout and guidance was trained without label
    dropout: it loads unguided (1.0), never with today's default guidance."""
    from rnngen import checkpoint

    path = tmp_path / "old.pt"
    checkpoint.save_model(path, tiny("row_lstm"))
    state = checkpoint.load(path)
    for key in ("label_dropout", "guidance"):
        del state["model"]["config"][key]
    checkpoint.save(path, state)
    config = checkpoint.load_model(path).config
    assert (config.label_dropout, config.guidance, config.conditional) == (0.0, 1.0, True)
    assert model_config("pixelrnn", {}).guidance == 1.25  # today's default, for new models
