"""Synchronous successive halving (Jamieson and Talwalkar 2016; the inner loop of Li et al.'s
Hyperband, 2018) on the real schedule, in one process.

Every trial is the first epochs of the training the train stage would run with its values
(train.seed, train.epochs as the schedule's length, train.patience), so ranks are taken where
the real training is, not after a short run of its own. Rung 0 trains tune.n_trials
configurations tune.epochs epochs each; the best 1 / halving_rate continue from their
checkpoints to halving_rate times as many epochs, and so on until one is left (or train.epochs
is reached, or tune.budget_s is spent). Eliminated trials are PRUNED; the winner is COMPLETE,
and its checkpoint is what ``tune.warm_start`` hands to the train stage.

Optuna's ``SuccessiveHalvingPruner`` is the asynchronous variant (ASHA), which promotes a trial
as soon as it beats the others seen so far at its rung: not these whole-rung rankings.
"""

from __future__ import annotations

import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnngen.train import fit
from rnngen.tuning import mlflow_log
from rnngen.tuning.space import TuneConfig, TuneError, ask, suggest
from rnngen.tuning.trials import SearchContext, describe, trial_model

#: the folder in the study folder that holds successive halving's trial checkpoints
HALVING_DIR = "halving"


@dataclass
class _Rungs:
    """Per trial number: its values, best validation loss so far, epochs trained, and whether its
    training ended (early stop or train.epochs)."""

    hps: dict[int, dict[str, Any]]
    value: dict[int, float] = field(default_factory=dict)
    reached: dict[int, int] = field(default_factory=dict)
    done: dict[int, bool] = field(default_factory=dict)


