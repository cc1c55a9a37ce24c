"""Failures that lose nothing: SIGKILL mid-training resumes to the same result, runs end
FAILED instead of RUNNING, stores fail fast, and concurrent processes share one store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from conftest import copy_project, tiny_params
from rnngen import stages
from rnngen.tracking import TrackingError
from rnngen.train import NonFiniteLossError
from test_pipeline import BIN, run, stages_run

KILL_PARAMS = {"train.epochs": 4, "train.patience": 10, "tune.n_trials": 0}


def _checkpoint_epoch(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True)["epoch"])
    except Exception:  # not written yet, or mid-rename
        return 0


def background_repro(repo: Path, output: Any) -> subprocess.Popen:
    """`dvc repro` started in ``repo`` (its own process group, its own store) and left running,
    its output to ``output`` (a file, or DEVNULL)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(repo / "src")}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([str(BIN / "dvc"), "repro"], cwd=repo, env=env, start_new_session=True,
                            stdout=output, stderr=subprocess.STDOUT, text=True)


def kill_after_two_epochs(repo: Path) -> Path:
    """Start `dvc repro` in ``repo`` and SIGKILL it (dvc and the stage, the whole process group)
    once the train checkpoint holds epoch 2; returns the checkpoint's path."""
    proc = background_repro(repo, subprocess.DEVNULL)
    ckpt_file = repo / "checkpoints/train.pt"
    deadline = time.monotonic() + 300
    while _checkpoint_epoch(ckpt_file) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed; raise train.epochs"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return ckpt_file


@pytest.mark.e2e
def test_sigkill_mid_training_resumes_to_identical_results(tmp_path: Path) -> None:
    params = tiny_params(**KILL_PARAMS)
    clean = copy_project(tmp_path / "clean", params)
    log = tmp_path / "clean.log"
    never_killed = background_repro(clean, log.open("w"))  # the reference run, beside the killed one

    killed = copy_project(tmp_path / "killed", params)
    ckpt_file = kill_after_two_epochs(killed)
    assert _checkpoint_epoch(ckpt_file) in (2, 3)

    again = run([str(BIN / "dvc"), "repro"], killed)
    assert never_killed.wait(timeout=600) == 0, log.read_text()
    ran = stages_run(again.stdout)
    assert ran[0] == "train" and "evaluate" in ran and "download" not in ran  # classifier may not have run yet
    assert "resuming checkpoint checkpoints/train.pt after epoch" in again.stdout
    # Same final metrics, byte for byte, as the run that was never interrupted.
    assert (killed / "reports/metrics.json").read_bytes() == (clean / "reports/metrics.json").read_bytes()
    a = torch.load(clean / "models/model.pt", weights_only=True)["weights"]
    b = torch.load(killed / "models/model.pt", weights_only=True)["weights"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # ...and the resumed run continued the same MLflow run: one run, FINISHED, 4 epochs of curves.
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{killed.resolve() / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("rnngen").experiment_id])
    runs = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]  # not the evaluation runs
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["resumed_from_epoch"] in ("2", "3")
    assert json.loads((killed / "models/run.json").read_text())["resumed_from_epoch"] in (2, 3)
    steps = sorted({m.step for m in client.get_metric_history(runs[0].info.run_id, "val_loss")})
    assert steps == [1, 2, 3, 4]


