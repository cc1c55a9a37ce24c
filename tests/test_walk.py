"""Latent walks: spherical interpolation against its geometric definition, walks through every
latent model, the picture the evaluate stage makes, and `rnngen interpolate`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from rnngen import checkpoint, walk
from rnngen.models import MODELS, build_model, model_config
from rnngen.models.base import LabelError
from rnngen.models.latent import LatentModel
from test_cli import env, run_main, save_png, store  # noqa: F401  (fixtures)
from test_models import TINY, binary_batch, tiny


def rotate_in_plane(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """The great circle by construction: turn a's direction by t x angle(a, b) towards b in the
    plane they span (Gram-Schmidt), with the norm moving linearly from |a| to |b|."""
    ua, ub = a / a.norm(), b / b.norm()
    omega = math.acos(float((ua @ ub).clamp(-1, 1)))
    v = ub - (ua @ ub) * ua
    v = v / v.norm()
    return (math.cos(t * omega) * ua + math.sin(t * omega) * v) * ((1 - t) * a.norm() + t * b.norm())


def test_slerp_follows_the_great_circle() -> None:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 16, generator=gen, dtype=torch.float64), torch.randn(3, 16, generator=gen,
                                                                                  dtype=torch.float64)
    t = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    path = walk.slerp(a, b, t)
    assert path.shape == (5, 3, 16)
    torch.testing.assert_close(path[0], a)
    torch.testing.assert_close(path[-1], b)
    for i, ti in enumerate(t.tolist()):
        for row in range(3):
            torch.testing.assert_close(path[i, row], rotate_in_plane(a[row], b[row], ti))
    # equal norms: the norm stays put, where the straight line's dips by cos(omega / 2) midway
    unit_a, unit_b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    torch.testing.assert_close(walk.slerp(unit_a, unit_b, t).norm(dim=2), torch.ones(5, 3, dtype=torch.float64))
    # parallel rows (no plane to turn in) and a zero row: the straight line, no NaN
    same = walk.slerp(a, 2 * a, t)
    torch.testing.assert_close(same, (1 + t).view(-1, 1, 1) * a)
    assert torch.isfinite(walk.slerp(torch.zeros(3, 16, dtype=torch.float64), b, t)).all()


@pytest.mark.parametrize("name", [n for n, cls in MODELS.items() if issubclass(cls, LatentModel)])
def test_a_walk_starts_and_ends_at_the_models_own_decoding_of_the_latent_means(name: str) -> None:
    torch.manual_seed(0)
    model = tiny(name).eval()
    a, b = binary_batch(2, seed=1), binary_batch(2, seed=2)
    frames = walk.walk(model, a, b, 5)
    assert frames.shape == (5, 2, 1, 28, 28) and ((frames >= 0) & (frames <= 1)).all()
    encoder = type(model).latent_pass is not LatentModel.latent_pass  # a GAN has none: it searches z
    with torch.no_grad():
        for end, x in ((frames[0], a), (frames[-1], b)):
            z = model.latent_mean(x)
            # latent_pass decodes given latents through the encoder pass (for DRAW, unroll), a
            # code path apart from decode_latent's
            own = torch.sigmoid(model.latent_pass(x, z=z).logits) if encoder else model.reconstruct(x)
            torch.testing.assert_close(end, own, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(frames[2], frames[0])  # it moves


@pytest.mark.parametrize("name", [n for n, cls in MODELS.items() if issubclass(cls, LatentModel)])
def test_a_conditional_walk_holds_its_class_from_end_to_end(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, model_config(name, {**TINY[name], "conditional": True, "classes": 3})).eval()
    with torch.no_grad():  # the class terms start at zero in some models: give the label some say
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    a, b, held = binary_batch(2, seed=1), binary_batch(2, seed=2), torch.tensor([2, 0])
    frames = walk.walk(model, a, b, 4, held)
    for end, x in ((frames[0], a), (frames[-1], b)):  # both ends encoded and decoded with the held class
        torch.testing.assert_close(end, model.decode_latent(model.latent_mean(x, held), held), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(frames, walk.walk(model, a, b, 4, torch.tensor([1, 1])))  # the class matters
    with pytest.raises(LabelError, match="is conditional"):
        walk.walk(model, a, b, 4)


def test_a_model_without_a_latent_is_refused_naming_those_with_one() -> None:
    able = [n for n, cls in MODELS.items() if issubclass(cls, LatentModel)]
    assert sorted(able) == sorted(n for n in TINY if n != "pixelrnn")
    with pytest.raises(walk.NoLatentError, match="pixelrnn has no latent variable") as err:
        walk.walk(tiny("pixelrnn"), binary_batch(1), binary_batch(1), 3)
    assert all(n in str(err.value) for n in able)


def test_interpolate_writes_a_strip_and_a_gif(env: dict[str, Any], tmp_path: Path,  # noqa: F811
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out, gif = tmp_path / "walk.png", tmp_path / "walk.gif"
    code, stdout, err = run_main(["interpolate", "--test-index", "0", "1", "--split", str(env["split"]),
                                  "--steps", "6", "--out", str(out), "--gif", str(gif)], capsys)
    assert code == 0, err
    assert "6 steps from test images [0] of" in stdout
    with Image.open(out) as im:
        assert im.size == (6 * 30 + 2, 30 + 2)  # one row of 6 tiles, torchvision's padding
    with Image.open(gif) as im:  # there and back: 6 + 4 frames of 120 ms (PIL merges repeated ones)
        durations = []
        for i in range(im.n_frames):
            im.seek(i)
            durations.append(im.info["duration"])
        assert im.n_frames > 1 and sum(durations) == (6 + 4) * 120
    pngs = [str(save_png(tmp_path / f"{i}.png", np.load(env["split"] / "test_x.npy")[i])) for i in range(4)]
    code, _, err = run_main(["interpolate", "--a", *pngs[:2], "--b", *pngs[2:], "--steps", "3",
                             "--out", str(out)], capsys)
    assert code == 0, err
    with Image.open(out) as im:
        assert im.size == (3 * 30 + 2, 2 * 30 + 2)  # a row per pair


def test_interpolate_refuses_bad_input_and_writes_nothing(env: dict[str, Any], tmp_path: Path,  # noqa: F811
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    pixelrnn = tmp_path / "pixelrnn.pt"
    checkpoint.save_model(pixelrnn, tiny("pixelrnn"))
    out = tmp_path / "out" / "walk.png"
    split = ["--split", str(env["split"])]
    for argv, message in [
        (["--model", str(pixelrnn), "--test-index", "0", "1", *split], "pixelrnn has no latent variable"),
        (["--a", str(tmp_path / "a.png")], "give each walk's end in --b"),
        (["--test-index", "0", "1", "2", *split], "takes pairs"),
        (["--test-index", "0", "1", *split, "--steps", "1"], "--steps must be at least 2"),
        (["--test-index", "0", "1", *split, "--gif", str(tmp_path / "out" / "walk.png")], "must be a .gif file"),
        (["--test-index", "0", "9999", *split], "has 1000 images"),
    ]:
        code, _, err = run_main(["interpolate", *argv, "--out", str(out)], capsys)
        assert code == 2 and message in err and "Traceback" not in err, (argv, err)
        assert not out.parent.exists()


def test_the_evaluate_stage_pictures_a_walk_of_four_pairs(trained_model: dict[str, Any]) -> None:
    from rnngen.evaluate import WALK_PAIRS, WALK_STEPS

    pictures = trained_model["dir"] / "reports" / "pictures"
    with Image.open(pictures / "interpolation.png") as im:
        assert im.size == (WALK_STEPS * 30 + 2, WALK_PAIRS * 30 + 2)
    with Image.open(pictures / "interpolation.gif") as im:
        assert im.n_frames > 1
