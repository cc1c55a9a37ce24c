"""DRAW: the filterbank against the paper's formulas, the fast recurrence (hand-written
backward) against a plain autograd implementation of eqs. (3)-(8), the loss terms, sampling,
and the config."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from rnngen.config import ConfigError
from rnngen.models import MODELS, build_model, kernels, lstm, model_config
from rnngen.models import draw as draw_module
from rnngen.models.draw import DRAW, DRAWConfig, centre_offsets, filterbank, read_glimpse, write_patch
from rnngen.models.fast import draw_bptt_backward
from rnngen.models.reference import draw as draw_reference

SMALL = {"steps": 3, "read_n": 2, "write_n": 3, "enc_hidden": 12, "dec_hidden": 10, "z_dim": 4}


def small_model(seed: int = 0, **overrides) -> DRAW:
    torch.manual_seed(seed)
    return build_model("draw", model_config("draw", {**SMALL, **overrides}))


def binary_images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 28, 28, generator=g) < 0.3).float()


# -- filterbank (eqs. 19-29) against per-pixel loops -------------------------------------------


def direct_filters(p: list[float], n: int, size: int) -> tuple[list[list[float]], list[list[float]], float]:
    """F_X, F_Y (N x size) and gamma straight from eqs. (19)-(26), 1-indexed i and a."""
    gx_t, gy_t, log_var, log_delta, log_gamma = p
    gx, gy = (size + 1) / 2 * (gx_t + 1), (size + 1) / 2 * (gy_t + 1)
    delta = (size - 1) / (n - 1) * math.exp(log_delta) if n > 1 else 0.0
    var = math.exp(log_var)

    def bank(g: float) -> list[list[float]]:
        rows = []
        for i in range(1, n + 1):
            mu = g + (i - n / 2 - 0.5) * delta
            row = [math.exp(-((a - mu) ** 2) / (2 * var)) for a in range(1, size + 1)]
            rows.append([v / sum(row) for v in row])
        return rows

    return bank(gx), bank(gy), math.exp(log_gamma)


def test_filterbank_read_write_match_direct_loops():
    size, n, batch = 7, 3, 2
    g = torch.Generator().manual_seed(1)
    params = torch.randn(batch, 5, generator=g, dtype=torch.float64) * 0.5
    images = torch.rand(batch, 1, size, size, generator=g, dtype=torch.float64)
    patch = torch.randn(batch, n, n, generator=g, dtype=torch.float64)
    F, gamma = filterbank(params, centre_offsets(n, size).double(), size)
    glimpse = read_glimpse(images, F, gamma)
    written = write_patch(patch, F, gamma)
    for b in range(batch):
        fx, fy, gam = direct_filters(params[b].tolist(), n, size)
        assert torch.allclose(F[b, 0], torch.tensor(fx, dtype=torch.float64))
        assert torch.allclose(F[b, 1], torch.tensor(fy, dtype=torch.float64))
        for i in range(n):  # eq. (27): gamma sum_y sum_x F_Y[i, y] x[y, x] F_X[j, x]
            for j in range(n):
                want = gam * sum(fy[i][y] * images[b, 0, y, x].item() * fx[j][x]
                                 for y in range(size) for x in range(size))
                assert glimpse[b, 0, i, j].item() == pytest.approx(want, rel=1e-10)
        for y in range(size):  # eq. (29): (1 / gamma) sum_i sum_j F_Y[i, y] w[i, j] F_X[j, x]
            for x in range(size):
                want = sum(fy[i][y] * patch[b, i, j].item() * fx[j][x] for i in range(n) for j in range(n)) / gam
                assert written[b, y, x].item() == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_centres_are_one_indexed_and_symmetric():
    # g = 14, delta = 3, N = 3 -> centres 11, 14, 17 (a 0-indexed i would give 8, 11, 14)
    g_tilde = 14 / 14.5 - 1
    log_delta = math.log(3 / (27 / 2))
    params = torch.tensor([[g_tilde, g_tilde, math.log(0.01), log_delta, 0.0]], dtype=torch.float64)
    F, _ = filterbank(params, centre_offsets(3, 28).double(), 28)
    pixels = torch.arange(1, 29, dtype=torch.float64)
    centres = (F[0] * pixels).sum(-1)  # (2, N): the mean pixel coordinate of each filter
    assert torch.allclose(centres, torch.tensor([[11.0, 14.0, 17.0]] * 2, dtype=torch.float64))
    assert centre_offsets(2, 28).tolist() == pytest.approx([-13.5, 13.5])
    assert centre_offsets(1, 28).tolist() == [0.0]  # N = 1: one centre at g, no 0 / 0


def test_variance_is_exp_log_var_not_squared_again():
    var = 4.0
    params = torch.tensor([[0.0, 0.0, math.log(var), 0.0, 0.0]], dtype=torch.float64)
    F, _ = filterbank(params, centre_offsets(1, 28).double(), 28)
    a = torch.arange(1, 29, dtype=torch.float64)
    gauss = torch.exp(-((a - 14.5) ** 2) / (2 * var))
    assert torch.allclose(F[0, 0, 0], gauss / gauss.sum())
    wrong = torch.exp(-((a - 14.5) ** 2) / (2 * var**2))
    assert not torch.allclose(F[0, 0, 0], wrong / wrong.sum(), atol=1e-3)


@pytest.mark.parametrize(("read_n", "write_n"), [(2, 5), (5, 5), (1, 3)])
def test_initial_windows_see_the_middle_and_write_at_unit_gain(read_n, write_n):
    # the zero-bias trap: 2x2 read filters on the blank corners with sigma 1 px (collapse)
    model = small_model(read_n=read_n, write_n=write_n)
    F, gamma = filterbank(model.att.bias.detach().view(2, 5), model.offsets, 28)
    a = torch.arange(1, 29, dtype=F.dtype)
    centres = (F * a).sum(-1)  # (window, axis, N); unused slots past N are ignored below
    for window, n in ((0, read_n), (1, write_n)):
        c = centres[window, :, :n]
        assert torch.allclose(c.mean(-1), torch.full((2,), 14.5), atol=1e-4)  # centred
        assert (c - 14.5).abs().max() <= draw_module.INIT_SPAN / 2 + 1e-4  # inside the middle 12 px
        # sigma from the second difference of log F, which neither normalisation nor the border changes
        curvature = F[window, :, :n, 10:19].log().diff(n=2, dim=-1)
        stride = draw_module.INIT_SPAN / max(n - 1, 1)
        assert torch.allclose(curvature, torch.full_like(curvature, -1 / (stride / 2) ** 2), rtol=1e-3)
    assert gamma[0] == pytest.approx(1.0)
    # one patch entry of 1 moves the logit under its centre by about 1, not by 1 / (2 pi sigma^2)
    patch = torch.zeros(1, write_n, write_n)
    patch[0, write_n // 2, write_n // 2] = 1.0
    canvas = write_patch(patch, F[1:, :, :write_n], gamma[1:])
    assert canvas.max().item() == pytest.approx(1.0, rel=0.15)  # 0.89 when the centre falls between pixels


def test_filterbank_far_outside_the_image_stays_finite():
    params = torch.tensor([[40.0, -40.0, -6.0, 0.0, 0.0]])
    F, _ = filterbank(params, centre_offsets(5, 28), 28)
    assert torch.isfinite(F).all() and torch.allclose(F.sum(-1), torch.ones(1, 2, 5))


# -- the fast recurrence against the readable one (the paper's equations under autograd) ---------------


def randomised(model: DRAW) -> DRAW:
    """Non-zero learned initial states, so their gradients are exercised too."""
    with torch.no_grad():
        for p in (model.canvas0, model.h_enc0, model.h_dec0):
            p.normal_(0, 0.3)
    return model.double()


def check_against_reference(model: DRAW) -> None:
    """Forward values and the gradients of every parameter (and of x, when it asks for one),
    fast path vs the readable recurrence."""
    eps = torch.randn(model.config.steps, 4, model.config.z_dim, dtype=torch.float64)
    for x_grad in (True, False):
        x = binary_images(4).double().requires_grad_(x_grad)
        outs = model._recurrence(x, eps)
        refs = model.unroll(x, eps)
        for out, ref in zip(outs, refs, strict=True):
            assert torch.allclose(out, ref, atol=1e-10)
        # any scalar of all three outputs
        weights = [torch.randn_like(r) for r in refs]
        named = ([("x", x)] if x_grad else []) + list(model.named_parameters())
        names, params = [n for n, _ in named], [p for _, p in named]
        fast = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outs, weights, strict=True)), params)
        slow = torch.autograd.grad(sum((r * w).sum() for r, w in zip(refs, weights, strict=True)), params,
                                   allow_unused=True)
        for name, f, s in zip(names, fast, slow, strict=True):
            s = torch.zeros_like(f) if s is None else s
            assert torch.allclose(f, s, atol=1e-9), name


@pytest.fixture(params=["cpp", "ops"])
def cells(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with the fused C++ LSTM cell (which must really build) and with its
    PyTorch-op version."""
    monkeypatch.setenv("RNNGEN_KERNELS", "1" if request.param == "cpp" else "0")
    if request.param == "cpp":
        assert kernels.ops("lstm_cell", torch.zeros(1)) is not None, "the C++ LSTM cell did not build (g++, ninja?)"
    return request.param


