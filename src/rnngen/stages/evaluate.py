"""Stage `evaluate`: test metrics and pictures of the trained model (:func:`rnngen.evaluate.report`),
in an MLflow run nested under the training run whose ``test_set.*`` params say what was scored,
so promotion compares like with like; the registered version is tagged with both.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rnngen import checkpoint as ckpt
from rnngen import data, registry, tracking
from rnngen.classifier import CLASSIFIER_FILE, METRICS_FILE, load_classifier
from rnngen.config import section
from rnngen.evaluate import EvalConfig, binarization_note, nll_line, report, test_set_identity
from rnngen.files import atomic_dir, read_json, write_json
from rnngen.models.likelihood import likelihood_kind


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
    test = data.load_split(split_dir, "test")
    test = test.head(cfg.max_images) if cfg.max_images else test
    identity = test_set_identity(cfg, binarization, len(test.x), data.test_set_digest(split_dir), judge,
                                 model.needs_labels)
    tracking.check_store(run_info["tracking_uri"])
    mlflow.set_tracking_uri(run_info["tracking_uri"])
    note = binarization_note(binarization, cfg.seed)

    with tracking.run(run_id=run_info["run_id"]):
        with tracking.run(run_name=f"evaluate {run_info.get('run_name') or model.name}", nested=True,
                          experiment_id=run_info["experiment_id"]) as evaluation:
            mlflow.log_params({f"{registry.TEST_SET_PREFIX}{k}": v for k, v in identity.items()})
            with atomic_dir(plots_dir) as tmp:
                metrics = report(model, test, judge, cfg, binarization, tmp)
                tracking.log_pictures(tmp)
            kind = likelihood_kind(metrics, "test_")
            mlflow.set_tags({"test_binarization": note, "model": model.name, registry.LIKELIHOOD_TAG: kind})
            metrics["classifier_test_accuracy"] = classifier_metrics["test_accuracy"]
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})  # on the training run, for the run list
        registry.tag_evaluation(run_info, evaluation.info.run_id, identity, metrics)
    # No run id or timings here: the same params and seed give a byte-identical file.
    likelihood = {"exact": "exact", "bound": f"bounds: ELBO and IWAE with k={cfg.k}",
                  "none": f"none ({model.name} has no likelihood: no NLL metrics)"}[kind]
    result = {**metrics, "binarization": note, "model": model.name, "likelihood": likelihood, "test_set": identity}
    write_json(metrics_path, result)
    print(f"test NLL: {nll_line(model.name, metrics, cfg.k)} on {len(test.x)} images; FCD {metrics['test_fcd']:.1f}")
    return result
