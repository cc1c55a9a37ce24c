"""The `tune` stage: an Optuna study over learning rate, batch size, hidden size and optimizer
(and the model family, with ``tune.models``).

Every trial trains with the shared loop (:func:`rnngen.train.fit`) on the train split and is
scored by the best validation negative ELBO; the test split is never read.

How the pieces fit:

- :mod:`~rnngen.tuning.settings` — ``tune.*`` (:class:`TuneConfig`), the ``train.*`` keys every
  trial inherits, and a trial's training settings.
- :mod:`~rnngen.tuning.space` — the resource (seconds under a time budget, else epochs), the
  distributions a trial samples (centred on params.yaml's
  values, which are trial 0), the model families, and the study's name: a digest of what
  defines the search, so a rerun after a kill continues the same study and a changed search
  space starts a new one.
- :mod:`~rnngen.tuning.storage` — where the study lives (:class:`StudyStorage`): a journal file
  in the study folder (one machine) or an RDB URL (PostgreSQL, many machines), and the lock that
  keeps workers inside the shared budget of ``tune.n_trials`` finished trials.
- :mod:`~rnngen.tuning.trials` — one trial: its model, its training with per-epoch pruning
  (median or Hyperband), the objective ``study.optimize`` runs.
- :mod:`~rnngen.tuning.workers` — ``tune.workers`` processes, each running ``study.optimize``;
  a crashed worker's trial is failed and retried with the same values.
- :mod:`~rnngen.tuning.halving` — synchronous successive halving on the real schedule, in
  epochs (``tune.pruner: halving``) or in seconds of the real time budget, whose winner the
  train stage may continue (``tune.warm_start``).
- :mod:`~rnngen.tuning.mlflow_log` — one MLflow parent run per study, a child run per trial.
- :mod:`~rnngen.tuning.result` — the winner as the train stage applies it to params.yaml.
- :mod:`~rnngen.tuning.search` — :func:`search`, the stage from end to end: a winner reaches
  the train stage only when it beats trial 0 at equal resource.
"""

from rnngen.tuning.halving import HALVING_DIR
from rnngen.tuning.search import search
from rnngen.tuning.settings import (
    INHERITED_TRAIN_KEYS,
    LogRange,
    TuneConfig,
    TuneError,
    inherited_train_config,
    trial_train_config,
    tune_config,
)
from rnngen.tuning.space import ask, design, families, resolve, study_name, suggest, untuned
from rnngen.tuning.storage import JOURNAL_FILE, STORAGE_ENV
from rnngen.tuning.trials import FAIL_TRIAL_ENV
from rnngen.tuning.workers import budget_used

__all__ = [
    "FAIL_TRIAL_ENV", "HALVING_DIR", "INHERITED_TRAIN_KEYS", "JOURNAL_FILE", "STORAGE_ENV", "LogRange", "TuneConfig",
    "TuneError", "ask", "budget_used", "design", "families", "inherited_train_config", "resolve", "search",
    "study_name", "suggest", "trial_train_config", "tune_config", "untuned",
]
