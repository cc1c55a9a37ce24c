"""Worker processes sharing one study and one budget of ``tune.n_trials`` finished trials.

This process is worker 0; ``tune.workers - 1`` spawned processes join it (processes, not
threads: training holds the GIL). Each runs Optuna's ``study.optimize``, which asks, runs the
objective, tells the result as COMPLETE, PRUNED or FAIL and, on an RDB storage, keeps the
trial's heartbeat. Around it one hand-written part stays: the budget check. ``MaxTrialsCallback``
counts after a trial ends, so workers finishing together would each start one more, and it
counts a dead worker's trial and its retry twice; so a worker counts under the storage's budget
lock (:meth:`StudyStorage.budget_lock`) and holds it until ``optimize`` has created the trial.

Crashed workers. On an RDB storage Optuna fails a trial whose heartbeat went silent for
``tune.stale_after_s`` and :func:`retry_stale` queues it again; a trial that never started its
objective (no heartbeat at all) is failed once it is that old. The journal file has no
heartbeat (Optuna 5): there every worker records ``host:pid`` on its trial, and a running trial
whose process is gone (this host; the parent reaps its dead children first) is failed and queued
again with its values. A rerun after a killed stage does the same, so the search continues.
Either way a trial is retried at most :data:`MAX_RETRIES` times.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import socket
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from rnngen import tracking
from rnngen.parent_watch import exit_when_parent_dies
from rnngen.tuning.storage import MAX_RETRIES, lost_database
from rnngen.tuning.trials import UNTUNED_ATTR, SearchContext, describe, objective


def run_workers(ctx: SearchContext, study: Any) -> None:
    """Run the study's trials until its budget is used and no trial is running."""
    left = ctx.cfg.n_trials - budget_used(study.get_trials(deepcopy=False))[0]
    extra = min(ctx.cfg.workers - 1, max(left - 1, 0))  # no idle processes for a few trials left
    spawn = mp.get_context("spawn")  # fork would copy torch's thread pools and MLflow state
    ready = [spawn.Event() for _ in range(extra)]
    procs = [spawn.Process(target=worker_main, args=(ctx, i + 1, ev), name=f"tune-worker-{i + 1}")
             for i, ev in enumerate(ready)]
    threads = torch.get_num_threads()
    if ctx.threads:
        torch.set_num_threads(ctx.threads)
    try:
        for p in procs:
            p.start()
        # Start together, so the workers really share the budget (a spawned worker needs
        # seconds to import torch); a worker that dies while starting is not waited for.
        for p, ev in zip(procs, ready, strict=True):
            while p.is_alive() and not ev.wait(timeout=0.5):
                pass
        run_trials(ctx, 0, finish=True)
        for p in procs:
            p.join()
            if p.exitcode:
                print(f"warning: {p.name} exited with code {p.exitcode}; a trial it left running was retried")
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        torch.set_num_threads(threads)


def worker_main(ctx: SearchContext, worker: int, ready: Any) -> None:
    """Entry point of a spawned worker process."""
    import mlflow

    exit_when_parent_dies()  # a killed stage must not leave workers running trials
    if ctx.threads:
        torch.set_num_threads(ctx.threads)
    mlflow.set_tracking_uri(ctx.tracking_uri)
    run_trials(ctx, worker, finish=False, ready=ready)


def run_trials(ctx: SearchContext, worker: int, *, finish: bool, ready: Any = None) -> None:
    """Run trials until the shared budget is used (or tune.budget_s is spent).

    With ``finish`` it also waits for other workers' trials, retrying those whose worker died,
    so that the study is complete when it returns.
    """
    import optuna

    study = optuna.load_study(study_name=ctx.study_name, storage=ctx.storage.connect(on_stale=retry_stale),
                              pruner=_pruner(ctx))
    n_before = len(study.get_trials(deepcopy=False))
    # Distinct seeds per worker and per resume: a restarted TPE must not replay its startup draws.
    study.sampler = optuna.samplers.TPESampler(
        seed=ctx.cfg.seed + 1009 * worker + n_before, n_startup_trials=ctx.cfg.startup_trials,
        constant_liar=True,
    )
    images = ctx.training_images()
    if ready is not None:
        ready.set()
    while True:
        try:
            with contextlib.ExitStack() as lock:
                lock.enter_context(ctx.storage.budget_lock(ctx.study_name))
                recover_orphans(study, ctx)
                used, running = budget_used(study.get_trials(deepcopy=False))
                spent = ctx.over_budget()
                if used < ctx.cfg.n_trials and not spent:
                    run_trial(study, ctx, worker, lambda t, s: objective(t, ctx, images, sampled=s),
                              release=lock.close)
                    continue
        except Exception as exc:  # the database restarted between trials: wait for it, go on
            if not lost_database(exc):
                raise
            ctx.storage.wait_for_database()
            continue
        if spent and worker == 0 and not running:
            print(f"tune: tune.budget_s ({ctx.cfg.budget_s:g} s) spent after {used} trial(s): no more trials",
                  flush=True)
        if finish and running:
            time.sleep(1.0)
            continue
        return


