"""The tune stage's search from end to end: validate, open or continue the study with trial 0
(params.yaml's values) queued first, run its trials (worker processes, or successive halving),
judge the winner against trial 0 at equal resource, write the stage's outputs."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rnngen import checkpoint as ckpt
from rnngen import data, tracking
from rnngen.files import write_json
from rnngen.train import warm_start_identity
from rnngen.tuning import halving, mlflow_log
from rnngen.tuning.settings import TuneConfig, TuneError, experiment_config, real_schedule
from rnngen.tuning.space import hidden_fields, overrides, study_name, untuned, validate
from rnngen.tuning.storage import JOURNAL_FILE, open_storage
from rnngen.tuning.trials import UNTUNED_ATTR, SearchContext, is_untuned
from rnngen.tuning.workers import retried, run_workers


def search(params: Mapping[str, Any], split_dir: Path, study_dir: Path, out: Path,
           warm_start: Path | None = None) -> dict[str, Any]:
    """Run or continue the study; write the best hyperparameters to ``out`` (JSON) as dotted
    overrides ``{"params": {"train.lr": ...}}`` that the train stage applies, and (when given)
    ``warm_start``: the winner's training state with ``tune.warm_start``, else a placeholder."""
    cfg, choice, base, fams = validate(params)
    if cfg.n_trials == 0:
        return _no_search(study_dir, out, warm_start)
    import mlflow
    import optuna

    t_start = time.perf_counter()
    deadline = time.time() + cfg.budget_s if cfg.budget_s else 0.0
    split_info = data.split_info(split_dir)
    storage, connection = open_storage(cfg, Path(study_dir))
    where = str(Path(study_dir) / JOURNAL_FILE) if storage.journal else storage.describe()
    name = study_name(cfg, base, choice.name, choice.config, hidden_fields(choice.name), split_info, fams)
    experiment_id = tracking.setup(tracking.tuning_experiment(experiment_config(params).experiment))  # fails fast
    study = optuna.create_study(study_name=name, storage=connection, direction="minimize", load_if_exists=True)
    halving_dir = Path(study_dir) / halving.HALVING_DIR / name
    halving_now = real_schedule(cfg) and not halving.finished(study, cfg, halving_dir)
    if halving_now:
        study = halving.start_over(study, connection, halving_dir)
    with mlflow_log.parent_run(study, cfg, choice.name, split_info, where) as parent:
        ctx = SearchContext(
            cfg=cfg, train=base, families=fams, split_dir=str(Path(split_dir).resolve()),
            binarization=split_info["binarization"], storage=storage, study_name=name,
            tracking_uri=mlflow.get_tracking_uri(), experiment_id=experiment_id,
            parent_run_id=parent.info.run_id, threads=_threads_per_worker(cfg),
            deadline=deadline,
            halving_dir=str(halving_dir.resolve()),
            identity=warm_start_identity(Path(split_dir), cfg.train_images if cfg.resource == "epochs" else 0)
            if halving_now else {},
        )
        finished_before = _finished(study)
        _run_trials(study, ctx, halving_now)
        study = optuna.load_study(study_name=name, storage=connection)
        # Only what the search decided (no run id, no storage path): the same search writes the
        # same bytes on any store, so DVC does not retrain for a new machine or mlflow.db.
        result = summarize(study, ctx)
        mlflow_log.log_result(study, result)
    winner = _kept_winner(study, cfg, halving_dir, result)
    write_json(out, result)
    _write_warm_start(warm_start, winner, "tune.warm_start is false" if not cfg.warm_start
                      else "the chosen trial's training state was not kept")
    run = {"seconds": round(time.perf_counter() - t_start, 2),
           "trials_run_now": _finished(study) - finished_before, "mlflow_parent_run_id": parent.info.run_id}
    _print_summary({**result, **run})
    return {**result, **run}


def _no_search(study_dir: Path, out: Path, warm_start: Path | None) -> dict[str, Any]:
    result = {"params": {}, "note": "tune.n_trials is 0: train uses params.yaml's values"}
    Path(study_dir).mkdir(parents=True, exist_ok=True)  # an empty study: DVC's persist output exists
    write_json(out, result)
    _write_warm_start(warm_start, None, "tune.n_trials is 0")
    print("tune: n_trials is 0, no search")
    return result


def _run_trials(study: Any, ctx: SearchContext, halving_now: bool) -> None:
    """Trial 0 queued first, then the search: successive halving, or the worker processes. A
    finished halving search is not run again: its result stands."""
    if halving_now or not real_schedule(ctx.cfg):
        queue_untuned(study, ctx, untuned(ctx.train, ctx.families))
    if halving_now:
        halving.run_halving(ctx, study)
    elif real_schedule(ctx.cfg):
        print(f"tune: study {ctx.study_name} holds this halving search, finished: its result stands")
    else:
        run_workers(ctx, study)


def _kept_winner(study: Any, cfg: TuneConfig, halving_dir: Path, result: dict[str, Any]) -> Path | None:
    """The chosen trial's training state when ``tune.warm_start`` asks for it and successive
    halving kept it (recorded in ``result`` as ``warm_start``), else None."""
    winner = halving_dir / f"trial-{result['chosen_trial']}.pt" if cfg.warm_start else None
    if winner is None or not winner.is_file():
        return None
    chosen = next(t for t in study.get_trials(deepcopy=False) if t.number == result["chosen_trial"])
    result["warm_start"] = {"trial": chosen.number, "epochs": len(chosen.intermediate_values)}
    return winner


