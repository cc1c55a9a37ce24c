"""Synchronous successive halving (Jamieson and Talwalkar 2016; the inner loop of Li et al.'s
Hyperband, 2018) on the real schedule, in one process.

Every trial is the start of the training the train stage would run with its values
(train.seed, train.epochs as the schedule's length, train.patience), so ranks are taken where
the real training is, not after a short run of its own. The resource is epochs or seconds
(:func:`rungs`). In epochs, rung 0 trains tune.n_trials configurations tune.epochs epochs each;
the best 1 / halving_rate continue from their checkpoints to halving_rate times as many
epochs, and so on until one is left (or train.epochs is reached). In seconds, the rungs are
fractions of train.time_budget_s, 1 / halving_rate apart, the last the whole budget: a
configuration too slow for the budget loses on its own merits, and the winner has trained
exactly as the train stage would. The first rung's configurations are trial 0, then
tune.startup_trials - 1 laid out as a Latin hypercube (:func:`design`), then the rest drawn one
at a time by TPE from the first rung's results (:func:`propose`, as in BOHB). Trial 0
(params.yaml's values) goes on to every rung, so the
winner is always compared with it at equal resource. tune.budget_s may cut it all short.
Eliminated trials are PRUNED; the final ones COMPLETE, and the winner's checkpoint is what
``tune.warm_start`` hands to the train stage.

Optuna's ``SuccessiveHalvingPruner`` is the asynchronous variant (ASHA), which promotes a trial
as soon as it beats the others seen so far at its rung: not these whole-rung rankings.
"""

from __future__ import annotations

import math
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnngen.train import TrainConfig
from rnngen.tuning import mlflow_log
from rnngen.tuning.settings import TuneError
from rnngen.tuning.space import Family, TuneConfig, ask, design, search_space, suggest
from rnngen.tuning.trials import SearchContext, TrialImages, describe, is_untuned, speed, trial_model

#: the folder in the study folder that holds successive halving's trial checkpoints
HALVING_DIR = "halving"


@dataclass
class _Rungs:
    """Per trial number: its values, best validation loss so far, the index of the last rung it
    trained to, and whether its training ended (early stop, train.epochs or the time budget)."""

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


def rungs(cfg: TuneConfig, train: TrainConfig) -> list[float]:
    """What each rung trains its trials to: epochs (tune.epochs, x halving_rate, ... up to
    train.epochs) or seconds (train.time_budget_s / rate^K, ..., / rate, x 1, with K the
    halvings that leave one of tune.n_trials)."""
    rate = cfg.halving_rate
    if cfg.resource == "seconds":
        k = math.ceil(math.log(cfg.n_trials, rate) - 1e-9) if cfg.n_trials > 1 else 0
        return [train.time_budget_s / rate ** (k - i) for i in range(k + 1)]
    out = [min(cfg.epochs, train.epochs)]
    while out[-1] < train.epochs:
        out.append(min(out[-1] * rate, train.epochs))
    return out


def run_halving(ctx: SearchContext, study: Any) -> None:
    """Train the rungs, cut each to its best 1 / halving_rate (and trial 0), tell the result."""
    from optuna.trial import TrialState

    cfg, ladder = ctx.cfg, rungs(ctx.cfg, ctx.train)
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))  # trial 0, queued
    laid_out = min(cfg.n_trials, max(cfg.startup_trials, 1)) - len(waiting)
    for values in design(cfg, ctx.families, laid_out):
        study.enqueue_trial(values)
    images = ctx.training_images()
    Path(ctx.halving_dir).mkdir(parents=True, exist_ok=True)
    board = _Rungs(hps={})
    alive: list[Any] = []
    unit = "s" if cfg.resource == "seconds" else " epochs"
    print(f"tune: successive halving of {cfg.n_trials} trials ({len(waiting) + max(laid_out, 0)} laid out, the rest "
          f"drawn by TPE from the first rung), rungs of {', '.join(f'{r:g}' for r in ladder)}{unit}", flush=True)
    out_of_time = False
    for i, rung in enumerate(ladder):
        if i == 0:
            out_of_time = _first_rung(study, alive, board, rung, ctx, images)
        else:
            out_of_time = _train_rung(study, alive, board, i, rung, ctx, images)
        if out_of_time or i == len(ladder) - 1:
            break
        ranked = sorted(alive, key=lambda t: board.value[t.number])
        top = ranked[: max(1, len(ranked) // cfg.halving_rate)]
        keep = top + [t for t in ranked[len(top):] if is_untuned(t)]  # trial 0 goes on: the comparison
        for t in ranked:
            if t not in keep:
                _eliminate(study, t, ctx, f"rung of {rung:g}{unit}: not in the best {len(top)} of {len(ranked)}")
        alive = keep
        if cfg.resource == "epochs" and len(top) == 1:  # one is left (in seconds: on to the whole budget)
            break
    if out_of_time:
        print(f"tune: tune.budget_s ({cfg.budget_s:g} s) spent during the rung of {rung:g}{unit}", flush=True)
    _tell_final(study, alive, board, ctx)


def _first_rung(study: Any, alive: list[Any], board: _Rungs, rung: float, ctx: SearchContext,
                images: TrialImages) -> bool:
    """Ask tune.n_trials trials one at a time and train each to the first rung: the queued
    ones (trial 0, the Latin hypercube) first, then TPE's proposals from the results so far."""
    from optuna.trial import TrialState

    cfg = ctx.cfg
    while len(board.hps) < cfg.n_trials:
        if board.hps and not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            seen = [(board.hps[n], v) for n, v in board.value.items()]
            study.enqueue_trial(propose(cfg, ctx.families, seen, seed=cfg.seed * 1009 + len(board.hps)))
        t = ask(study, cfg, ctx.families)
        board.hps[t.number] = suggest(t, cfg, ctx.families)
        board.reached[t.number], board.done[t.number] = -1, False
        alive.append(t)
        if _train_rung(study, alive, board, 0, rung, ctx, images):
            return True
    return False


def propose(cfg: TuneConfig, fams: tuple[Family, ...], seen: list[tuple[dict[str, Any], float]],
            seed: int) -> dict[str, Any]:
    """The next configuration of the first rung, drawn by TPE (Bergstra et al. 2011) from the
    first rung's results so far, as BOHB does (Falkner et al. 2018): the laid-out
    configurations show where the space pays, and the rest of the rung is spent there."""
    import optuna

    space, verbosity = search_space(cfg, fams), optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per proposal about a scratch study
    try:
        scratch = optuna.create_study(direction="minimize",
                                      sampler=optuna.samplers.TPESampler(n_startup_trials=0, seed=seed))
    finally:
        optuna.logging.set_verbosity(verbosity)
    worst = max((v for _, v in seen if math.isfinite(v)), default=None)
    if worst is not None:  # a diverged configuration counts as the worst seen, not as unseen
        scratch.add_trials([optuna.trial.create_trial(params={k: hp[k] for k in space}, distributions=space,
                                                      value=v if math.isfinite(v) else worst) for hp, v in seen])
    return scratch.ask(space).params


def _train_rung(study: Any, alive: list[Any], board: _Rungs, index: int, rung: float, ctx: SearchContext,
                images: TrialImages) -> bool:
    """Train every trial in ``alive`` on to ``rung`` (rung ``index``); a failing one is told
    FAIL and taken out of ``alive``. True when tune.budget_s ran out first."""
    from optuna.trial import TrialState

    for t in list(alive):
        n = t.number
        if board.done[n] or board.reached[n] >= index:
            continue
        if ctx.over_budget():
            return True
        try:
            board.value[n], board.done[n] = train_to(t, board.hps[n], ctx, images, rung)
            board.reached[n] = index
        except Exception as exc:  # a failing configuration must not end the search
            t.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:1000])
            print(f"trial {n} failed:\n{traceback.format_exc()}", flush=True)
            study.tell(t, state=TrialState.FAIL)
            alive.remove(t)
    return False


