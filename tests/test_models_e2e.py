"""Every model in the registry through every stage: `dvc exp run -S model.name=NAME` in a fresh
git+DVC copy (tune -> train -> evaluate -> registry), conditional on the split's labels (PixelRNN
as its other variant, the GAN with its other loss), then the registered version through the CLI
(`sample`, `inpaint`, `interpolate`, `evaluate`, `score`) and back through MLflow's own loader
(`models:/` URI) in a fresh process, which scores, samples and inpaints as the served model does;
PixelRNN as params.yaml has it also without a label. The pipeline's mechanics go through the same
stages in tests/test_pipeline.py, and every model unconditionally through training, the service
and the CLI's code in the fast tier. The CLI
is called as ``rnngen.cli.main(argv)`` in the project's folder, the function the console script
runs (tests/test_cli.py runs the script itself), to save an interpreter start per command."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import copy_project, tiny_params
from rnngen import cli
from rnngen.inpaint import MASKS, make_mask
from rnngen.models import MODELS
from rnngen.models.latent import LatentModel
from test_pipeline import BIN, run, stages_run

pytestmark = pytest.mark.e2e

SERVED = """
import json, sys
import mlflow.pyfunc
import numpy as np
model = mlflow.pyfunc.load_model(sys.argv[1])
x = (np.load(sys.argv[2])[:5] > 127).astype(np.float32).reshape(5, 1, 28, 28)
labels = {"labels": np.load(sys.argv[3])[:5].tolist()}
try:
    scores = [np.asarray(model.predict(x, params=labels)).tolist() for _ in range(2)]
except Exception as exc:  # a model without a likelihood refuses to score
    scores = str(exc)
drawn = model.predict([], params={"task": "sample", "n": 3, "seed": 1, "labels": [7]})
repaired = model.predict(x, params={"task": "inpaint", "mask": "random_pixels", "effort": 2, **labels})
try:  # no labels: refused, or (a conditional PixelRNN) p(x), the mixture over classes
    free = {"drawn": np.asarray(model.predict([], params={"task": "sample", "n": 2})).shape,
            "scores": np.asarray(model.predict(x)).tolist(),
            "repaired": np.asarray(model.predict(x, params={"task": "inpaint", "mask": "centre_square"})).tolist()}
except Exception as exc:
    free = str(exc)
print(json.dumps({"scores": scores, "drawn": np.asarray(drawn).tolist(), "repaired": np.asarray(repaired).tolist(),
                  "free": free}))
