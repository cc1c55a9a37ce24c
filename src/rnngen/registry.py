"""The MLflow model registry: logging a trained model, and finding and loading models in it.

Format: an MLflow ``python_function`` model whose data is rnngen's own weights-only checkpoint
(``data/model.pt``) and whose loader is this module (``loader_module``). MLflow's default
PyTorch format, pt2, runs ``torch.export``, which cannot trace DRAW's hand-written
``autograd.Function``; the pickle format would store whole modules, code that runs on load
and breaks when a class moves. A weights-only checkpoint plus an importable loader works for
every model, and ``models:/NAME@ALIAS`` means one thing for MLflow and for the CLI: both read
that same ``model.pt``.

``mlflow.pyfunc.load_model("models:/rnngen@champion").predict(x, params={"task": ...})``
scores, draws or repairs images (:mod:`rnngen.service`); without params it scores, each
binarized image's negative log-likelihood in nats. Loading needs rnngen installed.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rnngen import checkpoint as ckpt
from rnngen import service, tracking
from rnngen.checkpoint import CheckpointError
from rnngen.files import atomic_dir, atomic_file, write_json
from rnngen.models import GenerativeModel
from rnngen.tracking import TrackingError

#: the checkpoint file, in the train stage's output folder and inside the logged model
CHECKPOINT_FILE = "model.pt"
#: the train stage's record of the run and registered version, beside model.pt
RUN_FILE = "run.json"
#: model version tag naming the run of its latest evaluation (the evaluate stage's)
EVALUATION_TAG = "evaluation_run_id"
#: evaluation run tag: exact | bound | none, what its NLL metrics are (none: a model without a likelihood)
LIKELIHOOD_TAG = "likelihood"
#: params of an evaluation run that identify its test set (see rnngen.evaluate.test_set_identity)
TEST_SET_PREFIX = "test_set."


# ------------------------------------------------------------------------------ logging


def _load_pyfunc(data_path: str) -> Any:
    """MLflow's hook for ``loader_module``: ``data_path`` is the logged ``model.pt``."""
    from rnngen.service import Service

    return Service(ckpt.load_model(data_path))


def log_model(checkpoint: Path, example: np.ndarray, registered_name: str,
              example_params: dict[str, Any] | None = None) -> str:
    """Log ``checkpoint`` (a :func:`rnngen.checkpoint.save_model` file) as the active run's
    ``model`` and register it under ``registered_name``; returns the new version number. The
    input example goes with ``example_params`` (a conditional model's labels)."""
    import mlflow

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(pip|requirement).*")
        info = mlflow.pyfunc.log_model(
            name="model", loader_module=__name__, data_path=str(checkpoint),
            input_example=(example, example_params) if example_params else example,
            signature=service.signature(),
            registered_model_name=registered_name, await_registration_for=60,
            # explicit: inferring them would load the model once more in a subprocess
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "mlflow", "numpy", "rnngen"],
        )
    return str(info.registered_model_version)


# ----------------------------------------------------------------------------- finding


def client(uri: str | None = None) -> Any:
    """An ``MlflowClient`` on ``uri`` (default: MLFLOW_TRACKING_URI or the project store),
    checked first; a local sqlite store that does not exist yet is an error, not created."""
    import mlflow

    uri = uri or tracking.tracking_uri()
    tracking.check_store(uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise TrackingError(f"no MLflow store at {uri}; run `make repro` first or set MLFLOW_TRACKING_URI")
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def mlflow_errors() -> tuple[type[BaseException], ...]:
    from mlflow.exceptions import MlflowException

    return (MlflowException,)


def model_version(mlflow_client: Any, name: str, ref: str) -> Any:
    """The ``ModelVersion`` of registered model ``name`` named by an alias or a version number."""
    try:
        registered = mlflow_client.get_registered_model(name)
    except mlflow_errors() as exc:
        try:
            known = sorted(m.name for m in mlflow_client.search_registered_models(max_results=20))
        except mlflow_errors():
            known = []
        raise TrackingError(
            f"no registered model {name!r} in {mlflow_client.tracking_uri}"
            + (f"; registered: {', '.join(known)}" if known else "; train one with `make repro`")
        ) from exc
    if ref.isdigit():
        try:
            return mlflow_client.get_model_version(name, ref)
        except mlflow_errors() as exc:
            raise TrackingError(f"model {name!r} has no version {ref}") from exc
    if ref not in registered.aliases:
        aliases = ", ".join(f"@{a} (v{v})" for a, v in sorted(registered.aliases.items())) or "none yet"
        raise TrackingError(f"model {name!r} has no alias @{ref} (aliases: {aliases}); "
                            "`rnngen promote` (run by `make repro`) sets it")
    return mlflow_client.get_model_version_by_alias(name, ref)


def download_checkpoint(mlflow_client: Any, name: str, version: str, folder: str | Path) -> Path:
    """The ``model.pt`` inside registered model ``name`` version ``version``, downloaded into
    ``folder``: the file ``mlflow.pyfunc`` loads too."""
    import mlflow
    from mlflow.models import Model

    try:
        # the client's own registry says where the files are: a models:/ URI would be resolved
        # against the process-wide registry, which may be another store
        source = mlflow_client.get_model_version_download_uri(name, version)
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=str(folder), tracking_uri=mlflow_client.tracking_uri))
        data = Model.load(local).flavors["python_function"]["data"]
    except (*mlflow_errors(), OSError, KeyError) as exc:
        raise CheckpointError(
            f"model {name!r} version {version} holds no readable rnngen checkpoint ({exc}); "
            "was it registered by rnngen's train stage?"
        ) from exc
    return local / data


