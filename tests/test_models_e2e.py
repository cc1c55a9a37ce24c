"""Every model in the registry through every stage: `dvc exp run -S model.name=NAME` in a fresh
git+DVC copy (tune -> train -> evaluate -> registry), then the registered version through the
CLI (`sample`, `inpaint`, `evaluate`) and back through MLflow's own loader (`models:/` URI), which
scores, samples and inpaints as the served model does."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import copy_project, tiny_params
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


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_project(tmp_path_factory.mktemp("models"), tiny_params())


#: every model of the registry (a new one is tested here too), the GAN's second loss and PixelRNN's second variant
RUNS = [(name, []) for name in MODELS] + [("dcgan", ["model.dcgan.loss=wgan_gp"]),
                                           ("pixelrnn", ["model.pixelrnn.variant=row_lstm"])]


@pytest.mark.parametrize(("name", "sets"), RUNS, ids=[" ".join([n, *s]) for n, s in RUNS])
def test_model_through_dvc_the_registry_and_the_cli(project: Path, name: str, sets: list[str]) -> None:
    out = run([str(BIN / "dvc"), "exp", "run", "-S", f"model.name={name}", *(f"-S{s}" for s in sets)], project)
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

    rnngen = str(BIN / "rnngen")
    sample = run([rnngen, "sample", "--model", uri, "--n", "4", "--out", f"{name}.png"], project)
    assert f"version {record['model_version']}" in sample.stdout and (project / f"{name}.png").stat().st_size
    run([rnngen, "inpaint", "--model", uri, "--test-index", "0", "1", "--mask", "centre_square",
         "--effort", "1", "--out", f"{name}-inpaint.png"], project)
    walked = run([rnngen, "interpolate", "--model", uri, "--test-index", "0", "1", "--steps", "3",
                  "--out", f"{name}-walk.png"], project, check=False)
    if issubclass(MODELS[name], LatentModel):  # the walk, and the evaluate stage's picture of four
        assert walked.returncode == 0, walked.stderr
        assert (project / "reports/pictures/interpolation.png").stat().st_size
    else:
        assert walked.returncode == 2 and "has no latent variable" in walked.stderr
        assert not (project / f"{name}-walk.png").exists()
        assert not (project / "reports/pictures/interpolation.png").exists()
    scored = json.loads(run([rnngen, "evaluate", "--model", uri, "--split", "data/split"], project).stdout)
    # the CLI reads params.yaml's evaluate.* and the project's classifier: the stage's numbers
    nll_keys = ("test_nll_iwae", "test_nll_elbo") if likelihood else ()
    for key in (*nll_keys, "test_fcd", "inpaint_bottom_half_mse_missing"):
        assert scored[key] == pytest.approx(metrics[key], rel=1e-9, abs=1e-9), key
    assert likelihood or not any("nll" in k for k in scored)
    refused = run([rnngen, "score", "--model", uri, "--test-index", "0"], project, check=False)
    assert (refused.returncode == 0) == likelihood, refused.stderr
    if not likelihood:
        assert "has no likelihood, so it cannot score images" in refused.stderr and "Traceback" not in refused.stderr
        promote_a_gan(project, name)

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


def promote_a_gan(project: Path, name: str) -> None:
    """A GAN has no test NLL: promotion by it is refused, naming the fix, and changes nothing;
    by a metric both sides have (FCD) it is decided and recorded."""
    rnngen, report = str(BIN / "rnngen"), project / "reports/promotion.md"
    report.unlink(missing_ok=True)
    refused = run([rnngen, "promote"], project, check=False)
    assert refused.returncode == 2 and "has no likelihood (a GAN), so it has no test_nll_iwae" in refused.stderr
    assert "--primary test_fcd" in refused.stderr and not report.exists()
    decided = run([rnngen, "promote", "--primary", "test_fcd"], project)
    assert "test_fcd" in report.read_text(), decided.stdout


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


@pytest.mark.parametrize("name", list(MODELS))
def test_conditional_model_through_dvc_the_registry_and_the_cli(conditional_project: Path, name: str) -> None:
    """`dvc exp run -S model.NAME.conditional=true`: p(x | y) trained on the split's labels,
    scored with the test labels, samples asked of each class; the CLI and the registered model
    (through its models:/ URI) draw a requested class and refuse a request without one."""
    project = conditional_project
    out = run([str(BIN / "dvc"), "exp", "run", "-S", f"model.name={name}", "-S", f"model.{name}.conditional=true"],
              project)
    assert {"tune", "train", "evaluate"} <= set(stages_run(out.stdout)), out.stdout
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert metrics["model"] == name and metrics["test_set"]["conditional"] == "true"
    assert 0 <= metrics["test_asked_accuracy"] <= 1
    uri = f"models:/rnngen/{json.loads((project / 'models/run.json').read_text())['model_version']}"
    rnngen = str(BIN / "rnngen")
    run([rnngen, "sample", "--model", uri, "--label", "all", "--n", "2", "--out", f"{name}-classes.png"], project)
    assert (project / f"{name}-classes.png").stat().st_size
    refused = run([rnngen, "sample", "--model", uri, "--out", f"{name}-none.png"], project, check=False)
    assert refused.returncode == 2 and "is conditional" in refused.stderr
    assert not (project / f"{name}-none.png").exists()
    if issubclass(MODELS[name], LatentModel):  # a walk holds one class from end to end; without one it is refused
        walk = [rnngen, "interpolate", "--model", uri, "--test-index", "0", "1", "--steps", "3"]
        run([*walk, "--label", "3", "--out", f"{name}-walk3.png"], project)
        assert (project / f"{name}-walk3.png").stat().st_size
        assert (project / "reports/pictures/interpolation.png").stat().st_size
        unheld = run([*walk, "--out", f"{name}-walk.png"], project, check=False)
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
