"""Faults in team mode, with their invariant: the tracking server stopped in the middle of a
training run. The servers are
the real ones of :mod:`rnngen.server` (conftest's ``team``: this module gets servers of its own,
so its tests run beside ``test_team_server.py``'s)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import copy_project, team_env, tiny_params
from rnngen import server
from test_pipeline import BIN

pytestmark = pytest.mark.e2e


def test_the_tracking_server_stopped_mid_training_loses_and_doubles_nothing(
    team: tuple[server.Postgres, server.MlflowServer, Path], tmp_path: Path
) -> None:
    """`dvc repro train` (download, split, tune, train) runs against the team's tracking server;
    after epoch 2 the server is stopped for 30 s, then started again. MLflow's client retries with
    backoff (MLFLOW_HTTP_REQUEST_MAX_RETRIES), so training waits and goes on: every epoch logged
    exactly once, the run FINISHED, and the weights and curves equal those of the same run never
    interrupted (run beside it)."""
    import time

    import torch
    from mlflow import MlflowClient

    pg, ml, _ = team
    params = tiny_params(**{"train.epochs": 6, "train.patience": 20, "tune.n_trials": 0})
    runs = {}
    for name in ("blinked", "steady"):
        repo = copy_project(tmp_path / name, {**params, "tracking": {**params["tracking"], "experiment": name}})
        env = {**os.environ, **team_env(pg, ml), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
               "PYTHONPATH": str(repo / "src")}
        runs[name] = (repo, subprocess.Popen([str(BIN / "dvc"), "repro", "train"], cwd=repo, env=env, text=True,
                                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    checkpoint = runs["blinked"][0] / "checkpoints/train.pt"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and runs["blinked"][1].poll() is None:
        with contextlib.suppress(Exception):  # not written yet, or mid-rename
            if torch.load(checkpoint, weights_only=True)["epoch"] >= 2:
                break
        time.sleep(0.05)
    assert runs["blinked"][1].poll() is None, "training ended before the server could be stopped"
    ml.stop()
    time.sleep(30)
    ml.start()
    for name, (_, proc) in runs.items():
        out = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, f"{name}:\n{out[-6000:]}"

    client = MlflowClient(ml.url)
    curves, weights = {}, {}
    for name, (repo, _) in runs.items():
        run_id = json.loads((repo / "models/run.json").read_text())["run_id"]
        assert client.get_run(run_id).info.status == "FINISHED"
        history = client.get_metric_history(run_id, "val_loss")
        assert sorted(m.step for m in history) == list(range(1, 7)), (name, history)  # each epoch once
        curves[name] = [m.value for m in sorted(history, key=lambda m: m.step)]
        weights[name] = torch.load(repo / "models/model.pt", weights_only=True)["weights"]
    assert curves["blinked"] == curves["steady"]
    assert all(torch.equal(weights["blinked"][k], weights["steady"][k]) for k in weights["steady"])
