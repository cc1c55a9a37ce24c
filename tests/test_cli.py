"""The `rnngen` command on a tiny registered model: every command, and clear errors on bad input.

One test runs the installed console script in a subprocess (the real entry point); the rest
call ``rnngen.cli.main(argv)``, the function that script runs, to save an interpreter start
(torch + MLflow imports) per case.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from rnngen import cli, promote
from rnngen.files import read_json

KINDS = ("bottom_half", "centre_square", "random_pixels")


def grid_size(n: int, ncol: int, rows_per_group: int = 1) -> tuple[int, int]:
    """(width, height) of torchvision's grid: 28-pixel tiles, 2-pixel padding."""
    rows = rows_per_group * -(-n // ncol)
    return ncol * 30 + 2, rows * 30 + 2


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()  # a truncated file fails here
        return im.size


@pytest.fixture(scope="module")
def store(trained_model: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A copy of the trained model's store in which version 1 is the champion."""
    base = tmp_path_factory.mktemp("cli_store")
    shutil.copy(trained_model["dir"] / "mlflow.db", base / "mlflow.db")
    uri = f"sqlite:///{base / 'mlflow.db'}"
    promote.promote(promote.PromoteConfig(), base / "promotion.md", run_json=trained_model["models"] / "run.json",
                    metrics_json=trained_model["metrics"], uri=uri)
    return {"uri": uri, "models": trained_model["models"], "split": trained_model["split"],
            "run_json": trained_model["models"] / "run.json", "metrics": trained_model["metrics"]}


@pytest.fixture()
def env(store: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    monkeypatch.chdir(tmp_path)
    return store


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def console_script() -> list[str]:
    script = Path(sys.executable).parent / "rnngen"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "rnngen.cli"]


def save_png(path: Path, pixels: np.ndarray, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8), mode=mode).save(path)
    return path


def test_help_on_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0 and all(c in out for c in ("sample", "inpaint", "evaluate", "promote", "info"))
    for command in ("sample", "inpaint", "interpolate", "evaluate", "promote", "info", "serve"):
        code, out, _ = run_main([command, "--help"], capsys)
        assert code == 0
        assert "examples:" in out and f"rnngen {command}" in out.split("examples:")[1]


def test_sample_through_the_console_script(env: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    proc = subprocess.run(
        [*console_script(), "sample", "--model", "models:/rnngen@champion", "--n", "10", "--seed", "3",
         "--out", str(out)], capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert png_size(out) == grid_size(10, 4)  # ceil(sqrt(10)) = 4 per row
    assert "version 1" in proc.stdout


def test_sample_by_version_path_and_temperature(env: dict[str, Any], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    models = env["models"]
    outputs = []
    for i, model in enumerate(["models:/rnngen/1", "1", str(models), str(models / "model.pt")]):
        outputs.append(tmp_path / f"s{i}.png")
        assert run_main(["sample", "--model", model, "--n", "4", "--out", str(outputs[-1])], capsys)[0] == 0
        assert png_size(outputs[-1]) == grid_size(4, 2)
    assert len({p.read_bytes() for p in outputs}) == 1  # one model, one seed: the same images
    cool = tmp_path / "cool.png"
    assert run_main(["sample", "--model", str(models), "--n", "4", "--temperature", "0.3",
                     "--out", str(cool)], capsys)[0] == 0
    assert png_size(cool) == grid_size(4, 2) and cool.read_bytes() != outputs[0].read_bytes()


def test_inpaint_test_images_user_images_and_mask_file(env: dict[str, Any], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    for kind in KINDS:
        out = tmp_path / f"{kind}.png"
        code, _, err = run_main(["inpaint", "--test-index", "0", "1", "2", "--split", str(env["split"]),
                                 "--mask", kind, "--effort", "2", "--out", str(out)], capsys)
        assert code == 0, err
        assert png_size(out) == grid_size(3, 3, rows_per_group=3)  # original | masked | completed rows
    x, _ = np.load(env["split"] / "test_x.npy"), None
    images = [str(save_png(tmp_path / f"in/{i}.png", x[i])) for i in range(2)]
    mask = np.zeros((28, 28)); mask[:, :10] = 255  # noqa: E702 - left columns hidden
    mask_png = save_png(tmp_path / "mask.png", mask)
    out = tmp_path / "mine.png"
    code, _, err = run_main(["inpaint", "--model", "models:/rnngen@champion", "--image", *images,
                             "--mask", str(mask_png), "--effort", "2", "--out", str(out)], capsys)
    assert code == 0, err
    assert png_size(out) == grid_size(2, 2, rows_per_group=3)
    with Image.open(out) as im:  # the masked row shows the hidden left columns grey (0.5)
        masked_row = np.asarray(im.convert("L"))[32:60, 2:30]
    assert (np.abs(masked_row[:, :10].astype(int) - 128) <= 1).all()


def write_idx(folder: Path, prefix: str, x: np.ndarray, y: np.ndarray) -> None:
    import gzip
    import struct

    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">IIII", 2051, len(x), 28, 28) + x.astype(np.uint8).tobytes())
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">II", 2049, len(y)) + y.astype(np.uint8).tobytes())


def test_evaluate_on_user_folders(env: dict[str, Any], trained_model: dict[str, Any], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    x, y = np.load(env["split"] / "test_x.npy"), np.load(env["split"] / "test_y.npy")
    write_idx(tmp_path / "idx", "train", x[100:260], y[100:260])
    write_idx(tmp_path / "idx", "t10k", x[:30], y[:30])
    fast = ["--k", "2", "--effort", "1", "--inpaint-images", "10", "--classifier-epochs", "1"]
    code, out, err = run_main(["evaluate", "--data", str(tmp_path / "idx"), *fast,
                               "--out", str(tmp_path / "scores.json"), "--pictures", str(tmp_path / "pics")], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result == read_json(tmp_path / "scores.json")
    assert result["n_test"] == 30 and "t10k" in result["data"] and "version 1" in result["model"]
    assert "trained here on 144" in result["classifier"]  # 160 train images, 10 % held out
    assert 0 < result["test_nll_iwae"] <= result["test_nll_elbo"]
    assert result["test_fcd"] >= 0 and result["test_n_quality"] == 30
    for kind in KINDS:  # the evaluate stage's metric names
        assert {f"inpaint_{kind}_mse_missing", f"inpaint_{kind}_accuracy_completed"} <= set(result)
    assert png_size(tmp_path / "pics" / "inpaint_bottom_half.png") == grid_size(10, 8, rows_per_group=3)

    for i in range(16):  # a flat folder: no labels, so no accuracy; the classifier must be given
        save_png(tmp_path / "flat" / f"{i}.png", x[i])
    flat_argv = ["evaluate", "--data", str(tmp_path / "flat"), "--model", str(env["models"]), *fast]
    code, _, err = run_main(flat_argv, capsys)
    assert code == 2 and "need a classifier" in err
    code, out, err = run_main([*flat_argv, "--classifier", str(trained_model["classifier"] / "classifier.pt")],
                              capsys)
    assert code == 0, err
    flat = json.loads(out)
    assert flat["n_test"] == 16 and not flat["labelled"] and flat["test_fcd"] >= 0
    assert "inpaint_bottom_half_mse_missing" in flat and not any("accuracy" in k for k in flat)


def test_mask_kinds_are_the_inpainting_modules() -> None:
    from rnngen import inpaint

    assert set(cli.MASK_KINDS) == set(inpaint.MASKS)


def test_info_names_the_champion(env: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["info"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert (info["version"], info["alias"], info["promotion"]["decision"]) == ("1", "champion", "first")
    assert info["metrics"]["test_nll_iwae"] == pytest.approx(read_json(env["metrics"])["test_nll_iwae"])


def test_promote_command(trained_model: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(trained_model["dir"] / "mlflow.db", tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = tmp_path / "params.yaml"
    params.write_text("promote:\n  margin: 0.25\n  tolerances: {test_nll_elbo: 2.0}\n")
    report = tmp_path / "reports" / "promotion.md"
    argv = ["promote", "--run-json", str(trained_model["models"] / "run.json"), "--metrics",
            str(trained_model["metrics"]), "--report", str(report), "--params", str(params),
            "--tolerance", "test_fcd=3", "--split", str(tmp_path / "none")]
    code, out, err = run_main(argv, capsys)
    assert code == 0, err
    assert out == report.read_text() and "first champion" in out
    assert "test_nll_iwae lower by >= 0.25; tolerances test_nll_elbo 2, test_fcd 3" in out
    code, _, err = run_main([*argv, "--margin", "-1"], capsys)
    assert code == 2 and "margin: must be >= 0" in err


def test_bad_input_through_the_console_script(env: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "never.png"
    proc = subprocess.run([*console_script(), "sample", "--model", "models:/rnngen@staging", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: model 'rnngen' has no alias @staging (aliases: @champion (v1)); "
        "`rnngen promote` (run by `make repro`) sets it"
    )
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_images_of_any_size_and_mode_follow_the_data_policy(env: dict[str, Any], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """One reader for every image: the CLI converts an RGB 32x32 picture exactly as data.local
    (dataset custom) does, grey then 28x28."""
    from rnngen import data

    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[8:24, 12:20] = (255, 200, 100)
    path = save_png(tmp_path / "in" / "0" / "rgb.png", rgb, mode="RGB")
    image = data.read_image(path)
    assert image.shape == (28, 28) and image.dtype == np.uint8 and image.max() > 100
    raw = data.acquire(data.DataConfig(dataset="custom", source="local", path=str(tmp_path / "in")), tmp_path)
    assert np.array_equal(raw.x_train[0], image)
    code, _, err = run_main(["inpaint", "--image", str(path), "--mask", "bottom_half", "--effort", "1",
                             "--out", str(tmp_path / "p.png")], capsys)
    assert code == 0, err


def bad_cases(tmp: Path, split: Path) -> list[tuple[list[str], str]]:
    tmp.mkdir(parents=True, exist_ok=True)
    junk = tmp / "junk.png"
    junk.write_bytes(b"not a picture")
    not_ckpt = tmp / "weights.pt"
    not_ckpt.write_bytes(b"\x00" * 64)
    digit = save_png(tmp / "digit.png", np.zeros((28, 28)))
    inpaint = ["inpaint", "--mask", "bottom_half", "--image"]
    return [
        (["sample", "--model", "models:/nope@champion"], "no registered model 'nope'"),
        (["sample", "--model", "models:/rnngen/7"], "model 'rnngen' has no version 7"),
        (["sample", "--model", "models:/rnngen"], "cannot read model URI"),
        (["sample", "--model", str(tmp / "missing.pt")], "missing.pt does not exist"),
        (["sample", "--model", str(not_ckpt)], "is corrupted or not a PyTorch checkpoint"),
        ([*inpaint, str(junk)], "cannot read image"),
        ([*inpaint, str(tmp / "nowhere.png")], "does not exist"),
        (["inpaint", "--image", str(digit), "--mask", "diamond"], "unknown mask kind 'diamond'"),
        (["inpaint", "--test-index", "5000", "--split", str(split), "--mask", "bottom_half"], "has 1000 images"),
        (["evaluate", "--data", str(tmp / "no_folder")], "does not exist"),
        (["sample", "--out", str(tmp / "grid.jpg")], "must be a .png file"),
    ]


def test_bad_input_gets_a_clear_error_and_writes_nothing(env: dict[str, Any], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    inputs, outputs = tmp_path / "inputs", tmp_path / "outputs"
    for argv, message in bad_cases(inputs, env["split"]):
        if "--out" not in argv:
            argv = [*argv, "--out", str(outputs / "out.png")]
        code, _, err = run_main(argv, capsys)
        assert code == 2, (argv, err)
        assert message in err, (argv, err)
        assert "Traceback" not in err
        assert not outputs.exists(), argv
    code, _, err = run_main(["info", "--name", "nope"], capsys)
    assert code == 2 and "error: no registered model 'nope'" in err
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'absent' / 'mlflow.db'}")
        code, _, err = run_main(["info"], capsys)
        assert code == 2 and "is missing or not writable" in err
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
        code, _, err = run_main(["info"], capsys)
        assert code == 2 and "no MLflow store at" in err and not (tmp_path / "mlflow.db").exists()


def test_serve_takes_a_registered_model_and_the_measured_settings(capsys: pytest.CaptureFixture[str]) -> None:
    """A checkpoint file cannot be served: refused with a sentence before anything starts. The
    command it runs is mlflow's, with the settings of rnngen.serving (the workers run in the e2e tier)."""
    from rnngen import serving

    assert cli.main(["serve", "--model", "models/model.pt"]) == 2
    assert "serve takes a registered model" in capsys.readouterr().err
    cmd, env = serving.serve_command("models:/rnngen/3", port=5002, workers=3, threads=2, timeout_s=30)
    assert cmd[1:] == ["models", "serve", "-m", "models:/rnngen/3", "--env-manager", "local", "--host", "127.0.0.1",
                       "--port", "5002", "--workers", "3", "--timeout", "30"]
    assert Path(cmd[0]).name == "mlflow" and env["OMP_NUM_THREADS"] == "2"
    assert env["MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"] == "30"
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)  # MLflow starts uvicorn by name
