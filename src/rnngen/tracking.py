"""MLflow at the edges: where the store is, checking it before compute, and run bookkeeping.

Default store: ``sqlite:///<project root>/mlflow.db`` (absolute, so DVC's temporary
experiments log to the same place); ``MLFLOW_TRACKING_URI`` overrides.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rnngen.config import to_flat_dict
from rnngen.credentials import redact_url
from rnngen.errors import UserError
from rnngen.files import find_project_root

#: the MLflow UI opens experiments of this kind in its model-training view
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def tuning_experiment(experiment: str) -> str:
    """The experiment that holds a search's runs beside the training runs of ``experiment``."""
    return f"{experiment}-tune"


class TrackingError(UserError, RuntimeError):
    """The tracking store cannot be used; the message names the URI."""


@dataclass(frozen=True)
class TrackingConfig:
    #: MLflow experiment that holds the training runs
    experiment: str = "rnngen"
    #: registered model name in the MLflow model registry
    model_name: str = "rnngen"

    def problems(self) -> list[str]:
        return [f"{k}: must not be empty" for k, v in vars(self).items() if not v.strip()]


def default_uri(root: str | Path | None = None) -> str:
    return f"sqlite:///{(Path(root) if root else find_project_root()).resolve() / 'mlflow.db'}"


