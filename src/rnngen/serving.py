"""The served model's process: ``mlflow models serve`` of a registered model (the pyfunc of
:mod:`rnngen.service`), with this machine's settings. Imports no torch: ``rnngen --help`` reads it."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

#: ``rnngen serve``'s (and ``make serve``'s) settings on 2 cores, from bench/serve_load.py
#: (docs/serving.md): two uvicorn workers, so that a request does not wait behind a long one in
#: the same process and a killed worker is restarted while the other serves; one torch thread
#: each, so that the two do not spin against each other; MLflow's 60 s request timeout.
WORKERS, THREADS, TIMEOUT_S = 2, 1, 60


def serve_command(model_uri: str, host: str = "127.0.0.1", port: int = 5001, workers: int = WORKERS,
                  threads: int = THREADS, timeout_s: int = TIMEOUT_S) -> tuple[list[str], dict[str, str]]:
    """``mlflow models serve`` of ``model_uri`` with these settings: (command, environment to add).
    The environment puts this Python's scripts first on PATH: MLflow starts ``uvicorn`` by name."""
    scripts = str(Path(sys.executable).parent)
    mlflow = shutil.which("mlflow", path=scripts) or shutil.which("mlflow") or "mlflow"
    cmd = [mlflow, "models", "serve", "-m", model_uri, "--env-manager", "local", "--host", host,
           "--port", str(port), "--workers", str(workers), "--timeout", str(timeout_s)]
    return cmd, {"OMP_NUM_THREADS": str(threads), "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": str(timeout_s),
                 "PATH": os.pathsep.join([scripts, os.environ.get("PATH", "")])}