@pytest.mark.parametrize("overrides", [{}, {"attention": False}, {"read_n": 1, "write_n": 1}])
def test_recurrence_matches_reference_forward_and_gradients(overrides, cells):
    check_against_reference(randomised(small_model(**overrides)))


def test_fused_lstm_cell_equals_torchs_cell_and_its_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    """The C++ cell against torch.lstm_cell (float64, autograd): h, c, the gradients of the
    pre-activations and of c_prev, on gate rows strided as DRAW's GEMM outputs are; and h
    rounded to bfloat16 is the float h rounded."""
    assert kernels.ops("lstm_cell", torch.zeros(1)) is not None, "the C++ LSTM cell did not build (g++, ninja?)"
    torch.manual_seed(0)
    bsz, hid = 5, 7
    wide = torch.randn(bsz, 4 * hid + 3, dtype=torch.float64) * 3  # big enough to saturate some gates
    pre = wide[:, : 4 * hid]  # row stride 4 H + 3
    c_prev = torch.randn(bsz, hid, dtype=torch.float64)
    dh, dc = torch.randn(bsz, hid, dtype=torch.float64), torch.randn(bsz, hid, dtype=torch.float64)
    # torch.lstm_cell with identity input weights and no recurrent term computes the cell of `pre`
    u, cp = pre.clone().requires_grad_(), c_prev.clone().requires_grad_()
    eye, zero = torch.eye(4 * hid, dtype=torch.float64), torch.zeros(4 * hid, hid, dtype=torch.float64)
    h_ref, c_ref = torch.lstm_cell(u, (torch.zeros(bsz, hid, dtype=torch.float64), cp), eye, zero)
    du_ref, dcp_ref = torch.autograd.grad((h_ref * dh).sum() + (c_ref * dc).sum(), (u, cp))

    h, c, saved = lstm.cell(pre, c_prev)
    assert saved[1] is None, "the fused cell did not run"
    grads = torch.zeros(bsz, 4 * hid + 2, dtype=torch.float64)
    d_pre = grads[:, 1 : 4 * hid + 1]  # a strided output view
    dcp = lstm.cell_backward(dh, dc, saved, out=d_pre)
    assert torch.allclose(h, h_ref, atol=1e-14) and torch.allclose(c, c_ref, atol=1e-14)
    assert torch.allclose(d_pre, du_ref, atol=1e-13) and torch.allclose(dcp, dcp_ref, atol=1e-13)
    assert (grads[:, 0] == 0).all() and (grads[:, -1] == 0).all()

    pre32 = torch.randn(bsz, 4 * hid) * 3
    c32 = torch.randn(bsz, hid)
    h32, _, _ = lstm.cell(pre32.clone(), c32)
    h16, _, _ = lstm.cell(pre32.clone(), c32, torch.bfloat16)
    assert h16.dtype == torch.bfloat16 and torch.equal(h16, h32.to(torch.bfloat16))


