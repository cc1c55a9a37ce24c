"""MLflow records of a study: one parent run per study and budget, one nested child run per
trial, and the result on the parent (best values, the trials table, Optuna's plots).

Written here because Optuna's MLflow callback is deprecated (optuna-integration 4.9). A trial
whose worker died has its run marked KILLED (:func:`rnngen.tracking.mark_killed`) where the
trial is retried.
"""

from __future__ import annotations

import contextlib
import random
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from rnngen import tracking
from rnngen.config import to_flat_dict
from rnngen.tuning.space import RUNTIME_KEYS, TuneConfig

if TYPE_CHECKING:
    from rnngen.tuning.trials import SearchContext


@contextlib.contextmanager
def parent_run(study: Any, cfg: TuneConfig, model_name: str, split_info: Mapping[str, Any],
               where: str) -> Iterator[Any]:
    """The study's parent run for this budget: the one a killed search started (found by the
    study's user attribute) or a new one with the search's settings as params."""
    import mlflow

    key = f"mlflow_parent_run:{cfg.n_trials}"
    run_id = tracking.live_run(study.user_attrs.get(key))
    with tracking.run(run_id=run_id, run_name=None if run_id else f"tune {study.study_name}") as parent:
        if run_id is None:
            study.set_user_attr(key, parent.info.run_id)
            mlflow.log_params({
                **{f"tune.{k}": v for k, v in to_flat_dict(cfg).items() if k not in RUNTIME_KEYS},
                "model.name": model_name, "study_name": study.study_name,
                **{f"split.{k}": split_info.get(k) for k in ("seed", "binarization")},
            })
        mlflow.set_tags({"optuna.study": study.study_name, "optuna.storage": where, **tracking.git_state(),
                         **{f"tune.{k}": getattr(cfg, k) for k in RUNTIME_KEYS if k != "storage"}})
        yield parent


@contextlib.contextmanager
def trial_run(trial: Any, ctx: SearchContext, hp: Mapping[str, Any], *, reopen: bool = False,
              tags: Mapping[str, str] | None = None) -> Iterator[Any]:
    """The trial's nested run under the study's parent run, FAILED when the block raises.

    With ``reopen`` the run the trial already has is continued (a halving trial's next rung);
    otherwise a new run records the trial's values (and ``retry_of`` for a retry) as params.
    """
    import mlflow

    run_id = trial.user_attrs.get("mlflow_run_id") if reopen else None
    if run_id:
        with tracking.run(run_id=run_id, nested=True) as run:
            yield run
        return
    tags = {"optuna.study": ctx.study_name, "optuna.trial_number": str(trial.number), **(tags or {})}
    with tracking.run(run_name=f"trial {trial.number}", nested=True, tags=tags,
                      parent_run_id=ctx.parent_run_id, experiment_id=ctx.experiment_id) as run:
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
        retry = {k: trial.user_attrs[k] for k in ("retry_of",) if k in trial.user_attrs}
        mlflow.log_params({**hp, "trial": trial.number, **retry})
        yield run


def tag_state(trial: Any, state: str) -> None:
    """The ``optuna.state`` tag on a halving trial's run, set when the rung ranking decides it
    (epoch trials tag their own run as it ends)."""
    import mlflow

    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        mlflow.MlflowClient().set_tag(run_id, "optuna.state", state)


def log_result(study: Any, result: Mapping[str, Any]) -> None:
    """The best values (tags ``best.<key>``), the trials table and the standard Optuna plots on
    the (active) parent run. Every worker of a shared study writes its summary there as it
    finishes, so the best is a tag, which a later finisher may update (a param may not change)."""
    import mlflow

    untuned = {} if result["untuned_value"] is None else {"untuned_val_loss": result["untuned_value"]}
    speed = {f"{k}_images_per_second": v for k, v in (result.get("images_per_second") or {}).items() if v}
    tags = {**{f"best.{k}": v for k, v in result["params"].items()},
            "tune.chosen": result["chosen"], "tune.why": result["why"][:5000]}
    _shared_write(lambda: mlflow.set_tags(tags))
    _shared_write(lambda: mlflow.log_metrics({
        "best_val_loss": result["best_value"], "epochs_trained": result["epochs_trained"], **untuned, **speed,
        **{f"trials_{k}": v for k, v in result["trials"].items()}}))
    mlflow.log_dict(dict(result), "best_params.json")
    mlflow.log_text(study.trials_dataframe().to_csv(index=False), "trials.csv")
    if result["trials"]["complete"] < 2:
        print("tune: fewer than 2 complete trials, no plots")
        return
    _log_plots(study)


def _shared_write(write: Callable[[], None], tries: int = 3) -> None:
    """``write`` to the parent run that every worker of a shared study writes to as it finishes:
    when two write one key at the same moment the store refuses the second (a unique-key
    violation on PostgreSQL), so it is tried again once the first has landed."""
    from mlflow.exceptions import MlflowException

    for attempt in range(1, tries + 1):
        try:
            return write()
        except MlflowException:
            if attempt == tries:
                raise
            time.sleep(random.uniform(0.2, 1.0) * attempt)


def _log_plots(study: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    import numpy as np
    from optuna.visualization import matplotlib as ovm

    plots = {"optimization_history": ovm.plot_optimization_history,
             "param_importances": ovm.plot_param_importances, "slice": ovm.plot_slice}
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
                axes = plot(study)
            fig = np.atleast_1d(axes).flat[0].figure
            mlflow.log_figure(fig, f"plots/{name}.png", save_kwargs={"bbox_inches": "tight", "dpi": 120})
            plt.close(fig)
        except Exception as exc:  # e.g. importances of parameters that never varied
            print(f"tune: no {name} plot ({type(exc).__name__}: {exc})")
