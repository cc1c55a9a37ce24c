"""One importable ``run(params, *paths)`` per DVC stage, called by ``pipeline/<stage>.py``. Each validates
first, writes through temporary files (nothing half-written) and leaves MLflow runs FAILED, not RUNNING, on
errors. This file imports nothing, so a stage's import closure (its ``dvc.yaml`` deps) holds only what it runs."""