@pytest.mark.e2e
def test_sigkill_then_a_param_change_trains_into_a_new_run(tmp_path: Path) -> None:
    """Killed mid-training, then train.epochs changed: the checkpoint is not resumed, a new run
    holds the new params, the interrupted run is marked KILLED (not left RUNNING)."""
    from mlflow import MlflowClient

    killed = copy_project(tmp_path / "killed", tiny_params(**KILL_PARAMS))
    ckpt_file = kill_after_two_epochs(killed)
    old_run = torch.load(ckpt_file, weights_only=True)["mlflow_run_id"]

    params = yaml.safe_load((killed / "params.yaml").read_text())
    params["train"]["epochs"] = 3
    (killed / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    again = run([str(BIN / "dvc"), "repro"], killed)
    assert "was written with other train: training from epoch 1" in again.stdout
    assert "resuming" not in again.stdout
    record = json.loads((killed / "models/run.json").read_text())
    assert record["run_id"] != old_run and record["resumed_from_epoch"] == 0 and record["epochs_run"] == 3
    client = MlflowClient(f"sqlite:///{killed.resolve() / 'mlflow.db'}")
    new = client.get_run(record["run_id"])
    assert new.data.params["train.epochs"] == "3"
    assert [m.step for m in client.get_metric_history(new.info.run_id, "val_loss")] == [1, 2, 3]
    assert client.get_run(old_run).info.status == "KILLED"


@pytest.mark.e2e
def test_a_full_disk_stops_training_with_a_sentence_and_the_rerun_finishes(tmp_path: Path) -> None:
    """The disk fills while a checkpoint is written (a real file-size limit, RLIMIT_FSIZE, on
    `dvc repro`): the stage stops with a sentence, no traceback; the previous checkpoint is intact,
    byte for byte, and loads; no temporary file is left. With room again the rerun resumes it and
    finishes: every epoch in the curves, none with two different values."""
    import resource

    from mlflow import MlflowClient

    from rnngen import checkpoint as ckpt

    # a model whose checkpoint (about 8 MB) dwarfs every other file the stage writes
    big = {**KILL_PARAMS, "train.epochs": 6, "model.name": "mlp_vae", "model.mlp_vae.hidden": 400}
    repo = copy_project(tmp_path / "full", tiny_params(**big))
    ckpt_file = kill_after_two_epochs(repo)
    before, epoch = ckpt_file.read_bytes(), _checkpoint_epoch(ckpt_file)
    limit = len(before) // 2
    assert (repo / "mlflow.db").stat().st_size < limit // 4, "the store would meet the limit before the checkpoint"

    def file_size_limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(repo / "src")}
    env.pop("MLFLOW_TRACKING_URI", None)
    full = subprocess.run([str(BIN / "dvc"), "repro"], cwd=repo, env=env, capture_output=True, text=True,
                          preexec_fn=file_size_limit, timeout=600)
    said = full.stdout + full.stderr
    assert full.returncode != 0, said
    assert "error: could not write" in said and "checkpoints/train.pt" in said and "Traceback" not in said, said
    assert ckpt_file.read_bytes() == before and ckpt.load(ckpt_file)["epoch"] == epoch
    assert [p.name for p in ckpt_file.parent.iterdir()] == ["train.pt"]  # no temporary file left
    client = MlflowClient(f"sqlite:///{repo.resolve() / 'mlflow.db'}")
    run_id = ckpt.load(ckpt_file)["mlflow_run_id"]
    assert client.get_run(run_id).info.status == "FAILED"  # not left looking finished, nor running

    again = run([str(BIN / "dvc"), "repro"], repo)
    assert f"resuming checkpoint checkpoints/train.pt after epoch {epoch}" in again.stdout
    record = json.loads((repo / "models/run.json").read_text())
    assert record["run_id"] == run_id and client.get_run(run_id).info.status == "FINISHED"
    history = client.get_metric_history(record["run_id"], "val_loss")
    assert sorted({m.step for m in history}) == list(range(1, 7))
    for step in range(1, 7):  # an epoch logged before the failed write is logged again, with the same value
        assert len({m.value for m in history if m.step == step}) == 1, step


def test_non_finite_loss_marks_the_run_failed(tmp_path: Path, mlflow_uri: str, split_dir: Path) -> None:
    from mlflow import MlflowClient

    params = tiny_params(**{"train.lr": 1e6, "train.grad_clip": 0.0})
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step \d+.*train.lr"):
        stages.train.run(params, split_dir, None, tmp_path / "models", tmp_path / "ck.pt", tmp_path / "h.csv")
    client = MlflowClient(mlflow_uri)
    (run_,) = client.search_runs([client.get_experiment_by_name("rnngen").experiment_id])
    assert run_.info.status == "FAILED"
    assert not (tmp_path / "models").exists()


def test_any_exception_marks_the_run_failed(tmp_path: Path, mlflow_uri: str, split_dir: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    def broken_fit(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(stages.train, "fit", broken_fit)
    with pytest.raises(OSError, match="disk full"):
        stages.train.run(tiny_params(), split_dir, None, tmp_path / "models", tmp_path / "ck.pt", tmp_path / "h.csv")
    client = MlflowClient(mlflow_uri)
    (run_,) = client.search_runs([client.get_experiment_by_name("rnngen").experiment_id])
    assert run_.info.status == "FAILED"


def test_unreachable_tracking_server_fails_before_training(tmp_path: Path, split_dir: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    start = time.monotonic()
    with pytest.raises(TrackingError, match=r"http://127.0.0.1:9 is unreachable"):
        stages.train.run(tiny_params(), split_dir, None, tmp_path / "models", tmp_path / "ck.pt", tmp_path / "h.csv")
    assert time.monotonic() - start < 30
    assert not (tmp_path / "ck.pt").exists() and not (tmp_path / "models").exists()


def test_wrong_tracking_uri_names_the_uri(tmp_path: Path, split_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/no/such/folder/mlflow.db")
    with pytest.raises(TrackingError, match="no/such/folder"):
        stages.train.run(tiny_params(), split_dir, None, tmp_path / "models", tmp_path / "ck.pt", tmp_path / "h.csv")


WRITER = textwrap.dedent("""
    import sys, mlflow
    from rnngen import tracking
    tracking.setup("shared")
    with tracking.run(run_name=sys.argv[1]):
        mlflow.log_params({f"p{i}": i for i in range(10)})
        for step in range(60):
            mlflow.log_metric("m", step, step=step)
    print("done")
""")


def test_two_processes_share_a_fresh_sqlite_store(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, f"w{i}"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0 and "done" in out, err[-2000:]
        assert "database is locked" not in err
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("shared").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["w0", "w1"]
    assert all(len(client.get_metric_history(r.info.run_id, "m")) == 60 for r in runs)


def test_metrics_json_has_no_run_specific_fields(trained_model: dict) -> None:
    metrics = json.loads(Path(trained_model["metrics"]).read_text())
    assert "run_id" not in metrics and not any("second" in k for k in metrics)
