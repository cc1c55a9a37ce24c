"""Stage `evaluate`: test metrics and pictures of the trained model (:func:`rnngen.evaluate.report`).

Each evaluation is its own MLflow run, nested under the training run: its ``test_set.*``
params are the structured identity of what was scored (see
:func:`rnngen.evaluate.test_set_identity`), so promotion compares like with like. The
headline metrics are also logged on the training run (to compare runs in the UI list), and
the registered version is tagged with the evaluation run's id and the identity.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rnngen import checkpoint as ckpt
from rnngen import data, registry, tracking
from rnngen.classifier import CLASSIFIER_FILE, METRICS_FILE, load_classifier
from rnngen.config import section
from rnngen.evaluate import EvalConfig, report, test_set_identity
from rnngen.files import atomic_dir, read_json, write_json
from rnngen.models import GenerativeModel

#: metrics copied onto the registered version's tags, for the registry page
VERSION_TAG_METRICS = ("test_nll_iwae", "test_nll_elbo", "test_fcd")


def binarization_note(binarization: str, seed: int) -> str:
    """How the test images were binarized, for people (the identity holds the structured form)."""
    return {
        "dynamic": f"dynamic (test images binarized once with seed {seed})",
        "fixed": "fixed (one seeded Bernoulli sample, made at split time)",
        "none": "none (grey levels as Bernoulli targets: not a true likelihood)",
    }[binarization]


def run(
    params: Mapping[str, Any], model_dir: Path, split_dir: Path, classifier_dir: Path, metrics_path: Path,
    plots_dir: Path,
) -> dict[str, Any]:
    """Score the train stage's model on the test split; log and write the results."""
    import mlflow

    cfg = section(EvalConfig, params, "evaluate")
    run_info = read_json(model_dir / registry.RUN_FILE)
    state = ckpt.load(model_dir / registry.CHECKPOINT_FILE)  # read once: the model and its binarization
    model, binarization = ckpt.model_from_state(state, model_dir / registry.CHECKPOINT_FILE), state["binarization"]
    judge = load_classifier(classifier_dir / CLASSIFIER_FILE)
    classifier_metrics = read_json(classifier_dir / METRICS_FILE)
    x_test, y_test = data.load_split(split_dir, "test")
    if cfg.max_images:
        x_test, y_test = x_test[: cfg.max_images], y_test[: cfg.max_images]
    identity = test_set_identity(cfg, binarization, len(x_test), data.test_set_digest(split_dir), judge,
                                 model.conditional)
    tracking.check_store(run_info["tracking_uri"])
    mlflow.set_tracking_uri(run_info["tracking_uri"])
    note = binarization_note(binarization, cfg.seed)

    with tracking.run(run_id=run_info["run_id"]):
        with tracking.run(run_name=f"evaluate {run_info.get('run_name') or model.name}", nested=True,
                          experiment_id=run_info["experiment_id"]) as evaluation:
            mlflow.log_params({f"{registry.TEST_SET_PREFIX}{k}": v for k, v in identity.items()})
            mlflow.set_tags({"test_binarization": note, "model": model.name,
                             registry.LIKELIHOOD_TAG: likelihood_kind(model)})
            with atomic_dir(plots_dir) as tmp:
                metrics = report(model, x_test, y_test, judge, cfg, binarization, tmp)
                _log_pictures(tmp)
            metrics["classifier_test_accuracy"] = classifier_metrics["test_accuracy"]
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})  # on the training run, for the run list
        version = run_info.get("model_version")
        if version:
            client = mlflow.MlflowClient()
            tags = {registry.EVALUATION_TAG: evaluation.info.run_id,
                    **{f"{registry.TEST_SET_PREFIX}{k}": v for k, v in identity.items()},
                    **{k: f"{metrics[k]:.4f}" for k in VERSION_TAG_METRICS if k in metrics}}
            for key, value in tags.items():
                client.set_model_version_tag(run_info["model_name"], version, key, value)
    # No run id or timings here: the same params and seed give a byte-identical file.
    likelihood = {"exact": "exact", "bound": f"bounds: ELBO and IWAE with k={cfg.k}",
                  "none": f"none ({model.name} has no likelihood: no NLL metrics)"}[likelihood_kind(model)]
    result = {**metrics, "binarization": note, "model": model.name, "likelihood": likelihood, "test_set": identity}
    write_json(metrics_path, result)
    print(f"test NLL: {nll_line(model, metrics, cfg.k)} on {len(x_test)} images; FCD {metrics['test_fcd']:.1f}")
    return result


def likelihood_kind(model: GenerativeModel) -> str:
    """exact | bound | none: what the model's NLL metrics are (tagged on its evaluation run)."""
    return "none" if not model.has_likelihood else "exact" if model.exact_likelihood else "bound"


def nll_line(model: GenerativeModel, metrics: Mapping[str, float], k: int) -> str:
    kind = likelihood_kind(model)
    if kind == "none":
        return f"none ({model.name} has no likelihood)"
    nll = (f"exact {metrics['test_nll_exact']:.2f}" if kind == "exact" else
           f"ELBO {metrics['test_nll_elbo']:.2f}  IWAE(k={k}) {metrics['test_nll_iwae']:.2f}")
    return f"{nll} nats ({metrics['test_bpd_iwae']:.4f} bits/dim)"


def _log_pictures(folder: Path) -> None:
    import mlflow
    from PIL import Image

    for path in sorted(folder.iterdir()):
        mlflow.log_artifact(str(path), artifact_path="pictures")
        if path.suffix == ".png":  # also as images over steps, for the UI's chart view
            with Image.open(path) as im:
                mlflow.log_image(im.convert("RGB"), key=path.stem, step=0)