def queue_untuned(study: Any, ctx: SearchContext, values: dict[str, Any]) -> None:
    """Queue trial 0, params.yaml's values, unless the study already holds it (once, under the
    budget lock: workers on many machines may start the same study together)."""
    with ctx.storage.budget_lock(ctx.study_name):
        if not any(is_untuned(t) for t in study.get_trials(deepcopy=False)):
            study.enqueue_trial(values, user_attrs={UNTUNED_ATTR: True})


def summarize(study: Any, ctx: SearchContext) -> dict[str, Any]:
    """The chosen values as the train stage's overrides: the best trial's when it beats trial 0
    (params.yaml's values) at equal resource, else none; both trials' figures, and the trials
    by outcome."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    again = retried(trials)
    count = {s: sum(t.state == s for t in trials) for s in TrialState}
    counts = {
        "complete": count[TrialState.COMPLETE],
        "pruned": count[TrialState.PRUNED],
        "failed": count[TrialState.FAIL] - len(again),
        "retried": len(again),
    }
    if not counts["complete"]:
        errors = [t.user_attrs["error"] for t in trials if "error" in t.user_attrs]
        if ctx.over_budget():
            raise TuneError(f"tune.budget_s ({ctx.cfg.budget_s:g} s) was spent before any trial completed "
                            f"({counts}); raise tune.budget_s, or lower tune.epochs or tune.train_images")
        raise TuneError(
            f"no trial of study {ctx.study_name} completed ({counts}); "
            + (f"first error: {errors[0]}" if errors else "widen the search or lower tune.prune_startup")
        )
    best = study.best_trial
    base = _untuned_trial(trials)
    beats, why = beats_untuned(best, base)
    result: dict[str, Any] = {
        "params": overrides(best.params, ctx.families) if beats else {},
        "chosen": "best trial" if beats else "params.yaml",
        "why": why,
        "best_value": best.value,
        "best_trial": best.number,
        "chosen_trial": best.number if beats or base is None else base.number,
        "untuned_trial": base.number if base is not None else None,
        "untuned_value": base.value if base is not None else None,
        "metric": "validation negative ELBO (nats/image), best epoch of the trial",
        "resource": ctx.cfg.resource,
        "trials": counts,
        "epochs_trained": sum(len(t.intermediate_values) for t in trials),
        "study_name": ctx.study_name,
    }
    if ctx.cfg.resource == "seconds":  # speed is part of the result under a time budget (only then:
        # elsewhere the file holds only what the search decided, the same bytes on any machine)
        result["images_per_second"] = {"best": best.user_attrs.get("images_per_second"),
                                       "untuned": base.user_attrs.get("images_per_second") if base else None}
    return result


def _untuned_trial(trials: list[Any]) -> Any:
    """Trial 0 (its completed run when it was retried), or None in a study without it."""
    from optuna.trial import TrialState

    mine = [t for t in trials if is_untuned(t)]
    return next((t for t in mine if t.state == TrialState.COMPLETE), mine[-1] if mine else None)


def beats_untuned(best: Any, base: Any) -> tuple[bool, str]:
    """Whether ``best`` beats trial 0 ``base`` at equal resource, and a sentence saying why.
    Completed trials had the same resource (the same epochs, or the same last rung); trial 0
    pruned after epoch k is compared with ``best``'s best value up to epoch k."""
    from optuna.trial import TrialState

    if base is None:
        return True, "the study holds no trial 0 to compare with"
    if best.number == base.number:
        return False, f"trial 0 (params.yaml's values) was the best trial, val {base.value:.2f}"
    if base.state == TrialState.COMPLETE:
        mine, theirs, where = best.value, base.value, "at equal resource"
    elif base.intermediate_values:
        k = max(base.intermediate_values)
        mine = min(v for e, v in best.intermediate_values.items() if e <= k)
        theirs, where = min(base.intermediate_values.values()), f"at epoch {k}, where trial 0 stopped"
    else:
        return True, f"trial 0 (params.yaml's values) ended {base.state.name} before any result"
    if mine < theirs:
        return True, f"trial {best.number} beats trial 0 (params.yaml's values) {where}: val {mine:.2f} < {theirs:.2f}"
    return False, (f"trial {best.number} does not beat trial 0 (params.yaml's values) {where}: val {mine:.2f} "
                   f">= {theirs:.2f}")


def _write_warm_start(path: Path | None, winner: Path | None, why: str) -> None:
    """The warm-start output: the winner's checkpoint, or a placeholder saying why there is none
    (DVC's output always exists, with the same bytes for the same reason)."""
    if path is None:
        return
    if winner is None:
        ckpt.save(path, {"warm_start": None, "reason": why})
        return
    state = ckpt.load(winner)
    state.pop("mlflow_run_id", None)  # the trial's run, not the train stage's
    ckpt.save(path, state)


def _threads_per_worker(cfg: TuneConfig) -> int:
    """torch threads per worker process; 0 keeps torch's default (a single worker)."""
    if cfg.threads or cfg.workers == 1:
        return cfg.threads
    return max(1, (os.cpu_count() or 1) // cfg.workers)  # workers split the cores


def _finished(study: Any) -> int:
    return sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))


def _print_summary(result: Mapping[str, Any]) -> None:
    best = " ".join(f"{k.split('.')[-1]}={v}" for k, v in result["params"].items()) or "params.yaml's values"
    print(f"tune: {result['why']}")
    speed = result.get("images_per_second")
    if speed and speed.get("best") and speed.get("untuned") and result["best_trial"] != result["untuned_trial"]:
        print(f"tune: training speed, best trial {speed['best']:.0f} images/s, trial 0 {speed['untuned']:.0f} images/s")
    print(f"tune: train uses {best}; trials {result['trials']}; {result['epochs_trained']} epochs in "
          f"{result['seconds']:.0f} s; study {result['study_name']}")