def run_trial(study: Any, ctx: SearchContext, worker: int, train: Callable[[Any, Callable[[], None]], float],
              release: Callable[[], None]) -> None:
    """One trial of ``train(trial, sampled)`` through ``study.optimize``; ``release`` (the
    budget lock) runs once the trial exists and holds its values (``sampled``).

    A trial stopped by Ctrl-C is queued again, as a killed one would be. A trial that lost the
    database is a dead worker's, failed and queued again with its values once the database is
    back: whether Optuna's tell met no database either (the trial still RUNNING) or the database
    was back in time to record FAIL. That failure is the database's, never the configuration's.
    """
    import optuna

    started: list[Any] = []
    lost: list[BaseException] = []

    def run(trial: Any) -> float:
        started.append(trial)
        try:
            return train(trial, release)
        except Exception as exc:
            if lost_database(exc):
                lost.append(exc)
            raise
        finally:
            release()  # also when sampling failed

    try:
        study.optimize(run, n_trials=1, catch=(Exception,), callbacks=[_printer(worker)])
    except KeyboardInterrupt:
        if started:
            requeue(study, _frozen(study, started[0].number), "was interrupted")
        raise
    except ValueError:  # Optuna's tell refuses a trial another worker already failed as stale
        if not started or _frozen(study, started[0].number).state == optuna.trial.TrialState.RUNNING:
            raise
        print(f"trial {started[0].number}: already failed as stale by another worker and retried")
    except Exception as exc:
        if not lost_database(exc):
            raise
        lost.append(exc)
    if not lost:
        return
    ctx.storage.wait_for_database()
    trial = _frozen(study, started[0].number) if started else None
    if trial is not None and trial.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        requeue(study, trial, "lost the study's database mid-trial")


def _printer(worker: int) -> Callable[[Any, Any], None]:
    def show(study: Any, trial: Any) -> None:
        value = f" val {trial.value:.2f}" if trial.value is not None else ""
        seconds = trial.duration.total_seconds() if trial.duration else 0.0
        print(f"trial {trial.number} {trial.state.name}{value}  {describe(trial.params)}  "
              f"({seconds:.0f} s, worker {worker})", flush=True)

    return show


def _pruner(ctx: SearchContext) -> Any:
    import optuna

    cfg = ctx.cfg
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.prune_startup, n_warmup_steps=0)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=cfg.epochs)
    return optuna.pruners.NopPruner()


def _frozen(study: Any, number: int) -> Any:
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


# ---------------------------------------------------------------------------- the budget


def budget_used(trials: list[Any]) -> tuple[int, int]:
    """``(trials counted toward the budget, trials running)``.

    Finished and running trials count; a trial failed because its worker died and queued
    again does not (its retry does, once it runs).
    """
    from optuna.trial import TrialState

    again = retried(trials)
    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.FAIL)
    used = sum(t.state in counted and t.number not in again for t in trials)
    return used, sum(t.state == TrialState.RUNNING for t in trials)


def retried(trials: list[Any]) -> set[int]:
    """Numbers of the trials that failed with their worker and were queued again: by rnngen
    (journal: user attr ``retry_of``) or by Optuna's retry callback (RDB: ``retry_history``)."""
    out = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    for t in trials:
        out.update(t.system_attrs.get("retry_history", []))
    return out


# ------------------------------------------------------------------------ crashed workers


def recover_orphans(study: Any, ctx: SearchContext) -> None:
    """Fail the running trials whose worker is gone and queue each again: on an RDB storage
    Optuna's heartbeat check, and a trial that never reached its objective (a database restart
    between creating it and starting it leaves it with no worker and no heartbeat to go silent);
    on the journal, the worker's process."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    rdb = not ctx.storage.journal
    if rdb:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # calls retry_stale for each
    else:
        mp.active_children()  # reap this process's dead workers, so that their pids are gone
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if (rdb and "worker" in t.user_attrs) or not is_orphaned(t, now, ctx.cfg.stale_after_s):
            continue  # on an RDB a trial that recorded its worker has a heartbeat
        try:
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        except UpdateFinishedTrialError:
            continue
        tracking.mark_killed(t.user_attrs.get("mlflow_run_id"))
        requeue(study, t, "is gone")


def is_orphaned(trial: Any, now: float, stale_after_s: float) -> bool:
    """A running trial whose worker process (recorded as ``host:pid``) no longer runs on this
    host, or that never recorded a worker and started more than ``stale_after_s`` ago (its
    process died between creating it and starting it)."""
    host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
    if pid.isdigit():
        return host == socket.gethostname() and not _alive(int(pid))
    started = trial.datetime_start.timestamp() if trial.datetime_start else now
    return now - started > stale_after_s


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate it there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def requeue(study: Any, trial: Any, why: str) -> None:
    """Queue a failed ``trial`` again with the same values (at most :data:`MAX_RETRIES` times)."""
    retries = int(trial.user_attrs.get("retries", 0))
    again = retries < MAX_RETRIES and trial.number not in retried(study.get_trials(deepcopy=False))
    if again:
        keep = {k: v for k, v in trial.user_attrs.items() if k == UNTUNED_ATTR}  # a retried trial 0 is trial 0
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number, "retries": retries + 1, **keep})
    print(f"trial {trial.number}: its worker ({trial.user_attrs.get('worker', '?')}) {why}; "
          + ("queued again" if again else "counted as failed"), flush=True)


def retry_stale(study: Any, trial: Any) -> None:
    """Optuna's stale-trial callback on an RDB storage: its retry (at most MAX_RETRIES), with the
    dead trial's MLflow run marked KILLED and a line in the log."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    tracking.mark_killed(trial.user_attrs.get("mlflow_run_id"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the callback is marked experimental
        RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)(study, trial)
    again = len(trial.system_attrs.get("retry_history", [])) < MAX_RETRIES
    print(f"trial {trial.number}: its worker ({trial.user_attrs.get('worker', '?')}) went silent; "
          + ("queued again" if again else "counted as failed"), flush=True)
