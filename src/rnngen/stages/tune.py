"""Stage `tune`: the Optuna search of :mod:`rnngen.tuning` over the train split."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rnngen import tuning


def run(params: Mapping[str, Any], split_dir: Path, study_dir: Path, out: Path,
        warm_start: Path | None = None) -> dict[str, Any]:
    """Run or continue the study; write the winner's dotted overrides to ``out`` (and, with
    ``tune.warm_start``, its training state to ``warm_start``)."""
    return tuning.search(params, split_dir, study_dir, out, warm_start)
