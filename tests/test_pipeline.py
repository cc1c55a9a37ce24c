"""End to end: `dvc repro` in a fresh git+DVC copy of the project, tiny params, real MLflow
store; then what a second repro and a param change rerun; then bad input through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, copy_project, tiny_params

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the project's default store: <copy>/mlflow.db
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = copy_project(tmp_path_factory.mktemp("project"), tiny_params())
    first = run([str(BIN / "dvc"), "repro"], repo)
    ran = stages_run(first.stdout)
    assert sorted(ran) == sorted(["download", "split", "tune", "train", "classifier", "evaluate"])
    assert ran.index("download") < ran.index("split") < ran.index("tune") < ran.index("train") < ran.index("evaluate")
    return repo


def test_outputs_and_metrics(project: Path) -> None:
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert metrics["test_nll_iwae"] <= metrics["test_nll_elbo"]
    assert 0 < metrics["test_nll_iwae"] < 784 * 0.7  # well below a coin-flip model
    assert metrics["binarization"].startswith("dynamic")
    assert 0 <= metrics["test_fcd"] and 1 <= metrics["test_classifier_score_samples"] <= 10
    for kind in ("bottom_half", "centre_square", "random_pixels"):
        assert 0 <= metrics[f"inpaint_{kind}_accuracy_completed"] <= 1
    assert json.loads((project / "classifier/metrics.json").read_text())["test_accuracy"] > 0.5
    for png in ("samples.png", "reconstructions.png", "inpaint_bottom_half.png", "inpaint_centre_square.png"):
        assert (project / "reports/pictures" / png).stat().st_size > 0
    shown = run([str(BIN / "dvc"), "metrics", "show", "--json"], project).stdout
    assert "test_nll_iwae" in shown
    html = run([str(BIN / "dvc"), "plots", "show", "-o", "plots_html"], project)
    assert html.returncode == 0 and (project / "plots_html/index.html").is_file()


def test_mlflow_run_params_metrics_images_and_registered_model(project: Path) -> None:
    from mlflow import MlflowClient

    run_info = json.loads((project / "models/run.json").read_text())
    assert run_info["tracking_uri"] == f"sqlite:///{project.resolve() / 'mlflow.db'}"
    client = MlflowClient(run_info["tracking_uri"])
    run_ = client.get_run(run_info["run_id"])
    assert run_.info.status == "FINISHED"
    assert run_.data.params["model.name"] == "row_lstm_vae"
    assert run_.data.params["train.epochs"] == "2" and run_.data.params["model.hidden"] == "16"
    assert run_.data.tags["git_commit"] != "unknown" and run_.data.tags["data_manifest_sha256"]
    assert len(client.get_metric_history(run_.info.run_id, "val_loss")) == 2  # one per epoch
    assert "test_nll_iwae" in run_.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run_.info.run_id, "pictures")}
    assert {"pictures/samples.png", "pictures/reconstructions.png", "pictures/inpaint_random_pixels.png"} <= artifacts
    assert any(a.path == "checkpoint" for a in client.list_artifacts(run_.info.run_id))
    exp = client.get_experiment(run_.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    version = client.get_model_version("rnngen", run_info["model_version"])
    assert version.run_id == run_.info.run_id
    assert float(version.tags["test_nll_iwae"]) == pytest.approx(run_.data.metrics["test_nll_iwae"], abs=1e-3)


def test_second_repro_runs_nothing_and_train_param_reruns_train_and_evaluate(project: Path) -> None:
    again = run([str(BIN / "dvc"), "repro"], project)
    assert stages_run(again.stdout) == []
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["lr"] = 0.002
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = run([str(BIN / "dvc"), "repro"], project)
    assert stages_run(changed.stdout) == ["train", "evaluate"]
    diff = run([str(BIN / "dvc"), "params", "diff", "--json"], project).stdout
    assert "train.lr" in diff


def test_bad_param_fails_before_compute_and_leaves_no_output(project: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["batch_size"] = 0
    params["train"]["lr"] = -1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    failed = run([str(BIN / "dvc"), "repro"], project, check=False)
    assert failed.returncode != 0
    assert "train.batch_size: must be >= 1" in failed.stderr and "train.lr" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert not (project / "models").exists()  # DVC removed it; we wrote nothing new


def test_stage_help_is_helpful() -> None:
    for stage in ("download", "split", "tune", "train", "classifier", "evaluate"):
        out = subprocess.run([sys.executable, str(ROOT / "pipeline" / f"{stage}.py"), "--help"],
                             capture_output=True, text=True, check=True).stdout
        assert "--params" in out and "DVC stage" in out
