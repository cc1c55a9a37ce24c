"""One module per DVC stage, each an importable ``run(...)`` with explicit arguments.

``pipeline/<stage>.py`` parses paths and params and calls one of these. Every stage validates
its inputs first, writes its outputs through a temporary file or folder (nothing half-written
on failure) and leaves MLflow runs FAILED rather than RUNNING on errors. This file imports
nothing, so a stage's import closure (its ``dvc.yaml`` deps) holds only what it runs.
"""
