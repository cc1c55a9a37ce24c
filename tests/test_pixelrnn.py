"""PixelRNN against brute force on tiny images: causality by gradients, the exact likelihood
summing to one over every binary image, samples matching the model's probabilities, the fast
implementation equal to the plain one (values and gradients), completion keeping the observed
pixels."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from rnngen.config import ConfigError
from rnngen.models import build_model, kernels, model_config
from rnngen.models.pixelrnn import PixelRNN, causal_mask
from rnngen.models.pixelrnn_layers import skew, unskew
from rnngen.models.reference import pixelrnn as reference

VARIANTS = ("row_lstm", "diagonal_bilstm")
#: (variant, loop): each layer's C++ kernel (rnngen.models.kernels) and its PyTorch-op loop
LOOPS = tuple(itertools.product(VARIANTS, ("cpp", "ops")))


@pytest.fixture
def loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test on the given loop: ``cpp`` must really be the C++ kernels (a build that
    fails here fails the test rather than falling back to the slower loop unseen)."""
    monkeypatch.setenv("RNNGEN_KERNELS", "1" if request.param == "cpp" else "0")
    if request.param == "cpp":
        assert kernels.ops("row_lstm", torch.zeros(1)) is not None, "the C++ row loop did not build (g++, ninja?)"
        assert kernels.ops("diagonal_bilstm", torch.zeros(1)) is not None, "the C++ diagonal loop did not build"
    return request.param


def tiny(variant: str, layers: int = 2, hidden: int = 4, seed: int = 0) -> PixelRNN:
    torch.manual_seed(seed)
    model = build_model("pixelrnn", model_config("pixelrnn", {"variant": variant, "layers": layers,
                                                               "hidden": hidden, "out_hidden": 8}))
    with torch.no_grad():  # larger than the init: every path, initial states too, carries signal
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model.double()


def all_images(height: int, width: int) -> torch.Tensor:
    bits = list(itertools.product([0.0, 1.0], repeat=height * width))
    return torch.tensor(bits, dtype=torch.float64).view(-1, 1, height, width)


def test_masks_and_skew() -> None:
    assert causal_mask(3, 3, "A").tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert causal_mask(1, 3, "B").tolist() == [[1, 1, 0]]
    x = torch.arange(2 * 3 * 4).float().view(2, 3, 4, 1)  # (B, n=3, m=4, C)
    s = skew(x)
    assert s.shape == (2, 3, 6, 1)
    for i in range(3):
        for j in range(4):
            assert s[1, i, i + j, 0] == x[1, i, j, 0]  # row i shifted right by i
    assert s[0, 2, :2].abs().sum() == 0  # left of the band: zeros
    assert torch.equal(unskew(s, 4), x)


@pytest.mark.parametrize("variant", VARIANTS)
def test_causality_by_gradients(variant: str) -> None:
    """d logit(p) / d x(q) is exactly 0 for every q at or after p in raster order, and not 0
    for the pixel just left of p."""
    model = tiny(variant, layers=3)
    with torch.no_grad():
        model.out1.bias.fill_(3.0)  # the head's ReLUs pass gradient (a dead one would hide a path)
    height, width = 5, 6
    x = torch.rand(4, 1, height, width, dtype=torch.float64, requires_grad=True)
    logits = model.logits(x).flatten(1)  # (B, pixels)
    for p in range(height * width):
        # the sum over images: each image's logit depends on its own pixels only (checked
        # below), so the gradient holds every image's own d logit(p) / d x
        (grad,) = torch.autograd.grad(logits[:, p].sum(), x, retain_graph=True)
        flat = grad[:, 0].flatten(1)
        assert torch.all(flat[:, p:] == 0), (variant, p, flat[:, p:].nonzero().tolist())
        if p % width:  # (a ReLU of the head may be off for one image, not for all)
            assert (flat[:, p - 1] != 0).any(), (variant, p)
    (grad,) = torch.autograd.grad(logits[0].sum(), x)
    assert torch.all(grad[1:] == 0)  # nothing from the other images


@pytest.mark.parametrize("variant", VARIANTS)
def test_exact_likelihood_sums_to_one_over_every_image(variant: str) -> None:
    for seed in (0, 1):
        model = tiny(variant, seed=seed)
        log_p = model.log_likelihood(all_images(3, 3))  # 512 images
        assert torch.logsumexp(log_p, 0).exp().item() == pytest.approx(1.0, abs=1e-9)
        terms = model(all_images(3, 3)[:5])
        assert torch.allclose(terms.recon, -log_p[:5]) and torch.all(terms.kl == 0)