@dataclass(frozen=True)
class LoadedModel:
    model: GenerativeModel
    #: how the training data was binarized (dynamic | fixed | none)
    binarization: str
    #: what the user named, resolved, e.g. "models:/rnngen@champion (version 3, run 1a2b...)"
    source: str


def parse_model_uri(spec: str, default_name: str) -> tuple[str, str] | None:
    """``models:/name@alias`` -> (name, alias); ``models:/name/3`` or ``3`` -> (name, "3");
    ``None`` when ``spec`` is a path."""
    if spec.isdigit() and not Path(spec).exists():
        return default_name, spec
    if not spec.startswith("models:/"):
        return None
    body = spec.removeprefix("models:/").strip("/")
    name, sep, alias = body.partition("@")
    if sep and name and alias and "/" not in body:
        return name, alias
    name, sep, version = body.rpartition("/")
    if sep and name and version.isdigit():
        return name, version
    raise TrackingError(
        f"cannot read model URI {spec!r}; use models:/<name>@<alias>, models:/<name>/<version> "
        "or a checkpoint path"
    )


def load(spec: str, default_name: str, device: str = "cpu") -> LoadedModel:
    """Load the model named by a registry URI, a version number (of ``default_name``) or a
    local checkpoint path (a ``.pt`` file, or a folder holding ``model.pt`` such as the train
    stage's ``models/``)."""
    parsed = parse_model_uri(spec, default_name)
    if parsed is None:
        path = Path(spec)
        if path.is_dir():
            path = path / CHECKPOINT_FILE
        state = ckpt.load(path)  # CheckpointError when missing or not ours
        return LoadedModel(ckpt.model_from_state(state, path, device), str(state.get("binarization", "dynamic")),
                           str(path))
    name, ref = parsed
    mlflow_client = client()
    registered = model_version(mlflow_client, name, ref)
    with tempfile.TemporaryDirectory() as tmp:
        path = download_checkpoint(mlflow_client, name, str(registered.version), tmp)
        state = ckpt.load(path)
        model = ckpt.model_from_state(state, path, device)
    return LoadedModel(model, str(state.get("binarization", "dynamic")),
                       f"{spec} (version {registered.version}, run {registered.run_id})")


def model_info(name: str, alias: str) -> dict[str, Any]:
    """Which version holds ``alias``, its run, held-out metrics and promotion record."""
    mlflow_client = client()
    held = model_version(mlflow_client, name, alias)
    run = mlflow_client.get_run(held.run_id)
    registered = mlflow_client.get_registered_model(name)
    return {
        "name": name,
        "alias": alias,
        "version": str(held.version),
        "uri": f"models:/{name}@{alias}",
        "run_id": held.run_id,
        "run_name": run.info.run_name,
        "model": run.data.tags.get("model"),
        "created": held.creation_timestamp,
        "metrics": {k: v for k, v in sorted(run.data.metrics.items()) if k.startswith(("test_", "inpaint_"))},
        "test_set": {k.removeprefix("test_set."): v for k, v in sorted(held.tags.items())
                     if k.startswith("test_set.")},
        "promotion": {k.removeprefix("promotion."): v for k, v in sorted(held.tags.items())
                      if k.startswith("promotion.")},
        "aliases": {f"@{a}": v for a, v in sorted(registered.aliases.items())},
        "tracking_uri": mlflow_client.tracking_uri,
    }


# ----------------------------------------------------------------------- the stages' records


def publish(model: GenerativeModel, train: Mapping[str, Any], binarization: str, summary: Mapping[str, Any],
            history: list[dict[str, float]], example: tuple[np.ndarray, np.ndarray], out: Path, history_csv: Path,
            model_name: str) -> str:
    """Write the curves and the model folder (``model.pt``, ``run.json``), log them to the active
    run and register the model; returns the new version. ``example``: two validation images and
    their labels (sent with the example only for a conditional model)."""
    import mlflow
    import pandas as pd

    active = mlflow.active_run()
    # Weights and curves are on disk (checkpoint phase "trained", history CSV) before the
    # registry is touched: a failure from here on is retried without retraining.
    with atomic_file(history_csv) as tmp_csv:
        pd.DataFrame(history).to_csv(tmp_csv, index=False)
    mlflow.log_artifact(str(history_csv))
    with atomic_dir(out) as tmp:
        ckpt.save_model(tmp / CHECKPOINT_FILE, model, train=dict(train), binarization=binarization, summary=summary)
        images, labels = example
        version = log_model(tmp / CHECKPOINT_FILE, images, model_name,
                            {"labels": [int(v) for v in labels]} if model.conditional else None)
        write_json(tmp / RUN_FILE, {
            "run_id": active.info.run_id, "run_name": mlflow.get_run(active.info.run_id).info.run_name,
            "experiment_id": active.info.experiment_id, "tracking_uri": mlflow.get_tracking_uri(),
            "model_name": model_name, "model_version": version, **summary,
        })
    return version


#: metrics copied onto the registered version's tags, for the registry page
VERSION_TAG_METRICS = ("test_nll_iwae", "test_nll_elbo", "test_fcd")


def tag_evaluation(run_info: Mapping[str, Any], evaluation_run_id: str, identity: Mapping[str, str],
                   metrics: Mapping[str, float]) -> None:
    """Tag the registered version the train stage recorded in ``run_info`` with its latest
    evaluation: the run, the test set's identity and the headline metrics."""
    import mlflow

    version = run_info.get("model_version")
    if not version:
        return
    mlflow_client = mlflow.MlflowClient()
    tags = {EVALUATION_TAG: evaluation_run_id,
            **{f"{TEST_SET_PREFIX}{k}": v for k, v in identity.items()},
            **{k: f"{metrics[k]:.4f}" for k in VERSION_TAG_METRICS if k in metrics}}
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(run_info["model_name"], version, key, value)
