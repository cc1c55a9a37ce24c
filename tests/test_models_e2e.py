"""Every model in the registry through every stage: `dvc exp run -S model.name=NAME` in a fresh
git+DVC copy (tune -> train -> evaluate -> registry), then the registered version through the
CLI (`sample`, `inpaint`, `evaluate`) and back through MLflow's own loader (`models:/` URI) in a
fresh process, which scores, samples and inpaints as the served model does. The CLI is called as
``rnngen.cli.main(argv)`` in the project's folder, the function the console script runs
(tests/test_cli.py runs the script itself), to save an interpreter start per command."""

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
from rnngen.inpaint import make_mask
from rnngen.models import MODELS
from rnngen.models.latent import LatentModel
from test_pipeline import BIN, run, stages_run

pytestmark = pytest.mark.e2e

PYFUNC = """
import json, sys
import mlflow.pyfunc
import numpy as np
model = mlflow.pyfunc.load_model(sys.argv[1])
x = (np.load(sys.argv[2])[:5] > 127).astype(np.float32).reshape(5, 1, 28, 28)
try:
    scores = [np.asarray(model.predict(x)).tolist() for _ in range(2)]
except Exception as exc:  # a model without a likelihood refuses to score
    scores = str(exc)
drawn = model.predict([], params={"task": "sample", "n": 3, "seed": 1})
repaired = model.predict(x, params={"task": "inpaint", "mask": "random_pixels", "effort": 2})
print(json.dumps({"scores": scores, "drawn": np.asarray(drawn).tolist(), "repaired": np.asarray(repaired).tolist()}))
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


@pytest.mark.parametrize("name", list(MODELS))
def test_model_through_dvc_the_registry_and_the_cli(project: Path, name: str, rnngen: Rnngen) -> None:
    """Every model of the registry (a new one is tested here too), unconditional."""
    out = run([str(BIN / "dvc"), "exp", "run", "-S", f"model.name={name}"], project)
    assert {"tune", "train", "evaluate"} <= set(stages_run(out.stdout)), out.stdout
    record = json.loads((project / "models/run.json").read_text())
    metrics = json.loads((project / "reports/metrics.json").read_text())
    likelihood = MODELS[name].has_likelihood
    assert metrics["model"] == name and metrics["test_fcd"] > 0
    if likelihood:
        assert 0 < metrics["test_nll_iwae"] <= metrics["test_nll_elbo"]
    else:  # absent, not 0 or NaN
        assert metrics["likelihood"].startswith("none") and not any("nll" in k or "bpd" in k for k in metrics)
    uri = f"models:/rnngen/{record['model_version']}"

    sample = rnngen(project, "sample", "--model", uri, "--n", "4", "--out", f"{name}.png")
    assert f"version {record['model_version']}" in sample.stdout and (project / f"{name}.png").stat().st_size
    inpainted = rnngen(project, "inpaint", "--model", uri, "--test-index", "0", "1", "--mask", "centre_square",
                       "--effort", "1", "--out", f"{name}-inpaint.png")
    assert inpainted.returncode == 0, inpainted.stderr
    walked = rnngen(project, "interpolate", "--model", uri, "--test-index", "0", "1", "--steps", "3",
                    "--out", f"{name}-walk.png")
    if issubclass(MODELS[name], LatentModel):  # the walk, and the evaluate stage's picture of four
        assert walked.returncode == 0, walked.stderr
        assert (project / "reports/pictures/interpolation.png").stat().st_size
    else:
        assert walked.returncode == 2 and "has no latent variable" in walked.stderr
        assert not (project / f"{name}-walk.png").exists()
        assert not (project / "reports/pictures/interpolation.png").exists()
    scored = json.loads(rnngen(project, "evaluate", "--model", uri, "--split", "data/split").stdout)
    # the CLI reads params.yaml's evaluate.* and the project's classifier: the stage's numbers
    nll_keys = ("test_nll_iwae", "test_nll_elbo") if likelihood else ()
    for key in (*nll_keys, "test_fcd", "inpaint_bottom_half_mse_missing"):
        assert scored[key] == pytest.approx(metrics[key], rel=1e-9, abs=1e-9), key
    assert likelihood or not any("nll" in k for k in scored)
    refused = rnngen(project, "score", "--model", uri, "--test-index", "0")
    assert (refused.returncode == 0) == likelihood, refused.stderr
    if not likelihood:
        assert "has no likelihood, so it cannot score images" in refused.stderr and "Traceback" not in refused.stderr
        promote_a_gan(project, rnngen)

    # MLflow's own loader, in a fresh process: only the models:/ URI and the store's address
    served = run([sys.executable, "-c", PYFUNC, uri, str(project / "data/split/test_x.npy")], project,
                 env={"MLFLOW_TRACKING_URI": f"sqlite:///{project.resolve() / 'mlflow.db'}"})
    answers = json.loads(served.stdout.strip().splitlines()[-1])
    if likelihood:
        nll = np.asarray(answers["scores"])
        assert nll.shape == (2, 5) and np.isfinite(nll).all() and (nll > 0).all()
        assert (nll < 784 * np.log(2) * 2).all() and np.array_equal(nll[0], nll[1])  # seeded: the same twice
    else:
        assert f"a {name} model has no likelihood" in answers["scores"]
    # the other two tasks of the served model, with params as a request carries them
    drawn, repaired = np.asarray(answers["drawn"]), np.asarray(answers["repaired"])
    assert drawn.shape == (3, 28, 28) and ((drawn >= 0) & (drawn <= 1)).all()
    x = (np.load(project / "data/split/test_x.npy")[:5] > 127).astype(np.float32)
    hidden = make_mask("random_pixels", 5, torch.Generator().manual_seed(0))[:, 0].numpy()
    assert repaired.shape == (5, 28, 28) and np.array_equal(repaired[~hidden], x[~hidden])


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


CONDITIONAL = """
import json, sys
import mlflow.pyfunc
import numpy as np
model = mlflow.pyfunc.load_model(sys.argv[1])
x = (np.load(sys.argv[2])[:3] > 127).astype(np.float32).reshape(3, 1, 28, 28)
labels = np.load(sys.argv[3])[:3].tolist()
try:
    scores = np.asarray(model.predict(x, params={"labels": labels})).tolist()