@pytest.mark.parametrize(("variant", "loop"), LOOPS, indirect=["loop"])
def test_fast_equals_the_plain_reference_values_and_gradients(variant: str, loop: str) -> None:
    model = tiny(variant, layers=2)
    x = torch.bernoulli(torch.full((3, 1, 5, 6), 0.4, dtype=torch.float64))
    fast = model.logits(x)
    plain = reference.logits(model, x)
    assert torch.allclose(fast, plain, atol=1e-12)
    weights = torch.randn_like(fast)
    g_fast = torch.autograd.grad((fast * weights).sum(), list(model.parameters()))
    g_plain = torch.autograd.grad((reference.logits(model, x) * weights).sum(), list(model.parameters()))
    for (name, _), a, b in zip(model.named_parameters(), g_fast, g_plain, strict=True):
        assert torch.allclose(a, b, atol=1e-10), name


@pytest.mark.parametrize(("variant", "loop"), LOOPS, indirect=["loop"])
def test_bfloat16_autocast_stays_close_to_float32(variant: str, loop: str) -> None:
    """Under CPU bfloat16 autocast (``train.amp``) the row loops take bfloat16 GEMM operands and
    keep fp32 gates and cells (the C++ loop also returns bfloat16 states): logits within 0.1 of
    fp32 (bfloat16 has 8 mantissa bits), the whole gradient pointing the same way (cosine > 0.99)
    and each parameter's too (> 0.95: the small ones, such as the initial states', are sums with
    cancellation)."""
    torch.manual_seed(0)
    model = build_model("pixelrnn", model_config("pixelrnn", {"variant": variant, "layers": 2, "hidden": 8}))
    x = torch.bernoulli(torch.full((4, 1, 10, 12), 0.3))
    weights = torch.randn(4, 1, 10, 12)
    grads = []
    for amp in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits = model.logits(x).float()
        grads.append((logits, torch.autograd.grad((logits * weights).sum(), list(model.parameters()))))
    (ref, g_ref), (low, g_low) = grads
    assert (low - ref).abs().max() < 0.1
    whole = torch.cosine_similarity(torch.cat([g.flatten() for g in g_ref]), torch.cat([g.flatten() for g in g_low]), 0)
    assert whole > 0.99
    for (name, _), a, b in zip(model.named_parameters(), g_ref, g_low, strict=True):
        assert torch.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.95, name


@pytest.mark.parametrize("variant", VARIANTS)
def test_samples_match_the_probabilities(variant: str) -> None:
    model = tiny(variant, seed=2)
    images, probs = model.generate(20000, torch.Generator().manual_seed(0), size=(2, 3))
    # the sampler's conditionals are the forward pass's, pixel for pixel
    assert torch.allclose(probs, torch.sigmoid(model.logits(images)), atol=1e-9)
    every = all_images(2, 3)
    p = model.log_likelihood(every).exp()
    index = (images.view(len(images), -1) * (2 ** torch.arange(5, -1, -1, dtype=torch.float64))).sum(1).long()
    freq = torch.bincount(index, minlength=64).double() / len(images)
    # total variation: about 0.02 expected from 20,000 draws over 64 images; a sampler that
    # got one conditional wrong is off by far more
    assert 0.5 * (freq - p).abs().sum().item() < 0.05


@pytest.mark.parametrize("variant", VARIANTS)
def test_completion_keeps_observed_pixels_and_bottom_half_is_exact(variant: str) -> None:
    model = tiny(variant)
    x = torch.bernoulli(torch.full((6, 1, 4, 5), 0.5, dtype=torch.float64))
    for mask in (torch.zeros_like(x, dtype=torch.bool).index_fill_(2, torch.tensor([2, 3]), True),
                 torch.rand(x.shape) < 0.5):
        drawn, means, _ = model.complete(x, mask, 3, generator=torch.Generator().manual_seed(0))
        assert torch.equal(drawn[~mask], x[~mask]) and torch.equal(means[~mask], x[~mask])
        assert ((drawn == 0) | (drawn == 1)).all() and ((means >= 0) & (means <= 1)).all()
    # bottom half: every observed pixel precedes every hidden one, so the completion is drawn
    # from p(hidden | observed) exactly: its conditionals are the model's along the drawn path
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[:, :, 2:] = True
    images, probs = model.generate(6, torch.Generator().manual_seed(1), size=(4, 5), given=x, mask=mask)
    assert torch.equal(images[~mask], x[~mask])
    assert torch.allclose(probs[mask], torch.sigmoid(model.logits(images))[mask], atol=1e-9)