def test_gradients_with_one_step_per_chunk(monkeypatch):
    # the weight gradients are summed chunk by chunk; force several chunks
    monkeypatch.setattr(draw_bptt_backward, "_CHUNK_BYTES", 1)
    check_against_reference(randomised(small_model(steps=4)))


# -- bfloat16 GEMMs under autocast --------------------------------------------------------------

#: measured (steps 8, 64-unit LSTMs, z 16, batch 8, seed 0): max |bf16 - fp32 reference| is
#: 3.1e-3 / 3.6e-3 for the canvas logits (attention / none), 3e-4 / 3e-3 for mu and log sigma;
#: the fast fp32 path is within 5e-7 of it. Gradient cosines >= 0.99998 (relative error ~3e-3;
#: the paper setting, batch 16: logits 1e-2 at |logits| <= 6.6, cosines >= 0.99999).
BF16_ATOL = {"canvas": 2e-2, "mu": 1e-2, "logsig": 1e-2}
FP32_ROUNDOFF = 1e-5


def mid_model(attention: bool) -> DRAW:
    torch.manual_seed(0)
    model = build_model("draw", model_config("draw", {"steps": 8, "enc_hidden": 64, "dec_hidden": 64, "z_dim": 16,
                                                       "attention": attention}))
    with torch.no_grad():
        for p in (model.canvas0, model.h_enc0, model.h_dec0):
            p.normal_(0, 0.3)
    return model


