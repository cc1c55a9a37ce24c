"""Data-parallel training through the real entry point: ``train.processes: 2`` makes
``pipeline/train.py`` run itself under torchrun (2 gloo processes on CPU). Same global batch,
same loss curve as one process; a checkpoint written by 2 ranks resumes in 1 process and the
other way round, to the same curve. PixelRNN: no sampling noise in its loss, so the curves of
1 and 2 processes agree to float tolerance (the VAEs draw their reparameterisation noise per
rank, which changes the curve like another seed would)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from conftest import ROOT, tiny_params

pytestmark = pytest.mark.e2e
#: float rounding differs between one sum over the batch and two sums all-reduced; training
#: amplifies it (Adam), so the curves are compared over a short horizon at a modest lr
EPOCHS = 3


def params_file(folder: Path, processes: int) -> Path:
    # unconditional: a conditional model's label dropout is drawn per rank, which moves the curve as a seed would
    params = tiny_params(**{"model.name": "pixelrnn", "model.pixelrnn.conditional": False, "train.processes": processes,
                            "train.epochs": EPOCHS, "train.lr": 1e-3, "train.patience": 10, "train.batch_size": 64,
                            "tune.n_trials": 0})
    path = folder / f"params{processes}.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def train_cmd(folder: Path, params: Path, split_dir: Path) -> list[str]:
    return [sys.executable, str(ROOT / "pipeline/train.py"), "--params", str(params), "--split", str(split_dir),
            "--out", str(folder / "models"), "--checkpoint", str(folder / "train.pt"),
            "--history", str(folder / "history.csv")]


def env_for(folder: Path) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
    env.pop("WORLD_SIZE", None)
    return env


def train(folder: Path, processes: int, split_dir: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    params = params_file(folder, processes)
    proc = subprocess.run(train_cmd(folder, params, split_dir), env=env_for(folder), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def kill_after_first_epoch(folder: Path, processes: int, split_dir: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    params = params_file(folder, processes)
    proc = subprocess.Popen(train_cmd(folder, params, split_dir), env=env_for(folder), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while epoch_of(folder / "train.pt") < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 1 <= epoch_of(folder / "train.pt") < EPOCHS


def epoch_of(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True)["epoch"])
    except Exception:  # not written yet, or mid-rename
        return 0


def curve(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "history.csv")[["epoch", "train_loss", "val_loss"]]


def assert_same_curve(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.epoch) == list(b.epoch) == list(range(1, EPOCHS + 1))
    for key in ("train_loss", "val_loss"):
        assert a[key].to_numpy() == pytest.approx(b[key].to_numpy(), rel=1e-4), key


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory, split_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("one")
    train(folder, 1, split_dir)
    return folder


def test_two_processes_give_the_loss_curve_of_one(one_process: Path, tmp_path: Path, split_dir: Path) -> None:
    out = train(tmp_path, 2, split_dir)
    assert_same_curve(curve(tmp_path), curve(one_process))
    # rank 0 alone logged: one training run, one model version, one line per epoch
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("rnngen").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [str(v.version) for v in client.search_model_versions("name='rnngen'")] == ["1"]
    assert out.count("registered rnngen version 1") == 1 and out.count("epoch   1  train") == 1


@pytest.mark.parametrize(("killed", "resumed"), [(2, 1), (1, 2)])
def test_a_checkpoint_resumes_with_another_number_of_processes(
    killed: int, resumed: int, one_process: Path, tmp_path: Path, split_dir: Path
) -> None:
    kill_after_first_epoch(tmp_path, killed, split_dir)
    out = train(tmp_path, resumed, split_dir)
    assert "resuming checkpoint" in out, out
    assert_same_curve(curve(tmp_path), curve(one_process))
