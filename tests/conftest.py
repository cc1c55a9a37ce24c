"""Shared fixtures: real data, real stores, tiny settings."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

# Bind every stage module as an attribute of rnngen.stages (its __init__ imports none of them,
# so that each stage's import closure stays its own): tests call stages.<name>.run(...).
import rnngen.stages.classifier
import rnngen.stages.download
import rnngen.stages.evaluate
import rnngen.stages.split
import rnngen.stages.train  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


def tiny_params(**overrides: Any) -> dict[str, Any]:
    """params.yaml with settings small enough for a CPU test, plus dotted overrides."""
    from rnngen.config import load_params, set_dotted

    params = copy.deepcopy(load_params(ROOT / "params.yaml"))
    small = {
        # the pipeline's mechanics on the quickest model, in fp32, without a time limit;
        # test_models_e2e runs every model through every stage
        "model.name": "row_lstm_vae",
        "train.amp": False,
        "train.time_budget_s": 0,
        "train.lr": 0.003,
        "train.lr_schedule": "constant",
        "model.row_lstm_vae.hidden": 16,
        "model.row_lstm_vae.z_dim": 4,
        "model.mlp_vae.hidden": 16,
        "model.mlp_vae.z_dim": 4,
        "model.draw.steps": 3,
        "model.draw.enc_hidden": 16,
        "model.draw.dec_hidden": 16,
        "model.draw.z_dim": 4,
        "model.pixelrnn.layers": 1,
        "model.pixelrnn.hidden": 4,
        "model.pixelrnn.out_hidden": 8,
        "model.dcgan.hidden": 8,
        "model.dcgan.z_dim": 8,
        "train.epochs": 2,
        "train.batch_size": 128,
        "train.device": "cpu",
        "evaluate.k": 4,
        "evaluate.n_samples": 16,
        "evaluate.max_images": 100,
        "evaluate.n_quality": 50,
        "evaluate.inpaint_images": 20,
        "evaluate.inpaint_effort": 2,
        "classifier.epochs": 1,
        # a real but tiny search whose choices equal the tiny values above
        "tune.n_trials": 2, "tune.epochs": 1, "tune.train_images": 200,
        "tune.hidden": [16], "tune.batch_size": [128], "tune.device": "cpu",
    }
    return set_dotted(params, {**small, **overrides})


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test` runs two workers on two cores) every worker, and each
    process its tests start, computes on one thread: two workers whose OpenMP teams each want
    both cores wait on each other's spinning threads and run several times slower."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def built_kernels() -> None:
    """Build rnngen's C++ kernels once, here, before any test starts a process that loads them:
    processes that would start at once (torchrun ranks, tune workers) then find them built."""
    import torch

    from rnngen.models import kernels

    for name in ("row_lstm", "diagonal_bilstm", "lstm_cell", "pixelrnn_sampler"):
        kernels.ops(name, torch.zeros(1))


@pytest.fixture(scope="session")
def split_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded MNIST digits, downloaded and split by the real stage functions."""
    from rnngen import stages

    base = tmp_path_factory.mktemp("data")
    params = tiny_params()
    stages.download.run(params, base / "raw")
    stages.split.run(params, base / "raw", base / "split")
    return base / "split"


@pytest.fixture()
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh sqlite MLflow store for one test (exported, so subprocesses use it too)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory, split_dir: Path) -> dict[str, Any]:
    """One tiny row-LSTM VAE trained, registered and evaluated through the real stages.

    Returns paths and the tracking URI; tests must not change this store's registry
    (make a copy of ``mlflow.db`` for that).
    """
    import os

    from rnngen import stages

    base = tmp_path_factory.mktemp("trained")
    uri = f"sqlite:///{base / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        params = tiny_params()
        stages.train.run(params, split_dir, None, base / "models", base / "ckpt" / "train.pt",
                     base / "reports" / "history.csv")
        stages.classifier.run(params, split_dir, base / "classifier")
        stages.evaluate.run(params, base / "models", split_dir, base / "classifier", base / "reports" / "metrics.json",
                        base / "reports" / "pictures")
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    return {"dir": base, "uri": uri, "models": base / "models", "split": split_dir,
            "classifier": base / "classifier",
            "metrics": base / "reports" / "metrics.json"}


def copy_project(dest: Path, params: dict[str, Any] | None = None) -> Path:
    """A fresh git+DVC repo holding this project's tracked and untracked (not ignored) files."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in files:
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for generated in ("dvc.lock",):
        (dest / generated).unlink(missing_ok=True)
    if params is not None:
        (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=dest, check=True)
    return dest


@pytest.fixture(scope="module")
def team() -> Iterator[tuple[Any, Any, Path]]:
    """A team's servers for the module: PostgreSQL (Debian's, a fresh cluster in a temporary
    folder on a free loopback port) and ``mlflow server`` on it with authentication, both
    started by :func:`rnngen.server.team_servers` as ``rnngen server`` starts them; this
    process's MLflow and Optuna clients point at them."""
    from rnngen import postgres, server

    if postgres.postgres_bin("initdb") is None:
        pytest.skip("the PostgreSQL server is not installed (apt-get install postgresql; .ci/run installs it)")
    pytest.importorskip("psycopg2", reason="the PostgreSQL driver: pip install -e '.[server]'")
    # Not under pytest's tmp_path: as root the cluster runs as the postgres user, who cannot
    # enter pytest's 0700 folders.
    folder = Path(tempfile.mkdtemp(prefix="rnngen-team-"))
    folder.chmod(0o755)
    try:
        with server.team_servers(folder, server.free_port(), server.free_port()) as (pg, ml):
            # this process's MLflow and Optuna clients read the credentials from the environment
            with mock.patch.dict(os.environ, {**pg.client_env(), **ml.client_env()}):
                yield pg, ml, folder
        assert not (pg.data / "postmaster.pid").exists(), "PostgreSQL was not stopped"
        assert ml.process.poll() is not None, "mlflow server was not stopped"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def team_env(pg: Any, ml: Any) -> dict[str, str]:
    return {**pg.client_env(), **ml.client_env(), "RNNGEN_OPTUNA_STORAGE": pg.url("optuna")}


def study_trials(url: str) -> list:
    """Every trial, in any state, of the studies in the Optuna database ``url``."""
    import optuna

    storage = optuna.storages.RDBStorage(url)
    try:
        names = optuna.study.get_all_study_names(storage)
        return [t for name in names for t in optuna.load_study(study_name=name, storage=storage).get_trials()]
    finally:
        storage.engine.dispose()  # its pooled connections, now: PostgreSQL allows 100