def _tell_final(study: Any, alive: list[Any], state: _Rungs, ctx: SearchContext) -> None:
    """COMPLETE for the trials trained equally far (or finished), PRUNED for the rest; only the
    winner and trial 0 keep their checkpoints."""
    scored = [t for t in alive if t.number in state.value]
    depth = max((state.reached[t.number] for t in scored), default=0)
    # only results trained equally far (or finished) compete: a shorter curve is not comparable
    final = [t for t in scored if state.reached[t.number] == depth or state.done[t.number]]
    for t in alive:
        if t in final:
            study.tell(t, state.value[t.number])
            mlflow_log.tag_state(t, "COMPLETE")
        else:
            _eliminate(study, t, ctx, "tune.budget_s spent before it reached the last rung")
    if not final:
        cfg = ctx.cfg
        raise TuneError(f"tune.budget_s ({cfg.budget_s:g} s) ran out before any trial finished its first rung "
                        f"of {rungs(cfg, ctx.train)[0]:g} {'s' if cfg.resource == 'seconds' else 'epochs'}; "
                        "raise tune.budget_s, or lower tune.epochs or tune.n_trials")
    winner = min(final, key=lambda t: (state.value[t.number], not is_untuned(t)))  # a tie: trial 0
    for t in final:  # trial 0's stays too: the untuned model, for a comparison on the test split
        if t is not winner and not is_untuned(t):
            Path(ctx.halving_dir, f"trial-{t.number}.pt").unlink(missing_ok=True)


def _eliminate(study: Any, trial: Any, ctx: SearchContext, why: str) -> None:
    from optuna.trial import TrialState

    trial.set_user_attr("pruned", why)
    study.tell(trial, state=TrialState.PRUNED)
    mlflow_log.tag_state(trial, "PRUNED")
    Path(ctx.halving_dir, f"trial-{trial.number}.pt").unlink(missing_ok=True)
    print(f"trial {trial.number} PRUNED ({why})", flush=True)


def train_to(trial: Any, hp: dict[str, Any], ctx: SearchContext, images: TrialImages,
             until: float) -> tuple[float, bool]:
    """Train a halving trial on to ``until`` (epochs or seconds, :attr:`TuneConfig.resource`)
    from its checkpoint, logging to its MLflow run (reopened); ``(best validation loss,
    finished)``."""
    import mlflow

    t0 = time.perf_counter()
    model, train_cfg = trial_model(hp, ctx, untuned=is_untuned(trial))
    seconds = ctx.cfg.resource == "seconds"
    with mlflow_log.trial_run(trial, ctx, hp, reopen=True):

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            mlflow.log_metrics(metrics, step=epoch)
            trial.report(metrics["val_loss"], epoch)

        result = images.fit(model, train_cfg, ctx.binarization, on_epoch=on_epoch, progress=False,
                            checkpoint=Path(ctx.halving_dir) / f"trial-{trial.number}.pt", identity=ctx.identity,
                            until_epoch=None if seconds else int(until), until_seconds=until if seconds else None)
        mlflow.log_metric("best_val_loss", result.best_val)
    trial.set_user_attr("images_per_second", speed(result.history))
    done = f"{result.history[-1]['elapsed_s']:.0f} s" if seconds else f"epoch {len(result.history)}/{train_cfg.epochs}"
    print(f"trial {trial.number} {done}: best val {result.best_val:.2f}  {describe(hp)}  "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return result.best_val, not result.paused