def finished(study: Any, cfg: TuneConfig, halving_dir: Path) -> bool:
    """The study holds a finished halving search of tune.n_trials configurations (and, for a
    warm start, its winner's checkpoint is still there)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    if len(trials) != cfg.n_trials or not all(t.state.is_finished() for t in trials):
        return False
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        return False
    best = min(complete, key=lambda t: t.value)
    return not cfg.warm_start or (halving_dir / f"trial-{best.number}.pt").is_file()


def start_over(study: Any, storage: Any, halving_dir: Path) -> Any:
    """An empty study of the same name, without its trials' checkpoints. A halving search ranks
    whole rungs in one process: one cut off (killed), or run with another n_trials, is run again
    from the start rather than pieced together."""
    import optuna

    if study.get_trials(deepcopy=False):
        print(f"tune: study {study.study_name} holds a halving search that did not finish (or had another "
              "n_trials): starting it over")
        optuna.delete_study(study_name=study.study_name, storage=storage)
        study = optuna.create_study(study_name=study.study_name, storage=storage, direction="minimize")
    if halving_dir.exists():
        shutil.rmtree(halving_dir)
    return study


def run_halving(ctx: SearchContext, study: Any) -> None:
    """Train the rungs, cut each to its best 1 / halving_rate, tell the result."""
    import optuna

    cfg, horizon = ctx.cfg, ctx.train.epochs
    study.sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=cfg.startup_trials,
                                               constant_liar=True)
    images = ctx.training_images()
    Path(ctx.halving_dir).mkdir(parents=True, exist_ok=True)
    alive = [ask(study, cfg, ctx.families) for _ in range(cfg.n_trials)]
    rungs = _Rungs(hps={t.number: suggest(t, cfg, ctx.families) for t in alive})
    rungs.reached, rungs.done = dict.fromkeys(rungs.hps, 0), dict.fromkeys(rungs.hps, False)
    rung, out_of_time = min(cfg.epochs, horizon), False
    while True:
        out_of_time = _train_rung(study, alive, rungs, rung, ctx, images)
        if out_of_time or len(alive) <= 1 or rung >= horizon:
            break
        ranked = sorted(alive, key=lambda t: rungs.value[t.number])
        keep = max(1, len(ranked) // cfg.halving_rate)
        for t in ranked[keep:]:
            _eliminate(study, t, ctx, f"rung of {rung} epochs: not in the best {keep} of {len(ranked)}")
        alive = ranked[:keep]
        if len(alive) == 1:
            break
        rung = min(rung * cfg.halving_rate, horizon)
    if out_of_time:
        print(f"tune: tune.budget_s ({cfg.budget_s:g} s) spent during the rung of {rung} epochs", flush=True)
    _tell_final(study, alive, rungs, ctx)


def _train_rung(study: Any, alive: list[Any], rungs: _Rungs, rung: int, ctx: SearchContext,
                images: tuple[Any, Any]) -> bool:
    """Train every trial in ``alive`` on to epoch ``rung``; a failing one is told FAIL and taken
    out of ``alive``. True when tune.budget_s ran out first."""
    from optuna.trial import TrialState

    for t in list(alive):
        n = t.number
        if rungs.done[n] or rungs.reached[n] >= rung:
            continue
        if ctx.over_budget():
            return True
        try:
            rungs.value[n], rungs.reached[n], rungs.done[n] = train_to_epoch(t, rungs.hps[n], ctx, *images, rung)
        except Exception as exc:  # a failing configuration must not end the search
            t.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:1000])
            print(f"trial {n} failed:\n{traceback.format_exc()}", flush=True)
            study.tell(t, state=TrialState.FAIL)
            alive.remove(t)
    return False


def _tell_final(study: Any, alive: list[Any], rungs: _Rungs, ctx: SearchContext) -> None:
    """COMPLETE for the trials trained equally far (or finished), PRUNED for the rest; only the
    winner keeps its checkpoint."""
    scored = [t for t in alive if t.number in rungs.value]
    depth = max((rungs.reached[t.number] for t in scored), default=0)
    # only results trained equally far (or finished) compete: a shorter curve is not comparable
    final = [t for t in scored if rungs.reached[t.number] == depth or rungs.done[t.number]]
    for t in alive:
        if t in final:
            study.tell(t, rungs.value[t.number])
        else:
            _eliminate(study, t, ctx, "tune.budget_s spent before it reached the last rung")
    if not final:
        cfg = ctx.cfg
        raise TuneError(f"tune.budget_s ({cfg.budget_s:g} s) ran out before any trial finished its first rung "
                        f"of {min(cfg.epochs, ctx.train.epochs)} epochs; raise tune.budget_s or lower tune.epochs")
    winner = min(final, key=lambda t: rungs.value[t.number])
    for t in final:
        if t is not winner:
            Path(ctx.halving_dir, f"trial-{t.number}.pt").unlink(missing_ok=True)


def _eliminate(study: Any, trial: Any, ctx: SearchContext, why: str) -> None:
    from optuna.trial import TrialState

    trial.set_user_attr("pruned", why)
    study.tell(trial, state=TrialState.PRUNED)
    Path(ctx.halving_dir, f"trial-{trial.number}.pt").unlink(missing_ok=True)
    print(f"trial {trial.number} PRUNED ({why})", flush=True)


def train_to_epoch(trial: Any, hp: dict[str, Any], ctx: SearchContext, x_train: Any, x_val: Any,
                   until: int) -> tuple[float, int, bool]:
    """Train a halving trial on to epoch ``until`` from its checkpoint, logging to its MLflow run
    (reopened); ``(best validation loss, epochs trained, finished)``."""
    import mlflow

    t0 = time.perf_counter()
    model, train_cfg = trial_model(hp, ctx)
    with mlflow_log.trial_run(trial, ctx, hp, reopen=True):

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            mlflow.log_metrics(metrics, step=epoch)
            trial.report(metrics["val_loss"], epoch)

        result = fit(model, x_train, x_val, train_cfg, ctx.binarization, on_epoch=on_epoch, progress=False,
                     checkpoint=Path(ctx.halving_dir) / f"trial-{trial.number}.pt", identity=ctx.identity,
                     until_epoch=until)
        mlflow.log_metric("best_val_loss", result.best_val)
    print(f"trial {trial.number} epoch {len(result.history)}/{train_cfg.epochs}: best val {result.best_val:.2f}  "
          f"{describe(hp)}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return result.best_val, len(result.history), not result.paused
