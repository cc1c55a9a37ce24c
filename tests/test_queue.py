"""Queued experiments: two `dvc exp run --queue -S ...`, then `dvc queue start -j 2`. Both finish,
both log to the project's one MLflow store (the temporary workspaces climb out of
.dvc/tmp/exps) without lock errors, and both show in `dvc exp show`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import copy_project, tiny_params
from test_pipeline import BIN, client_of, run

pytestmark = pytest.mark.e2e


def queue_states(repo: Path) -> dict[str, str]:
    """``{experiment name: status}`` from `dvc queue status`."""
    out = run([str(BIN / "dvc"), "queue", "status"], repo).stdout
    rows = [line.split() for line in out.splitlines()[1:] if line.strip() and not line.startswith("Worker")]
    return {row[1]: row[-1] for row in rows if len(row) >= 4}


def test_two_queued_experiments_run_in_parallel_and_log_to_one_store(tmp_path: Path) -> None:
    repo = copy_project(tmp_path / "repo", tiny_params(**{"tune.n_trials": 0}))
    dvc = str(BIN / "dvc")
    run([dvc, "repro"], repo)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    run([*git, "add", "-A"], repo)
    run([*git, "commit", "-qm", "baseline"], repo)
    for lr in ("0.002", "0.004"):
        run([dvc, "exp", "run", "--queue", "-S", f"train.lr={lr}"], repo)
    assert sorted(queue_states(repo).values()) == ["Queued", "Queued"]

    run([dvc, "queue", "start", "-j", "2"], repo)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        states = queue_states(repo)
        if not {"Queued", "Running"} & set(states.values()):
            break
        time.sleep(2)
    assert sorted(states.values()) == ["Success", "Success"], states

    shown = json.loads(run([dvc, "exp", "show", "--json"], repo).stdout)
    names = {exp.get("name") for commit in shown for exp in commit.get("experiments") or []}
    assert set(states) <= names, (states, names)

    client = client_of(repo)  # the project's own store: <repo>/mlflow.db
    runs = client.search_runs([client.get_experiment_by_name("rnngen").experiment_id])
    training = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.data.params["train.lr"] for r in training) == ["0.002", "0.003", "0.004"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert sorted(int(v.version) for v in client.search_model_versions("name='rnngen'")) == [1, 2, 3]