def tracking_uri(root: str | Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI``, else the project's sqlite store. A URI with a password is refused:
    run records and logs keep the URI."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or default_uri(root)
    if redact_url(uri) != uri:
        raise TrackingError(f"MLFLOW_TRACKING_URI {redact_url(uri)} carries a password, which run records and "
                            "logs would keep; export MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead")
    return uri


def check_store(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any compute, when the store at ``uri`` cannot be reached."""
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise TrackingError(f"tracking store {uri}: folder {folder} is missing or not writable")
    elif uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
                if resp.status != 200:
                    raise TrackingError(f"tracking server {uri} answered {resp.status} on /health")
        except (urllib.error.URLError, OSError) as exc:
            raise TrackingError(
                f"tracking server {uri} is unreachable ({exc}); start it (mlflow server) or "
                "unset MLFLOW_TRACKING_URI to use the local sqlite store"
            ) from exc
    elif uri.startswith(("postgresql", "mysql", "mssql", "databricks", "file:")) or "://" not in uri:
        return  # MLflow reports these itself on first use
    else:
        raise TrackingError(f"tracking URI {uri!r} has an unknown scheme; use sqlite:///, http(s)://")


def setup(experiment: str, uri: str | None = None) -> str:
    """Point MLflow at ``uri`` (checked) and the experiment; return the experiment id."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = uri or tracking_uri()
    check_store(uri)
    mlflow.set_tracking_uri(uri)
    with _init_lock(uri):
        client = mlflow.MlflowClient()  # first use creates/migrates the sqlite schema
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            try:
                return _use(client.create_experiment(
                    experiment, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}, artifact_location=_artifact_root(uri)))
            except MlflowException as exc:
                # another process (a tune worker, a teammate) created it since we looked: no
                # lock spans processes on other hosts, so the server's uniqueness decides
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                exp = client.get_experiment_by_name(experiment)
        if exp.tags.get(EXPERIMENT_KIND_TAG) is None:
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return _use(exp.experiment_id)


def _use(exp_id: str) -> str:
    import mlflow

    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def _init_lock(uri: str) -> contextlib.AbstractContextManager[Any]:
    """Serialise schema creation and experiment creation on a local sqlite store.

    Two processes opening a fresh ``mlflow.db`` at once both run MLflow's migrations and
    one fails ("duplicate column name"); later writes are safe under sqlite's own locking.
    """
    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    from filelock import FileLock

    return FileLock(uri.removeprefix("sqlite:///") + ".lock", timeout=120)


def _artifact_root(uri: str) -> str | None:
    """Artifacts beside a local sqlite store (``<folder>/mlartifacts``), not in the cwd."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()


@contextlib.contextmanager
def run(run_id: str | None = None, **kwargs: Any) -> Iterator[Any]:
    """``mlflow.start_run`` that marks the run FAILED on any exception (KILLED on Ctrl-C)."""
    import mlflow

    active = mlflow.start_run(run_id=run_id, **kwargs)
    try:
        yield active
    except KeyboardInterrupt:
        mlflow.end_run(status="KILLED")
        raise
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run()


def live_run(run_id: str | None) -> str | None:
    """``run_id`` when that run exists, not deleted, in the current store; else None (the
    caller starts a new run)."""
    if not run_id:
        return None
    import mlflow

    try:
        found = mlflow.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None
    return run_id if found.info.lifecycle_stage == "active" else None


def mark_killed(run_id: str | None) -> bool:
    """Mark a run whose process died or that will never be resumed KILLED, so it does not stay
    RUNNING in the UI forever. True when a RUNNING run was marked; a run in another store (another
    machine's) or one already ended is left alone."""
    if not run_id:
        return False
    import mlflow

    client = mlflow.MlflowClient()
    try:
        if client.get_run(run_id).info.status != "RUNNING":
            return False
        client.set_terminated(run_id, status="KILLED")
    except mlflow.exceptions.MlflowException:
        return False
    return True


def git_state(cwd: str | Path | None = None) -> dict[str, str]:
    """``git_commit`` (HEAD of the repo the stage runs in: a DVC experiment's own commit, not
    the baseline's) and ``git_dirty`` ("true" when tracked code under ``src/`` or
    ``pipeline/`` differs from it; outputs and params are DVC's to track); "unknown" outside
    a git repo. The exact code is in the ``source_sha256`` tag either way."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd or Path.cwd(), capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ":/src", ":/pipeline"))
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    return {"git_commit": commit, "git_dirty": str(dirty).lower()}


# ------------------------------------------------------------------- what a training run logs


def training_params(model_name: str, model: Any, train: Any, info: Mapping[str, Any], overrides: Mapping[str, Any],
                    replaced: Mapping[str, tuple[Any, Any]], warm_start_epochs: int) -> dict[str, Any]:
    """A training run's params: the model's and train's settings, the data, what the tuner set
    (``params_yaml.<key>``: params.yaml's value it replaced)."""
    return {
        **{f"model.{k}": v for k, v in to_flat_dict(model.config).items()},
        "model.name": model_name,
        "model.parameters": sum(p.numel() for p in model.parameters()),
        **{f"train.{k}": v for k, v in to_flat_dict(train).items()},
        "data.dataset": info["dataset"], "data.source": info["source"],
        "split.binarization": info["binarization"], "split.seed": info["seed"],
        **{f"split.n_{k}": v for k, v in info["counts"].items()},
        "tuned": ",".join(sorted(overrides)) or "none",
        "warm_start_epochs": warm_start_epochs,
        **{f"params_yaml.{k}": mine for k, (mine, _) in replaced.items()},
    }


def training_tags(model_name: str, info: Mapping[str, Any], identity: Mapping[str, str], device: Any) -> dict[str, str]:
    """A training run's tags: the code (git and its digest), the data, the device."""
    return {
        **git_state(),
        "source_sha256": identity["code"],
        "data_sha256": identity["data"],
        "data_manifest_sha256": info["manifest_sha256"],
        "model": model_name,
        "device": str(device),
    }


def run_name(model_name: str, model: Any, train: Any, data_sha256: str) -> str:
    """``row_lstm_vae hidden=64 lr=0.0012 bs=64 data=3f2a1c9``: runs told apart in the UI list."""
    sizes = " ".join(f"{f}={getattr(model.config, f)}" for f in model.hidden_fields)
    return f"{model_name} {sizes} lr={train.lr:.2g} bs={train.batch_size} data={data_sha256[:7]}"


def close_abandoned(state: Mapping[str, Any] | None) -> None:
    """An interrupted run that will not be resumed (its checkpoint's fingerprint no longer
    matches) is marked KILLED, so it does not stay RUNNING in the UI forever."""
    state = state or {}
    old = live_run(state.get("mlflow_run_id")) if state.get("phase") == "training" else None
    if mark_killed(old):
        print(f"run {old} (interrupted, other settings) marked KILLED; this one starts a new run")


def log_pictures(folder: Path) -> None:
    """Every file in ``folder`` as an artifact under ``pictures/``; PNGs also as images over
    steps, for the UI's chart view."""
    import mlflow
    from PIL import Image

    for path in sorted(folder.iterdir()):
        mlflow.log_artifact(str(path), artifact_path="pictures")
        if path.suffix == ".png":
            with Image.open(path) as im:
                mlflow.log_image(im.convert("RGB"), key=path.stem, step=0)


def log_fit(result: Any) -> dict[str, Any]:
    """Tag and log a finished :func:`rnngen.train.fit` on the active run; its summary, which the
    train stage writes to ``run.json`` and the checkpoint."""
    import mlflow

    mlflow.set_tags({"resumed_from_epoch": str(result.resumed_from),
                     "reused_finished_training": str(result.reused).lower()})
    mlflow.log_metrics({"best_val_loss": result.best_val, "best_epoch": result.best_epoch})
    return {
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "resumed_from_epoch": result.resumed_from,
        "reused_finished_training": result.reused,
        "train_seconds": sum(h["epoch_seconds"] for h in result.history),
    }
