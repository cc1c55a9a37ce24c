"""DVC stage `tune`: an Optuna search over learning rate, batch size, hidden size and optimizer,
centred on params.yaml's values, which are trial 0.

Writes OUT (JSON): {"params": {"train.lr": ..., ...}} as dotted overrides of params.yaml that the
train stage applies, only when the best trial beats trial 0 at equal resource (else no
overrides, and "why" says so); with tune.n_trials: 0, no overrides. Under train.time_budget_s a
trial's resource is seconds of the real training (successive halving in time, the last rung the
whole budget); else epochs. With tune.warm_start: true, WARM_START holds the chosen trial's
training state, which the train stage continues; otherwise a placeholder. The study lives in
STUDY_DIR (a journal file, kept between runs: a killed search continues) unless tune.storage or
$RNNGEN_OPTUNA_STORAGE names a database. Runs go to the MLflow experiment `<tracking.experiment>-tune`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from _common import parser
from rnngen.config import load_params
from rnngen.errors import guard
from rnngen.stages import tune


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--split", type=Path, required=True, help="split stage output folder")
    p.add_argument("--study-dir", type=Path, required=True, help="folder of the study's journal file")
    p.add_argument("--out", type=Path, required=True, help="best hyperparameters JSON to write")
    p.add_argument("--warm-start", type=Path,
                   help="the winner's training state to write (tune.warm_start; else a placeholder)")
    args = p.parse_args(argv)
    return guard(lambda: tune.run(load_params(args.params), args.split, args.study_dir, args.out, args.warm_start))


if __name__ == "__main__":
    sys.exit(main())