@pytest.mark.parametrize("variant", VARIANTS)
def test_binary_samples_and_completions_are_the_drawn_path(variant: str) -> None:
    model = tiny(variant)
    drawn = model.sample_binary(5, torch.Generator().manual_seed(3))
    images, probs = model.generate(5, torch.Generator().manual_seed(3))
    assert torch.equal(drawn, images) and ((drawn == 0) | (drawn == 1)).all()
    assert torch.equal(model.sample(5, torch.Generator().manual_seed(3)), probs)
    # one path: the probabilities complete() returns are the conditionals of the pixels
    # complete() drew
    x = torch.bernoulli(torch.full((5, 1, 28, 28), 0.5, dtype=torch.float64))
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[:, :, 20:] = True
    b, p, _ = model.complete(x, mask, 1, torch.Generator().manual_seed(4))
    assert torch.equal(b[~mask], x[~mask]) and ((b == 0) | (b == 1)).all()
    assert torch.allclose(p[mask], torch.sigmoid(model.logits(b))[mask], atol=1e-9)


def kernel_and_op_loop(model: PixelRNN, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """(logits, every parameter's gradient of their sum) on ``x``, from the C++ layers, then the op loops."""
    results = []
    for flag in ("1", "0"):
        monkeypatch.setenv("RNNGEN_KERNELS", flag)
        logits = model.logits(x)
        results.append((logits, torch.autograd.grad(logits.sum(), list(model.parameters()))))
    return results


def assert_kernel_equals_op_loop(model: PixelRNN, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch,
                                 case: object) -> None:
    """The C++ layers and the op loops agree in fp64 on ``x``: values and every parameter's gradient."""
    (a, ga), (b, gb) = kernel_and_op_loop(model, x, monkeypatch)
    assert torch.allclose(a, b, atol=1e-12), case
    for (name, _), u, v in zip(model.named_parameters(), ga, gb, strict=True):
        assert torch.allclose(u, v, atol=1e-10), (case, name)


def test_the_cpp_loop_equals_the_op_loop_on_odd_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernel widths 1, 3 and 5 (taps beyond both ends of a 4-pixel row), one image, one row."""
    for kernel, size in ((1, (3, 4)), (3, (1, 4)), (5, (4, 4))):
        torch.manual_seed(kernel)
        section = {"variant": "row_lstm", "layers": 2, "hidden": 3, "kernel": kernel, "out_hidden": 4}
        model = build_model("pixelrnn", model_config("pixelrnn", section)).double()
        x = torch.bernoulli(torch.full((1, 1, *size), 0.5, dtype=torch.float64))
        assert_kernel_equals_op_loop(model, x, monkeypatch, kernel)


def test_the_diagonal_kernel_equals_the_op_loop_on_odd_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tall, wide, one row, one column, one pixel (diagonals of every length, both edges), one
    image and several."""
    for size, batch in (((1, 1), 1), ((1, 5), 2), ((5, 1), 1), ((6, 3), 3), ((3, 7), 2)):
        model = tiny("diagonal_bilstm", hidden=3, seed=sum(size))
        x = torch.bernoulli(torch.full((batch, 1, *size), 0.5, dtype=torch.float64))
        assert_kernel_equals_op_loop(model, x, monkeypatch, size)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_kernels_equal_the_op_loops_in_float32(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """In fp32 the kernels' cells take their exponentials from an inline polynomial (cell_math.h,
    ``exp_``) rather than libm's: logits and every gradient still agree with the op loops to fp32
    rounding."""
    torch.manual_seed(3)
    model = build_model("pixelrnn", model_config("pixelrnn", {"variant": variant, "layers": 2, "hidden": 8}))
    with torch.no_grad():  # gates driven well into both tails of the sigmoid
        for p in model.parameters():
            p.normal_(0, 1.0)
    x = torch.bernoulli(torch.full((3, 1, 9, 11), 0.4))
    (a, ga), (b, gb) = kernel_and_op_loop(model, x, monkeypatch)
    assert (a - b).abs().max() < 1e-4 * b.abs().max()
    for (name, _), u, v in zip(model.named_parameters(), ga, gb, strict=True):
        assert (u - v).abs().max() < 1e-4 * v.abs().max() + 1e-6, name


def test_kernels_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RNNGEN_KERNELS", "0")
    assert kernels.ops("row_lstm", torch.zeros(1)) is None and kernels.ops("diagonal_bilstm", torch.zeros(1)) is None


def test_sampling_pictures_and_the_paper_preset() -> None:
    model = tiny("diagonal_bilstm").float()
    steps = model.sample_steps(2, torch.Generator().manual_seed(0))
    assert steps.shape == (28, 2, 1, 28, 28)
    assert (steps[0, :, :, 1:] == 0.5).all() and (steps[-1] != 0.5).any()
    paper = model_config("pixelrnn", {"preset": "paper"})
    assert (paper.variant, paper.layers, paper.hidden) == ("diagonal_bilstm", 7, 16)
    assert model_config("pixelrnn", {"preset": "paper", "layers": 3}).layers == 3  # a given key wins
    with pytest.raises(ConfigError, match="kernel: must be odd"):
        model_config("pixelrnn", {"kernel": 2})
    with pytest.raises(ConfigError, match="unknown preset"):
        model_config("pixelrnn", {"preset": "huge"})


def test_dropout_acts_in_training_only() -> None:
    torch.manual_seed(0)
    section = {"layers": 2, "hidden": 4, "out_hidden": 8}
    plain = build_model("pixelrnn", model_config("pixelrnn", section))
    dropped = build_model("pixelrnn", model_config("pixelrnn", {**section, "dropout": 0.5}))
    dropped.load_state_dict(plain.state_dict())
    x = torch.bernoulli(torch.full((3, 1, 6, 6), 0.5))
    plain.eval(), dropped.eval()
    assert torch.equal(dropped.logits(x), plain.logits(x))  # evaluation and sampling: no dropout
    dropped.train()
    torch.manual_seed(1)
    a = dropped.logits(x)
    torch.manual_seed(2)
    assert not torch.allclose(a, dropped.logits(x)) and not torch.allclose(a, plain.logits(x))
    for bad in (-0.1, 1.0):
        with pytest.raises(ConfigError, match=r"dropout: must be in \[0, 1\)"):
            model_config("pixelrnn", {"dropout": bad})


@pytest.mark.parametrize("variant", VARIANTS)
def test_particle_completion_draws_from_the_posterior(variant: str) -> None:
    """Hidden pixels with observed ones after them: the particle filter's completions follow
    p(hidden | observed), enumerated by brute force on a 2x3 image, where ancestral sampling
    (one particle: p(hidden | the pixels before them)) does not."""
    model, every = tiny(variant), all_images(2, 3)
    mask = torch.tensor([0, 1, 1, 0, 0, 0], dtype=torch.bool)  # the first row's end; the second row observed
    logits = model.logits(every).reshape(64, 6)
    log_cond = torch.where(every.view(64, 6) > 0.5, F.logsigmoid(logits), F.logsigmoid(-logits))
    log_p = log_cond.sum(1)

    def exact(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(posterior, ancestral proposal) over the 64 images, for observed pixels as in x."""
        impossible = torch.tensor(-torch.inf, dtype=torch.float64)
        consistent = (every.view(64, 6)[:, ~mask] == x[~mask]).all(1)
        posterior = torch.where(consistent, log_p, impossible).softmax(0)
        return posterior, torch.where(consistent, (log_cond * mask).sum(1), impossible).exp()

    def tv(p: torch.Tensor, q: torch.Tensor) -> float:
        return 0.5 * (p - q).abs().sum().item()

    x = max(every.view(64, 6), key=lambda x: tv(*exact(x)))  # where the two differ most
    posterior, ancestral = exact(x)
    assert tv(posterior, ancestral) > 0.1  # the test can tell them apart
    n, weights = 10_000, 2 ** torch.arange(5, -1, -1, dtype=torch.float64)
    for particles, expected in ((1, ancestral), (32, posterior)):
        drawn, _, _ = model.complete(x.view(1, 1, 2, 3).expand(n, 1, 2, 3), mask.view(1, 1, 2, 3).expand(n, 1, 2, 3),
                                  particles, torch.Generator().manual_seed(0))
        freq = torch.bincount((drawn.view(n, 6) * weights).sum(1).long(), minlength=64).double() / n
        assert tv(freq, expected) < 0.04, (particles, tv(freq, expected), tv(posterior, ancestral))