except Exception as exc:  # a model without a likelihood refuses to score
    scores = str(exc)
drawn = np.asarray(model.predict([], params={"task": "sample", "n": 2, "seed": 1, "labels": [7]})).tolist()
try:
    model.predict([], params={"task": "sample", "n": 2})
    refused = ""
except Exception as exc:
    refused = str(exc)
print(json.dumps({"scores": scores, "drawn": drawn, "refused": refused}))
"""


@pytest.fixture(scope="module")
def conditional_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_project(tmp_path_factory.mktemp("conditional"), tiny_params())


#: every model conditional, with PixelRNN's other variant and the GAN's other loss
CONDITIONAL_RUNS = [(name, {"pixelrnn": ["model.pixelrnn.variant=row_lstm"],
                            "dcgan": ["model.dcgan.loss=wgan_gp"]}.get(name, [])) for name in MODELS]


@pytest.mark.parametrize(("name", "sets"), CONDITIONAL_RUNS, ids=[" ".join([n, *s]) for n, s in CONDITIONAL_RUNS])
def test_conditional_model_through_dvc_the_registry_and_the_cli(conditional_project: Path, name: str,
                                                                sets: list[str], rnngen: Rnngen) -> None:
    """`dvc exp run -S model.NAME.conditional=true`: p(x | y) trained on the split's labels,
    scored with the test labels, samples asked of each class; the CLI and the registered model
    (through its models:/ URI) draw a requested class and refuse a request without one."""
    project = conditional_project
    out = run([str(BIN / "dvc"), "exp", "run", "-S", f"model.name={name}", "-S", f"model.{name}.conditional=true",
               *(f"-S{s}" for s in sets)], project)
    assert {"tune", "train", "evaluate"} <= set(stages_run(out.stdout)), out.stdout
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert metrics["model"] == name and metrics["test_set"]["conditional"] == "true"
    assert 0 <= metrics["test_asked_accuracy"] <= 1
    uri = f"models:/rnngen/{json.loads((project / 'models/run.json').read_text())['model_version']}"
    drawn = rnngen(project, "sample", "--model", uri, "--label", "all", "--n", "2", "--out", f"{name}-classes.png")
    assert drawn.returncode == 0 and (project / f"{name}-classes.png").stat().st_size, drawn.stderr
    refused = rnngen(project, "sample", "--model", uri, "--out", f"{name}-none.png")
    assert refused.returncode == 2 and "is conditional" in refused.stderr
    assert not (project / f"{name}-none.png").exists()
    if issubclass(MODELS[name], LatentModel):  # a walk holds one class from end to end; without one it is refused
        walk = ["interpolate", "--model", uri, "--test-index", "0", "1", "--steps", "3"]
        held = rnngen(project, *walk, "--label", "3", "--out", f"{name}-walk3.png")
        assert held.returncode == 0 and (project / f"{name}-walk3.png").stat().st_size, held.stderr
        assert (project / "reports/pictures/interpolation.png").stat().st_size
        unheld = rnngen(project, *walk, "--out", f"{name}-walk.png")
        assert unheld.returncode == 2 and "--label" in unheld.stderr and not (project / f"{name}-walk.png").exists()
    served = run([sys.executable, "-c", CONDITIONAL, uri, str(project / "data/split/test_x.npy"),
                  str(project / "data/split/test_y.npy")], project,
                 env={"MLFLOW_TRACKING_URI": f"sqlite:///{project.resolve() / 'mlflow.db'}"})
    answers = json.loads(served.stdout.strip().splitlines()[-1])
    if MODELS[name].has_likelihood:
        assert np.isfinite(answers["scores"]).all()
    else:
        assert "has no likelihood" in answers["scores"]
    assert np.asarray(answers["drawn"]).shape == (2, 28, 28)
    assert "is conditional: send labels" in answers["refused"]
