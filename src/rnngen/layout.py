"""Where ``dvc repro`` leaves its outputs, for the commands that read them afterwards
(``rnngen promote``, ``info``, ``evaluate``, ``inpaint``, ...). dvc.yaml owns these paths;
they are named here once, relative to the project root, and tests/test_dvc_deps.py checks
that each equals what dvc.yaml's stages write."""

from __future__ import annotations

from pathlib import Path

#: the split stage's output folder (``--out``)
SPLIT = Path("data/split")
#: the train stage's record of its run and registered version (``--out``/run.json)
RUN_JSON = Path("models/run.json")
#: the evaluate stage's metrics (``--metrics``)
METRICS_JSON = Path("reports/metrics.json")
#: where ``rnngen promote`` writes its decision, beside the metrics
PROMOTION_REPORT = Path("reports/promotion.md")
