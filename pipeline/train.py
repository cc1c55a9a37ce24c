"""DVC stage `train`: train `model.name` with `train.*`, overridden by the tuner's choices.

Logs params, per-epoch metrics and the model to MLflow (one run per trained model) and
registers a model version. Saves the full training state every epoch to CHECKPOINT; a killed
run resumes from it on the next `dvc repro`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from _common import parser
from rnngen.config import load_params
from rnngen.errors import guard
from rnngen.stages import train


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--split", type=Path, required=True, help="split stage output folder")
    p.add_argument("--hparams", type=Path, help="tune stage output (best hyperparameters JSON)")
    p.add_argument("--out", type=Path, required=True, help="model output folder")
    p.add_argument("--checkpoint", type=Path, required=True, help="resumable training state file")
    p.add_argument("--history", type=Path, required=True, help="per-epoch curves CSV (dvc plots)")
    args = p.parse_args(argv)
    return guard(lambda: train.run(
        load_params(args.params), args.split, args.hparams, args.out, args.checkpoint, args.history
    ))


if __name__ == "__main__":
    sys.exit(main())