"""


Rnngen = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture()
def rnngen(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Rnngen:
    """``rnngen(project, *argv)``: the command as a user runs it in ``project``, whose own store
    (``mlflow.db``) it finds by itself; its exit code and output."""

    def call(project: Path, *argv: str) -> subprocess.CompletedProcess[str]:
        monkeypatch.chdir(project)
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        capsys.readouterr()
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:  # argparse's usage errors
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["rnngen", *argv], code, out, err)

    return call


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_project(tmp_path_factory.mktemp("models"), tiny_params())


#: every model conditional, with PixelRNN's other variant trained to repair, and the GAN's other loss; then
#: PixelRNN as params.yaml has it, which also answers without a label (the mixture over classes). `dvc exp
#: run -S` leaves its values in the workspace's params.yaml, so that run sets back what the first one set
RUNS = [*((name, {"pixelrnn": ["model.pixelrnn.variant=row_lstm", "model.pixelrnn.repair=true"],
                  "dcgan": ["model.dcgan.loss=wgan_gp"]}.get(name, []))
          for name in MODELS), ("pixelrnn", ["model.pixelrnn.variant=diagonal_bilstm", "model.pixelrnn.repair=false"])]


def needs_labels(name: str, sets: list[str]) -> bool:
    """Whether the run's model needs a class everywhere: every conditional model but a PixelRNN
    that is not trained to repair."""
    return name != "pixelrnn" or "model.pixelrnn.repair=true" in sets


@pytest.mark.parametrize(("name", "sets"), RUNS, ids=[" ".join([n, *s]) for n, s in RUNS])
def test_model_through_dvc_the_registry_the_cli_and_the_served_model(project: Path, name: str, sets: list[str],
                                                                      rnngen: Rnngen) -> None:
    """`dvc exp run -S model.NAME.conditional=true`: p(x | y) trained on the split's labels,
    scored with the test labels (without them, p(x), where the model needs none), samples asked
    of each class; the registered version through every command and MLflow's loader (a new
    model of the registry is tested here too)."""
    out = run([str(BIN / "dvc"), "exp", "run", "-S", f"model.name={name}", "-S", f"model.{name}.conditional=true",
               *(f"-S{s}" for s in sets)], project)
    assert {"tune", "train", "evaluate"} <= set(stages_run(out.stdout)), out.stdout
    record = json.loads((project / "models/run.json").read_text())
    metrics = json.loads((project / "reports/metrics.json").read_text())
    likelihood = MODELS[name].has_likelihood
    needs = needs_labels(name, sets)
    assert metrics["model"] == name and metrics["test_set"]["conditional"] == str(needs).lower()
    assert metrics["test_fcd"] > 0
    assert 0 <= metrics["test_asked_accuracy"] <= 1
    if likelihood:
        assert 0 < metrics["test_nll_iwae"] <= metrics["test_nll_elbo"]
        # the hole's NLL for every mask: exact (PixelRNN, trained to repair here) or estimated
        assert all(0 < metrics[f"test_hole_nll_{kind}"] < 784 * 0.7 for kind in MASKS)
    else:  # absent, not 0 or NaN
        assert metrics["likelihood"].startswith("none") and not any("nll" in k or "bpd" in k for k in metrics)
    uri = f"models:/rnngen/{record['model_version']}"
    check_commands(project, name, uri, metrics, rnngen, needs)
    check_served(project, name, uri, needs)


def check_commands(project: Path, name: str, uri: str, metrics: dict, rnngen: Rnngen, needs: bool) -> None:
    """sample (a class, every class, none: refused where the model ``needs`` one), inpaint,
    interpolate (a latent model's walk holds a class; PixelRNN has none), evaluate (the stage's
    numbers), score (a GAN: refused)."""
    sample = rnngen(project, "sample", "--model", uri, "--label", "3", "--n", "4", "--out", f"{name}.png")
    assert f"version {uri.rsplit('/', 1)[1]}" in sample.stdout and (project / f"{name}.png").stat().st_size
    drawn = rnngen(project, "sample", "--model", uri, "--label", "all", "--n", "2", "--out", f"{name}-classes.png")
    assert drawn.returncode == 0 and (project / f"{name}-classes.png").stat().st_size, drawn.stderr
    unlabelled = rnngen(project, "sample", "--model", uri, "--out", f"{name}-none.png")
    assert (unlabelled.returncode == 2 and "is conditional" in unlabelled.stderr) == needs
    assert (project / f"{name}-none.png").exists() != needs
    inpainted = rnngen(project, "inpaint", "--model", uri, "--test-index", "0", "1", "--mask", "centre_square",
                       "--effort", "1", "--out", f"{name}-inpaint.png")  # the test images' own labels
    assert inpainted.returncode == 0, inpainted.stderr
    walk = ["interpolate", "--model", uri, "--test-index", "0", "1", "--steps", "3"]
    held = rnngen(project, *walk, "--label", "3", "--out", f"{name}-walk3.png")
    if issubclass(MODELS[name], LatentModel):  # the walk, and the evaluate stage's picture of four
        assert held.returncode == 0 and (project / f"{name}-walk3.png").stat().st_size, held.stderr
        assert (project / "reports/pictures/interpolation.png").stat().st_size
        unheld = rnngen(project, *walk, "--out", f"{name}-walk.png")
        assert unheld.returncode == 2 and "--label" in unheld.stderr and not (project / f"{name}-walk.png").exists()
    else:
        assert held.returncode == 2 and "has no latent variable" in held.stderr
        assert not (project / f"{name}-walk3.png").exists()
        assert not (project / "reports/pictures/interpolation.png").exists()
    scored = json.loads(rnngen(project, "evaluate", "--model", uri, "--split", "data/split").stdout)
    # the CLI reads params.yaml's evaluate.* and the project's classifier: the stage's numbers
    likelihood = MODELS[name].has_likelihood
    for key in (*(("test_nll_iwae", "test_nll_elbo") if likelihood else ()), "test_fcd",
                "inpaint_bottom_half_mse_missing"):
        assert scored[key] == pytest.approx(metrics[key], rel=1e-9, abs=1e-9), key
    assert likelihood or not any("nll" in k for k in scored)
    score = rnngen(project, "score", "--model", uri, "--test-index", "0")
    assert (score.returncode == 0) == likelihood, score.stderr
    if not likelihood:
        assert "has no likelihood, so it cannot score images" in score.stderr and "Traceback" not in score.stderr
        promote_a_gan(project, rnngen)


def check_served(project: Path, name: str, uri: str, needs: bool) -> None:
    """MLflow's own loader, in a fresh process: only the models:/ URI and the store's address."""
    split = project / "data/split"
    served = run([sys.executable, "-c", SERVED, uri, str(split / "test_x.npy"), str(split / "test_y.npy")], project,
                 env={"MLFLOW_TRACKING_URI": f"sqlite:///{project.resolve() / 'mlflow.db'}"})
    answers = json.loads(served.stdout.strip().splitlines()[-1])
    if MODELS[name].has_likelihood:
        nll = np.asarray(answers["scores"])
        assert nll.shape == (2, 5) and np.isfinite(nll).all() and (nll > 0).all()
        assert (nll < 784 * np.log(2) * 2).all() and np.array_equal(nll[0], nll[1])  # seeded: the same twice
    else:
        assert f"a {name} model has no likelihood" in answers["scores"]
    # the other two tasks, with params as a request carries them; none without labels
    drawn, repaired = np.asarray(answers["drawn"]), np.asarray(answers["repaired"])
    assert drawn.shape == (3, 28, 28) and ((drawn >= 0) & (drawn <= 1)).all()
    x = (np.load(split / "test_x.npy")[:5] > 127).astype(np.float32)
    hidden = make_mask("random_pixels", 5, torch.Generator().manual_seed(0))[:, 0].numpy()
    assert repaired.shape == (5, 28, 28) and np.array_equal(repaired[~hidden], x[~hidden])
    if needs:
        assert "is conditional: send labels" in answers["free"]
        return
    free = answers["free"]  # p(x): drawn with a class of its own, scored and repaired without one
    centre = make_mask("centre_square", 5)[:, 0].numpy()
    assert free["drawn"] == [2, 28, 28] and np.isfinite(free["scores"]).all() and (np.asarray(free["scores"]) > 0).all()
    assert np.array_equal(np.asarray(free["repaired"])[~centre], x[~centre])


def promote_a_gan(project: Path, rnngen: Rnngen) -> None:
    """A GAN has no test NLL: promotion by it is refused, naming the fix, and changes nothing;
    by a metric both sides have (FCD) it is decided and recorded."""
    report = project / "reports/promotion.md"
    report.unlink(missing_ok=True)
    refused = rnngen(project, "promote")
    assert refused.returncode == 2 and "has no likelihood (a GAN), so it has no test_nll_iwae" in refused.stderr
    assert "--primary test_fcd" in refused.stderr and not report.exists()
    decided = rnngen(project, "promote", "--primary", "test_fcd")
    assert decided.returncode == 0 and "test_fcd" in report.read_text(), decided.stderr