class GemmDtypes(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the matrix products run, by (op, dtype of the first operand)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[tuple[str, torch.dtype], int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in ("mm", "addmm", "bmm", "baddbmm"):
            a = args[1] if name in ("addmm", "baddbmm") else args[0]
            self.counts[name, a.dtype] = self.counts.get((name, a.dtype), 0) + 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("attention", [True, False])
def test_bf16_autocast_recurrence_is_close_to_the_fp32_reference(attention):
    model = mid_model(attention)
    x, eps = binary_images(8), torch.randn(8, 8, 16)
    params = [p for _, p in model.named_parameters()]

    def grads(outs: tuple) -> tuple:
        return torch.autograd.grad(draw_module.loss_terms(x, *outs).nelbo.sum(), params)

    ref = model.unroll(x, eps)  # fp32, autocast off
    fp32 = model._recurrence(x, eps)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model._recurrence(x, eps)
    for name, r, f, b in zip(BF16_ATOL, ref, fp32, bf16, strict=True):
        assert b.dtype == torch.float32, name
        assert (f - r).abs().max() < FP32_ROUNDOFF, name
        diff = (b - r).abs().max().item()
        # more than fp32 round-off: the GEMMs really took bfloat16 operands; within what bf16 costs
        assert FP32_ROUNDOFF < diff < BF16_ATOL[name], (name, diff)
    for (name, p), r, b in zip(model.named_parameters(), grads(ref), grads(bf16), strict=True):
        assert b.dtype == p.dtype == torch.float32, name
        cos = torch.nn.functional.cosine_similarity(r.flatten(), b.flatten(), 0)
        assert cos > 0.99, (name, cos.item())
        assert 1e-5 < (r - b).norm() / r.norm() < 0.05, name  # bf16 and not fp32, but not far off


@pytest.mark.parametrize("attention", [True, False])
def test_bf16_autocast_runs_the_big_gemms_in_bf16_and_attention_in_fp32(attention):
    model = mid_model(attention)
    x = binary_images(8)
    for amp in (False, True):
        torch.manual_seed(0)
        with GemmDtypes() as seen, torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            model(x).nelbo.sum().backward()
        counts = seen.counts
        bf16 = sum(n for (_, dtype), n in counts.items() if dtype == torch.bfloat16)
        fp32 = sum(n for (op, dtype), n in counts.items() if dtype == torch.float32 and op in ("mm", "addmm"))
        if not amp:
            assert bf16 == 0 and fp32 > 0
            continue
        # per step, forward: r_t (or x_hat), h_enc_t, z_t, h_dec_t; backward: d h_dec, d z, d h_enc, d r
        assert bf16 >= 8 * model.config.steps, counts
        assert counts.get(("bmm", torch.bfloat16), 0) == counts.get(("baddbmm", torch.bfloat16), 0) == 0
        assert (counts.get(("bmm", torch.float32), 0) > 0) == attention  # the attention windows stay fp32
        # fp32 products left: the GEMVs of the learned initial states and, without attention, the
        # gradient of read(x) = x, the same every step
        assert fp32 == (2 if attention else 3), counts
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())


# -- loss terms and the model interface --------------------------------------------------------


def test_kl_is_half_per_latent_dimension_and_step():
    model = small_model()
    x = binary_images(5)
    torch.manual_seed(3)
    terms = model(x)
    torch.manual_seed(3)  # forward's only random draw is eps, (T, B, z)
    eps = torch.randn(model.config.steps, 5, model.config.z_dim)
    with torch.no_grad():
        _, mu, logsig = model._recurrence(x, eps)
    want = kl_divergence(Normal(mu, logsig.exp()), Normal(0.0, 1.0)).sum((0, 2))
    assert torch.allclose(terms.kl, want, atol=1e-5)
    canvas = model.unroll(x, eps)[0]
    recon = torch.nn.functional.binary_cross_entropy_with_logits(canvas, x.flatten(1), reduction="none").sum(1)
    assert torch.allclose(terms.recon, recon, atol=1e-3)


def test_reference_forward_gives_the_models_loss_terms():
    # the plain baseline bench/throughput.py times: the same noise draw and loss as model(x)
    model = randomised(small_model()).float()
    x = binary_images(5)
    torch.manual_seed(4)
    fast = model(x)
    torch.manual_seed(4)
    plain = draw_reference.forward(model, x)
    assert torch.allclose(fast.recon, plain.recon, atol=1e-4) and torch.allclose(fast.kl, plain.kl, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = draw_reference.forward(model, x)
    assert low.recon.dtype == low.kl.dtype == torch.float32
    assert torch.allclose(low.nelbo, fast.nelbo, rtol=2e-2)


@pytest.mark.parametrize("attention", [True, False])
def test_interface_shapes(attention):
    model = small_model(attention=attention)
    x = binary_images(5)
    g = torch.Generator().manual_seed(0)
    before = set(vars(model))
    terms = model(x)
    assert terms.recon.shape == terms.kl.shape == (5,)
    assert torch.isfinite(terms.nelbo).all()
    assert set(vars(model)) == before  # forward leaves no state behind
    assert model.log_weights(x, 3, g).shape == (3, 5)
    samples = model.sample(6, g)
    assert samples.shape == (6, 1, 28, 28) and ((samples >= 0) & (samples <= 1)).all()
    assert model.sample_steps(2, g).shape == (3, 2, 1, 28, 28)
    assert model.reconstruct(x, g).shape == (5, 1, 28, 28)


def test_log_weights_match_the_reference_importance_weights():
    model = small_model()
    x = binary_images(3)
    lw = model.log_weights(x, 4, torch.Generator().manual_seed(5))
    eps = torch.randn(3, 12, 4, generator=torch.Generator().manual_seed(5))  # (T, k B, z)
    with torch.no_grad():
        canvas, mu, logsig = model.unroll(x.repeat(4, 1, 1, 1), eps)
    z = mu + logsig.exp() * eps
    log_px = -torch.nn.functional.binary_cross_entropy_with_logits(
        canvas, x.repeat(4, 1, 1, 1).flatten(1), reduction="none").sum(1)
    want = log_px + (Normal(0.0, 1.0).log_prob(z) - Normal(mu, logsig.exp()).log_prob(z)).sum((0, 2))
    assert torch.allclose(lw, want.view(4, 3), atol=1e-3)


def test_sampling_draws_fresh_noise_at_every_step():
    model = small_model()
    a = model.sample(4, torch.Generator().manual_seed(1))
    assert torch.equal(a, model.sample(4, torch.Generator().manual_seed(1)))
    assert not torch.allclose(a, model.sample(4, torch.Generator().manual_seed(2)))
    # T x z numbers per image: one fresh z_t per step, not one z reused
    g = torch.Generator().manual_seed(7)
    model.sample(4, g)
    after = torch.Generator().manual_seed(7)
    torch.randn(3, 4, 4, generator=after)
    assert torch.equal(g.get_state(), after.get_state())
    eps = torch.randn(3, 4, 4)
    late = eps.clone()
    late[-1] += 1  # changing only z_T changes the image
    with torch.no_grad():
        assert not torch.allclose(model._generate(eps, False), model._generate(late, False))
    steps = model.sample_steps(4, torch.Generator().manual_seed(1))
    assert torch.allclose(steps[-1], a)  # the last canvas is the sample


# -- config -------------------------------------------------------------------------------------


def test_registered_with_hidden_fields():
    assert MODELS["draw"] is DRAW
    assert DRAW.hidden_fields == ("enc_hidden", "dec_hidden")


def test_paper_preset_and_round_trip():
    cfg = model_config("draw", {"preset": "paper"})
    assert (cfg.steps, cfg.enc_hidden, cfg.dec_hidden, cfg.z_dim, cfg.read_n, cfg.write_n, cfg.attention) == (
        64, 256, 256, 100, 2, 5, True)
    tuned = model_config("draw", {"preset": "paper", "enc_hidden": 64, "dec_hidden": 64})
    assert (tuned.steps, tuned.enc_hidden, tuned.dec_hidden) == (64, 64, 64)
    for c in (cfg, tuned, model_config("draw", {}), model_config("draw", {"attention": False})):
        assert model_config("draw", dataclasses.asdict(c)) == c
    assert model_config("draw", {}) == DRAWConfig()


def test_params_yaml_lists_every_draw_knob_and_null_means_preset_or_default():
    import yaml

    params = Path(__file__).resolve().parents[1] / "params.yaml"
    section = yaml.safe_load(params.read_text())["model"]["draw"]
    assert set(section) == {f.name for f in dataclasses.fields(DRAWConfig)}
    assert model_config("draw", section) == DRAWConfig()
    paper = model_config("draw", {**section, "preset": "paper"})
    assert (paper.steps, paper.read_n, paper.write_n, paper.z_dim) == (64, 2, 5, 100)
    assert model_config("draw", {**section, "preset": "paper", "steps": 8}).steps == 8


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"read_n": 29}, "attention window larger than the image"),
        ({"write_n": 30}, "attention window larger than the image"),
        ({"steps": 0}, "model.draw.steps: must be >= 1"),
        ({"z_dim": 0}, "model.draw.z_dim: must be >= 1"),
        ({"preset": "nope"}, "unknown preset 'nope'"),
        ({"canvas_init": "median"}, "model.draw.canvas_init: expected zero or mean"),
    ],
)
def test_bad_configs_raise(section, message):
    with pytest.raises(ConfigError, match=message):
        model_config("draw", section)


