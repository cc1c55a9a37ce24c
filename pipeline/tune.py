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

import sys

from _common import stage
from rnngen.tuning import search

main = stage(__doc__, search, split="split stage output folder", study_dir="folder of the study's journal file",
             out="best hyperparameters JSON to write",
             warm_start="the winner's training state to write (tune.warm_start; else a placeholder) (optional)")

if __name__ == "__main__":
    sys.exit(main())
