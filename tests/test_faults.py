"""Faults in team mode, each with its invariant: PostgreSQL restarted in the middle of a shared
tuning study, and the tracking server stopped in the middle of a training run. The servers are
the real ones of :mod:`rnngen.server` (conftest's ``team``: this module gets servers of its own,
so its tests run beside ``test_team_server.py``'s)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, copy_project, study_trials, team_env, tiny_params
from rnngen import postgres, server, tuning
from rnngen.tuning import workers
from test_pipeline import BIN

pytestmark = pytest.mark.e2e


def trial_states(pg: server.Postgres, database: str) -> dict[str, int]:
    """How many of the study's trials are in each state, read with plain SQL on one short
    connection (an Optuna storage would open a pool of them)."""
    with contextlib.closing(pg.connect(database)) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('trials') IS NOT NULL")
        if not cur.fetchone()[0]:
            return {}
        cur.execute("SELECT state::text, count(*) FROM trials GROUP BY state")
        return dict(cur.fetchall())


def test_postgresql_restarted_mid_study_loses_and_doubles_no_trial(
    team: tuple[server.Postgres, server.MlflowServer, Path], tmp_path: Path, split_dir: Path
) -> None:
    """Two tune workers share a study on PostgreSQL; once a trial has finished and another is
    running, PostgreSQL stops (fast: every open connection is cut) and starts again 5 s later.
    The study still ends with exactly the asked 6 trials counted, none lost or counted twice, and
    the stage's winner is the best of those trials."""
    import yaml

    pg, ml, _ = team
    postgres.create_databases(pg, ("optuna_restart",))
    url = pg.url("optuna_restart")
    params = tiny_params(**{"tune.n_trials": 6, "tune.workers": 2, "tune.threads": 1, "tune.pruner": "none",
                            "tune.hidden": [8, 16], "tune.epochs": 3, "tune.train_images": 0, "tune.heartbeat_s": 1,
                            "tune.stale_after_s": 10, "tracking.experiment": "restart"})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, **team_env(pg, ml), "RNNGEN_OPTUNA_STORAGE": url, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, str(ROOT / "pipeline/tune.py"), "--params", str(tmp_path / "params.yaml"),
                             "--split", str(split_dir), "--study-dir", str(tmp_path / "study"),
                             "--out", str(tmp_path / "best.json")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, states = time.monotonic() + 300, {}
    while proc.poll() is None and time.monotonic() < deadline and not (states.get("COMPLETE")
                                                                        and states.get("RUNNING")):
        time.sleep(0.2)
        states = trial_states(pg, "optuna_restart")
    assert proc.poll() is None, f"the study ended before PostgreSQL could be restarted:\n{proc.communicate()[0]}"
    pg.stop()
    time.sleep(5)  # heartbeats every second: some meet no database
    postgres.start_postgres(pg.folder, pg.port, databases=(), secrets=pg.secrets)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, f"{out[-6000:]}\nPostgreSQL's log:\n{pg.log.read_text()[-3000:]}"

    trials = study_trials(url)
    assert tuning.budget_used(trials) == (6, 0), [(t.number, t.state.name) for t in trials]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 6, [(t.number, t.state.name, t.user_attrs.get("error")) for t in trials]  # none lost
    # a trial cut off by the restart failed and ran again, with the values it had drawn (none, if
    # the cut came before its first draw reached the database)
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert {t.number for t in failed} <= workers.retried(trials), [(t.number, t.state.name) for t in trials]
    assert all(any(c.params == f.params for c in complete) for f in failed if f.params)
    result = json.loads((tmp_path / "best.json").read_text())
    assert result["best_trial"] == min(complete, key=lambda t: t.value).number


def test_the_tracking_server_stopped_mid_training_loses_and_doubles_nothing(
    team: tuple[server.Postgres, server.MlflowServer, Path], tmp_path: Path
) -> None:
    """`dvc repro train` (download, split, tune, train) runs against the team's tracking server;
    after epoch 2 the server is stopped for 30 s, then started again. MLflow's client retries with
    backoff (MLFLOW_HTTP_REQUEST_MAX_RETRIES), so training waits and goes on: every epoch logged
    exactly once, the run FINISHED, and the weights and curves equal those of the same run never
    interrupted (run beside it)."""
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