def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    probs = torch.where(torch.rand(1, 1, 28, 28) < 0.5, 0.1, 0.9)
    data = (torch.rand(16, 1, 28, 28) < probs).float()  # random binary images with structure
    model = small_model()
    opt = torch.optim.Adam(model.parameters(), lr=5e-2)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = model(data).nelbo.mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0]



def test_canvas_init_mean_starts_at_the_training_means_logits_and_only_on_a_fresh_start(tmp_path: Path):
    """fit hands the model the training mean once; with canvas_init mean, sigmoid(c_0) is it
    (clamped away from 0 and 1), so an empty canvas already draws the mean image. A resumed
    training keeps its learned c_0."""
    from rnngen.train import TrainConfig, fit

    x = (torch.rand(64, 28, 28) * 255).to(torch.uint8)
    x[:, :3] = 0  # blank rows: their logit is clamped, not -inf
    mean = x.double().mean(0) / 255
    cfg = TrainConfig(epochs=2, batch_size=64, lr=1e-12, device="cpu")  # the steps barely move c_0
    zero, init = small_model(canvas_init="zero"), small_model()  # mean is the default
    fit(zero, x, x[:16], cfg, "dynamic", progress=False)
    fit(init, x, x[:16], cfg, "dynamic", progress=False, checkpoint=tmp_path / "c.pt", until_epoch=1)
    assert torch.allclose(zero.canvas0, torch.zeros(784), atol=1e-6)
    expected = torch.logit(mean.flatten().clamp(1e-3, 1 - 1e-3)).float()
    assert torch.allclose(init.canvas0, expected, atol=1e-4)
    assert torch.isfinite(init.canvas0).all() and init.canvas0[:84].max() < -6  # the blank rows
    other = 255 - x  # another mean: a resumed training must not take its c_0 from it
    resumed = small_model(canvas_init="mean")
    result = fit(resumed, other, x[:16], cfg, "dynamic", progress=False, checkpoint=tmp_path / "c.pt")
    assert result.resumed_from == 1
    assert torch.allclose(resumed.canvas0, expected, atol=1e-4)
