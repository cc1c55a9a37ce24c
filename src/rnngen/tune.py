"""The `tune` stage: an Optuna study over learning rate, batch size, hidden size and optimizer.

Every trial trains with the shared loop (:func:`rnngen.train.fit`) on the train split and is
scored by the best validation negative ELBO; the test split is never read. Per-epoch validation
losses feed the pruner (median or Hyperband).

Storage: a journal file under the stage's study folder by default (several processes on one
machine), or any RDB URL (``tune.storage`` or ``$RNNGEN_OPTUNA_STORAGE``, e.g. PostgreSQL) for
workers on many machines. The study name is a digest of what defines the search, so a rerun after
a kill continues the same study and a changed search space starts a new one. ``tune.n_trials``
is a budget shared by all workers: finished trials (complete, pruned, failed) count toward it.

Crashed workers. On an RDB storage (PostgreSQL) Optuna's own parts do it: the storage records
a heartbeat per running trial (``heartbeat_interval`` = ``tune.heartbeat_s``), a worker fails the
trials silent for longer than ``tune.stale_after_s`` (``optuna.storages.fail_stale_trials``) and
``RetryHeartbeatStaleTrialCallback`` queues each again with its parameters. Optuna 5 has no
heartbeat for the journal file, so there rnngen keeps its own: every worker stamps its running
trial (user attrs ``worker`` = host:pid and ``heartbeat``); a running trial whose process is gone
(same host) or whose heartbeat is older than ``tune.stale_after_s`` is marked FAIL and re-queued.
Either way a trial is retried at most :data:`MAX_RETRIES` times.

MLflow: one parent run per study and budget, one nested child run per trial, written here (the
Optuna MLflow callback is deprecated). Test hook: ``$RNNGEN_TUNE_FAIL_TRIAL`` (comma-separated
trial numbers) makes those trials raise after their first epoch, like a crashing trial would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import socket
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch

from rnngen import checkpoint as ckpt
from rnngen import data, tracking
from rnngen.config import ConfigError, from_dict, gather, section, to_flat_dict
from rnngen.errors import UserError
from rnngen.files import write_json
from rnngen.models import MODELS, build_model, model_choice, model_class, model_config
from rnngen.train import TrainConfig, fit, resolve_device, warm_start_identity

STORAGE_ENV = "RNNGEN_OPTUNA_STORAGE"
FAIL_TRIAL_ENV = "RNNGEN_TUNE_FAIL_TRIAL"
JOURNAL_FILE = "journal.log"
OPTIMIZERS = ("adam", "sgd")
#: how often a trial whose worker died is re-queued before it counts as failed
MAX_RETRIES = 2
#: settings that do not change what is searched: editing them continues the same study
_RUNTIME = ("workers", "threads", "device", "storage", "heartbeat_s", "stale_after_s")
_NOT_SEARCH = ("n_trials", "budget_s", *_RUNTIME)
#: the file in the study folder that holds successive halving's trial checkpoints
HALVING_DIR = "halving"


#: the ``train.*`` keys every trial inherits from params.yaml (declared as params of the tune
#: stage in dvc.yaml); the search sets lr, batch_size and optimizer, and tune.* sets the seed,
#: device, epochs and patience of a trial
INHERITED_TRAIN_KEYS = ("momentum", "grad_clip", "augment_shift", "augment_rotate", "amp", "kl_warmup_epochs",
                        "lr_schedule", "weight_decay", "seed", "epochs", "patience")
#: of those, the ones only successive halving reads (its trials are the real training's start);
#: the median and Hyperband trials take tune.seed, tune.epochs and tune.patience instead
HALVING_TRAIN_KEYS = ("seed", "epochs", "patience")


class TuneError(UserError, RuntimeError):
    """The search produced no usable result (e.g. every trial failed); the message says why."""


@dataclass(frozen=True)
class LogRange:
    """A positive float range searched on a log scale."""

    low: float = 1e-4
    high: float = 3e-3

    def problems(self) -> list[str]:
        out = []
        if not self.low > 0:
            out.append(f"low: must be > 0 (log scale), got {self.low}")
        if not self.high > self.low:
            out.append(f"high: [{self.low}, {self.high}] is an empty or inverted range; need low < high")
        return out


@dataclass(frozen=True)
class TuneConfig:
    #: the budget of finished trials shared by all workers; 0 = no search (params.yaml values)
    n_trials: int = 0
    #: processes on this machine sharing the study
    workers: int = 1
    #: torch threads per worker process; 0 = torch's default (one worker) or cores / workers.
    #: 1 by default: these small models gain little from more, and on a busy CPU OpenMP
    #: threads that wait on each other slow training down several times
    threads: int = 1
    #: sampler seed; also the training seed of every trial
    seed: int = 0
    #: random trials before TPE models the results
    startup_trials: int = 3
    #: median / hyperband: prune a trial on its epoch curve. halving: synchronous successive
    #: halving on the real schedule: n_trials configurations train tune.epochs epochs of
    #: train.epochs, the best 1 / halving_rate continue to halving_rate times as many, and so on
    pruner: Literal["median", "hyperband", "halving", "none"] = "median"
    #: halving: the share kept at each rung is 1 / halving_rate
    halving_rate: int = 3
    #: halving: the train stage continues the winner's training instead of starting afresh
    warm_start: bool = False
    #: wall-clock seconds for the whole stage: no trial starts after it and running ones stop
    #: at their next epoch (pruned); 0 = no limit
    budget_s: float = 0.0
    #: model families searched (model.name's ``hidden`` set applies to each); empty = model.name
    models: list[str] = field(default_factory=list)
    #: median pruner: completed trials before it prunes anything
    prune_startup: int = 2
    lr: LogRange = LogRange()
    batch_size: list[int] = field(default_factory=lambda: [32, 64])
    #: sets every hidden-size field of the model (``hidden_fields``, e.g. DRAW's enc/dec)
    hidden: list[int] = field(default_factory=lambda: [32, 64, 128])
    optimizer: list[str] = field(default_factory=lambda: list(OPTIMIZERS))
    #: training epochs per trial (the pruner's steps)
    epochs: int = 3
    patience: int = 2
    #: first N training images per trial (the split is shuffled); 0 = all
    train_images: int = 2000
    device: str = "auto"
    #: RDB URL (postgresql://...); empty = journal file in the study folder
    storage: str = ""
    heartbeat_s: float = 10.0
    #: a running trial without a heartbeat for this long is retried
    stale_after_s: float = 120.0

    def problems(self) -> list[str]:
        out = []
        for key in ("n_trials", "threads", "startup_trials", "prune_startup", "train_images"):
            if getattr(self, key) < 0:
                out.append(f"{key}: must be >= 0, got {getattr(self, key)}")
        for key in ("workers", "epochs", "patience"):
            if getattr(self, key) < 1:
                out.append(f"{key}: must be >= 1, got {getattr(self, key)}")
        for key in ("batch_size", "hidden"):
            values = list(getattr(self, key))
            if not values:
                out.append(f"{key}: empty list of choices; give at least one")
            elif any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                out.append(f"{key}: choices must be integers >= 1, got {values}")
        if self.halving_rate < 2:
            out.append(f"halving_rate: must be >= 2 (keep 1 / rate of the trials per rung), got {self.halving_rate}")
        if self.budget_s < 0:
            out.append(f"budget_s: must be >= 0 seconds (0 = no limit), got {self.budget_s}")
        if self.pruner == "halving" and self.workers != 1:
            out.append(f"workers: successive halving runs its rungs in one process; got {self.workers} "
                       "(set tune.workers: 1, or tune.pruner: hyperband for parallel workers)")
        if self.warm_start and self.pruner != "halving":
            out.append(f"warm_start: only successive halving trains on the real schedule; got pruner "
                       f"{self.pruner!r} (set tune.pruner: halving, or warm_start: false)")
        if self.warm_start and self.train_images:
            out.append(f"warm_start: the train stage trains on every image, the trials on the first "
                       f"{self.train_images}; set tune.train_images: 0 to continue the winner")
        unknown_models = [m for m in self.models if m not in MODELS]
        if unknown_models:
            out.append(f"models: unknown {unknown_models}; choose from {', '.join(MODELS)}")
        if not list(self.optimizer):
            out.append("optimizer: empty list of choices; give at least one of adam, sgd")
        unknown = [o for o in self.optimizer if o not in OPTIMIZERS]
        if unknown:
            out.append(f"optimizer: unknown {unknown}; choose from {', '.join(OPTIMIZERS)}")
        if not self.heartbeat_s > 0:
            out.append(f"heartbeat_s: must be > 0, got {self.heartbeat_s}")
        if not self.stale_after_s > 2 * self.heartbeat_s:
            out.append(f"stale_after_s: must exceed 2 x heartbeat_s ({2 * self.heartbeat_s}), "
                       f"got {self.stale_after_s}")
        if self.storage and "://" not in self.storage:
            out.append(f"storage: expected a database URL such as postgresql://user@host/db, "
                       f"got {self.storage!r} (leave empty for the journal file)")
        out.extend(TrainConfig(device=self.device).problems())  # an unknown device
        return out


def tune_config(params: Mapping[str, Any]) -> TuneConfig:
    return section(TuneConfig, params, "tune")


def inherited_train_config(params: Mapping[str, Any]) -> TrainConfig:
    """params.yaml's values of :data:`INHERITED_TRAIN_KEYS` (code defaults for the rest): only
    these ``train.*`` keys are read, so only they rerun the tune stage."""
    train = params.get("train") or {}
    return from_dict(TrainConfig, {k: train[k] for k in INHERITED_TRAIN_KEYS if k in train}, "train")


def trial_train_config(cfg: TuneConfig, base: TrainConfig, hp: Mapping[str, Any]) -> TrainConfig:
    """A trial's training settings: ``base`` (the inherited train.* keys), tune.* and the
    sampled values. Successive halving keeps train.seed, epochs and patience: its trials are
    the first epochs of the training the train stage would run with the same values."""
    own = {} if cfg.pruner == "halving" else {"seed": cfg.seed, "epochs": cfg.epochs, "patience": cfg.patience}
    return dataclasses.replace(base, device=cfg.device, lr=hp["lr"], batch_size=hp["batch_size"],
                               optimizer=hp["optimizer"], time_budget_s=0.0, **own)


# ------------------------------------------------------------------------------- storage


@dataclass(frozen=True)
class StorageSpec:
    """Where the study lives: a journal file path or an RDB URL (picklable, for workers)."""

    journal: str = ""
    url: str = ""
    #: RDB: Optuna's heartbeat interval and grace period (tune.heartbeat_s, stale_after_s)
    heartbeat_s: float = 0.0
    stale_after_s: float = 0.0

    def describe(self) -> str:
        """The location without passwords, for logs and output files."""
        if self.journal:
            return self.journal
        from sqlalchemy.engine import make_url

        return make_url(self.url).render_as_string(hide_password=True)

    def connect(self) -> Any:
        import optuna

        if self.journal:
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            return JournalStorage(JournalFileBackend(self.journal))
        engine: dict[str, Any] = {}
        if self.url.startswith(("postgresql", "mysql")):
            engine["connect_args"] = {"connect_timeout": 10}  # fail fast on a dead host
        heartbeat: dict[str, Any] = {}
        if self.heartbeat_s:
            heartbeat = {"heartbeat_interval": max(1, round(self.heartbeat_s)),
                         "grace_period": max(1, round(self.stale_after_s)),
                         "heartbeat_stale_trial_callback": _retry_stale}
        # Opening a fresh database creates Optuna's tables; two workers doing it at the same
        # instant collide in PostgreSQL's catalog (a UniqueViolation), so they take turns.
        lock = self._advisory_lock("optuna-schema") if self.url.startswith("postgresql") else contextlib.nullcontext()
        with lock, warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
            return optuna.storages.RDBStorage(self.url, engine_kwargs=engine, **heartbeat)

    def recover_stale(self, study: Any, stale_after_s: float) -> None:
        """Fail the running trials whose worker is gone and queue each again (see the module
        docstring: Optuna's own on an RDB storage, rnngen's on the journal)."""
        if self.journal:
            _recover_stale(study, stale_after_s)
            return
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # calls _retry_stale for each

    def heartbeat(self, storage: Any, trial: Any) -> Callable[[], None]:
        """One beat for the running ``trial``: Optuna's heartbeat record on an RDB storage,
        rnngen's trial attributes on the journal."""
        if self.journal:
            return lambda: trial.set_user_attr("heartbeat", time.time())
        trial_id = trial._trial_id  # what Optuna's own optimize loop passes; no public accessor
        return lambda: storage.record_heartbeat(trial_id)

    @contextlib.contextmanager
    def budget_lock(self, study: str) -> Iterator[None]:
        """Held while a worker counts the budget of ``study`` and creates a trial, so workers
        never overshoot it. Journal: a POSIX flock, which the kernel frees when a holder is
        killed. PostgreSQL: a session advisory lock, which the server frees when a holder's
        connection drops, so workers on many machines share it. Other databases take no lock:
        two workers asking in the same instant can overshoot the budget by a trial."""
        if self.url.startswith("postgresql"):
            with self._advisory_lock(f"tune-budget:{study}"):
                yield
            return
        if not self.journal:
            yield
            return
        import fcntl

        with open(self.journal + ".budget-lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


    @contextlib.contextmanager
    def _advisory_lock(self, name: str) -> Iterator[None]:
        """PostgreSQL session advisory lock ``name``: the server frees it if the holder dies."""
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        key = int.from_bytes(hashlib.sha256(f"rnngen:{name}".encode()).digest()[:8], "big", signed=True)
        engine = sqlalchemy.create_engine(self.url, poolclass=NullPool, connect_args={"connect_timeout": 10})
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
                try:
                    yield
                finally:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        finally:
            engine.dispose()


def open_storage(cfg: TuneConfig, study_dir: Path) -> tuple[StorageSpec, Any]:
    """The storage named by ``$RNNGEN_OPTUNA_STORAGE``, ``tune.storage`` or the default journal
    file; an unreachable or unusable one is a ConfigError before any trial runs."""
    url = os.environ.get(STORAGE_ENV) or cfg.storage
    source = f"${STORAGE_ENV}" if os.environ.get(STORAGE_ENV) else "tune.storage"
    if not url:
        study_dir.mkdir(parents=True, exist_ok=True)
        spec = StorageSpec(journal=str((study_dir / JOURNAL_FILE).resolve()))
        return spec, spec.connect()
    if "://" not in url:
        raise ConfigError([f"{source}: expected a database URL such as postgresql://user@host/db, "
                           f"got {url!r}"])
    if url.startswith("sqlite") and cfg.workers > 1:
        raise ConfigError([f"{source}: SQLite cannot serve {cfg.workers} parallel workers; leave "
                           "the storage empty (journal file) or use PostgreSQL"])
    spec = StorageSpec(url=url, heartbeat_s=cfg.heartbeat_s, stale_after_s=cfg.stale_after_s)
    try:
        storage = spec.connect()
    except Exception as exc:  # driver missing, bad URL, refused connection, auth: all fixable
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        hint = "; install its driver (e.g. pip install psycopg2-binary)" if isinstance(exc, ImportError) else ""
        raise ConfigError([f"{source}: cannot open Optuna storage {_redact(url)}: "
                           f"{type(exc).__name__}: {first}{hint}"]) from exc
    study_dir.mkdir(parents=True, exist_ok=True)  # DVC expects the declared output folder
    return spec, storage


def _redact(url: str) -> str:
    try:
        return StorageSpec(url=url).describe()
    except Exception:
        return url.split("@")[-1]


# -------------------------------------------------------------------------- the search


def study_name(cfg: TuneConfig, base: TrainConfig, model_name: str, model_cfg: Any,
               hidden_fields: tuple[str, ...], split_info: Mapping[str, Any],
               families: tuple[Family, ...] = ()) -> str:
    """``<model>-<digest>`` of the search space, trial settings, model and data split.

    Budget, workers, device and storage are left out: a bigger budget or more workers continue
    the same study. The model's hidden sizes are left out because the search sets them.
    """
    search = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_SEARCH}
    model = {k: v for k, v in dataclasses.asdict(model_cfg).items() if k not in hidden_fields}
    keys = INHERITED_TRAIN_KEYS if cfg.pruner == "halving" else set(INHERITED_TRAIN_KEYS) - set(HALVING_TRAIN_KEYS)
    inherited = {k: getattr(base, k) for k in sorted(keys)}
    spec = {"tune": search, "train": inherited, "model": [model_name, model], "split": split_info}
    if len(families) > 1 or (families and families[0].name != model_name):  # tune.models: each family's config
        spec["model"] = {f.name: {k: v for k, v in f.section.items() if k not in f.hidden_fields} for f in families}
        model_name = "+".join(f.name for f in families)
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()
    return f"{model_name}-{digest[:12]}"


class Family(NamedTuple):
    """A model family the search may pick: its name, its params.yaml section (validated) and the
    fields the searched hidden size sets."""

    name: str
    section: dict[str, Any]
    hidden_fields: tuple[str, ...]


def families(cfg: TuneConfig, params: Mapping[str, Any]) -> tuple[Family, ...]:
    """tune.models (or model.name alone), each with its section of params.yaml's ``model:``."""
    models = params.get("model") or {}
    names = list(dict.fromkeys(cfg.models)) or [model_choice(params).name]
    return tuple(Family(n, dataclasses.asdict(model_config(n, models.get(n))), _hidden_fields(n)) for n in names)


@dataclass(frozen=True)
class _Job:
    """What every worker process needs to run trials (picklable for spawn)."""

    cfg: TuneConfig
    train: TrainConfig
    families: tuple[Family, ...]
    split_dir: str
    binarization: str
    storage: StorageSpec
    study_name: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    threads: int
    #: time.time() after which no trial starts and running ones stop (tune.budget_s); 0 = none
    deadline: float = 0.0
    #: successive halving: the folder of its trials' checkpoints, and what they must match
    halving_dir: str = ""
    identity: dict[str, str] = field(default_factory=dict)

    def family(self, name: str) -> Family:
        return next(f for f in self.families if f.name == name)

    def over_budget(self) -> bool:
        return bool(self.deadline) and time.time() > self.deadline


def search(params: Mapping[str, Any], split_dir: Path, study_dir: Path, out: Path,
           warm_start: Path | None = None) -> dict[str, Any]:
    """Run or continue the study; write the best hyperparameters to ``out`` (JSON) as dotted
    overrides ``{"params": {"train.lr": ...}}`` that the train stage applies, and (when given)
    ``warm_start``: the winner's training state with ``tune.warm_start``, else a placeholder."""
    cfg, choice, base, fams = _validate(params)
    if cfg.n_trials == 0:
        result = {"params": {}, "note": "tune.n_trials is 0: train uses params.yaml's values"}
        Path(study_dir).mkdir(parents=True, exist_ok=True)  # an empty study: DVC's persist output exists
        write_json(out, result)
        _write_warm_start(warm_start, None, "tune.n_trials is 0")
        print("tune: n_trials is 0, no search")
        return result

    t_start = time.perf_counter()
    deadline = time.time() + cfg.budget_s if cfg.budget_s else 0.0
    split_info = data.split_info(split_dir)
    storage_spec, storage = open_storage(cfg, Path(study_dir))
    where = str(Path(study_dir) / JOURNAL_FILE) if storage_spec.journal else storage_spec.describe()
    name = study_name(cfg, base, choice.name, choice.config, _hidden_fields(choice.name), split_info, fams)
    experiment = _experiment_config(params).experiment + "-tune"
    experiment_id = tracking.setup(experiment)  # fails fast on an unreachable store

    import mlflow
    import optuna

    study = optuna.create_study(study_name=name, storage=storage, direction="minimize",
                                load_if_exists=True)
    halving_dir = Path(study_dir) / HALVING_DIR / name
    rerun = cfg.pruner == "halving" and not _finished_halving(study, cfg, halving_dir)
    if rerun and study.get_trials(deepcopy=False):
        # A halving search ranks whole rungs in one process; one cut off (killed), or run with
        # another n_trials, is run again from the start rather than pieced together.
        print(f"tune: study {name} holds a halving search that did not finish (or had another n_trials): "
              "starting it over")
        optuna.delete_study(study_name=name, storage=storage)
        study = optuna.create_study(study_name=name, storage=storage, direction="minimize")
    if rerun and halving_dir.exists():
        shutil.rmtree(halving_dir)  # its trials' checkpoints go too
    parent_key = f"mlflow_parent_run:{cfg.n_trials}"
    parent_id = tracking.live_run(study.user_attrs.get(parent_key))
    with tracking.run(run_id=parent_id, run_name=None if parent_id else f"tune {name}") as parent:
        if parent_id is None:
            study.set_user_attr(parent_key, parent.info.run_id)
            mlflow.log_params({
                **{f"tune.{k}": v for k, v in to_flat_dict(cfg).items() if k not in _RUNTIME},
                "model.name": choice.name, "study_name": name,
                **{f"split.{k}": split_info.get(k) for k in ("seed", "binarization")},
            })
        mlflow.set_tags({"optuna.study": name, "optuna.storage": where, **tracking.git_state(),
                         **{f"tune.{k}": getattr(cfg, k) for k in _RUNTIME if k != "storage"}})
        job = _Job(
            cfg=cfg, train=base, families=fams, split_dir=str(Path(split_dir).resolve()),
            binarization=split_info["binarization"], storage=storage_spec, study_name=name,
            tracking_uri=mlflow.get_tracking_uri(), experiment_id=experiment_id,
            parent_run_id=parent.info.run_id, threads=_threads_per_worker(cfg), deadline=deadline,
            halving_dir=str(halving_dir.resolve()),
            identity=warm_start_identity(Path(split_dir), cfg.train_images) if rerun else {},
        )
        finished_before = _finished(study)
        if rerun:
            _halving(job, study)
        elif cfg.pruner == "halving":
            print(f"tune: study {name} holds this halving search, finished: its result stands")
        else:
            _run_workers(job, study)
        study = optuna.load_study(study_name=name, storage=storage)
        # Only what the search decided (no run id, no storage path): the same search writes the
        # same bytes on any store, so DVC does not retrain for a new machine or mlflow.db.
        result = _summarize(study, job)
        _log_parent(study, result)
    winner = halving_dir / f"trial-{result['best_trial']}.pt" if cfg.warm_start else None
    if winner is not None:
        result["warm_start"] = {"trial": result["best_trial"], "epochs": len(study.best_trial.intermediate_values)}
    write_json(out, result)
    _write_warm_start(warm_start, winner, "tune.warm_start is false")
    run = {"seconds": round(time.perf_counter() - t_start, 2),
           "trials_run_now": _finished(study) - finished_before, "mlflow_parent_run_id": parent.info.run_id}
    _print_summary({**result, **run})
    return {**result, **run}


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


def _validate(params: Mapping[str, Any]) -> tuple[TuneConfig, Any, TrainConfig, tuple[Family, ...]]:
    """Every problem with tune.*, model.*, the inherited train.* keys and tracking.* at once,
    before any data or compute."""
    problems: list[str] = []
    cfg = choice = base = None
    fams: tuple[Family, ...] = ()
    try:
        built = gather(tune=lambda: tune_config(params), model=lambda: model_choice(params),
                       train=lambda: inherited_train_config(params),
                       tracking=lambda: _experiment_config(params))
        cfg, choice, base = built["tune"], built["model"], built["train"]
    except ConfigError as exc:
        problems += exc.problems
    if cfg is not None and choice is not None:
        try:
            fams = families(cfg, params)
        except ConfigError as exc:
            problems += exc.problems
        for fam in fams:
            for h in cfg.hidden:  # the model's own checks, for every hidden size the search may pick
                try:
                    model_config(fam.name, {**fam.section, **dict.fromkeys(fam.hidden_fields, h)})
                except ConfigError as exc:
                    problems += [f"tune.hidden={h}: {p}" for p in exc.problems]
    if cfg is not None and cfg.device.startswith("cuda") and not torch.cuda.is_available():
        problems.append(f"tune.device: {cfg.device!r} but no CUDA device is available; use auto or cpu")
    if problems or cfg is None or choice is None or base is None:
        raise ConfigError(problems)
    return cfg, choice, base, fams


def _experiment_config(params: Mapping[str, Any]) -> tracking.TrackingConfig:
    """``tracking.experiment`` alone: the one tracking key the tune stage declares and reads."""
    experiment = (params.get("tracking") or {}).get("experiment", tracking.TrackingConfig.experiment)
    return from_dict(tracking.TrackingConfig, {"experiment": experiment}, "tracking")


def _threads_per_worker(cfg: TuneConfig) -> int:
    """torch threads per worker process; 0 keeps torch's default (a single worker)."""
    if cfg.threads or cfg.workers == 1:
        return cfg.threads
    return max(1, (os.cpu_count() or 1) // cfg.workers)  # workers split the cores


def _hidden_fields(model_name: str) -> tuple[str, ...]:
    return tuple(model_class(model_name).hidden_fields)


def _finished(study: Any) -> int:
    return sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))


def _run_workers(job: _Job, study: Any) -> None:
    """This process is worker 0; ``workers - 1`` spawned processes share the study."""
    import multiprocessing as mp

    left = job.cfg.n_trials - budget_used(study.get_trials(deepcopy=False))[0]
    extra = min(job.cfg.workers - 1, max(left - 1, 0))  # no idle processes for a few trials left
    ctx = mp.get_context("spawn")  # fork would copy torch's thread pools and MLflow state
    ready = [ctx.Event() for _ in range(extra)]
    procs = [ctx.Process(target=_worker_main, args=(job, i + 1, ev), name=f"tune-worker-{i + 1}")
             for i, ev in enumerate(ready)]
    threads = torch.get_num_threads()
    if job.threads:
        torch.set_num_threads(job.threads)
    try:
        for p in procs:
            p.start()
        # Start together, so the workers really share the budget (a spawned worker needs
        # seconds to import torch); a worker that dies while starting is not waited for.
        for p, ev in zip(procs, ready, strict=True):
            while p.is_alive() and not ev.wait(timeout=0.5):
                pass
        _work(job, 0, finish=True)
        for p in procs:
            p.join()
            if p.exitcode:
                print(f"warning: {p.name} exited with code {p.exitcode}; a trial it left running was retried")
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        torch.set_num_threads(threads)


def _halving(job: _Job, study: Any) -> None:
    """Synchronous successive halving (Jamieson and Talwalkar 2016; the inner loop of Li et
    al.'s Hyperband, 2018) on the real schedule: every trial is the first epochs of the
    training the train stage would run with its values (train.seed, train.epochs as the
    schedule's length, train.patience), so ranks are taken where the real training is, not
    after a short run of its own. Rung 0 trains tune.n_trials configurations tune.epochs
    epochs each; the best 1 / halving_rate continue from their checkpoints to halving_rate
    times as many epochs, and so on until one is left (or train.epochs is reached, or
    tune.budget_s is spent). Eliminated trials are PRUNED; the winner is COMPLETE, and its
    checkpoint is what ``tune.warm_start`` hands to the train stage."""
    import optuna
    from optuna.trial import TrialState

    cfg, horizon = job.cfg, job.train.epochs
    study.sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=cfg.startup_trials,
                                               constant_liar=True)
    x_train, _ = data.load_split(job.split_dir, "train")
    x_val, _ = data.load_split(job.split_dir, "val")
    if cfg.train_images:
        x_train = x_train[: cfg.train_images]
    Path(job.halving_dir).mkdir(parents=True, exist_ok=True)
    alive = [ask(study, cfg, job.families) for _ in range(cfg.n_trials)]
    hps = {t.number: suggest(t, cfg, job.families) for t in alive}
    value: dict[int, float] = {}
    reached = dict.fromkeys(hps, 0)
    done = dict.fromkeys(hps, False)  # finished its training (early stop or train.epochs)
    rung, out_of_time = min(cfg.epochs, horizon), False
    while True:
        for t in list(alive):
            n = t.number
            if done[n] or reached[n] >= rung:
                continue
            if job.over_budget():
                out_of_time = True
                break
            try:
                value[n], reached[n], done[n] = _segment(t, hps[n], job, x_train, x_val, rung)
            except Exception as exc:  # a failing configuration must not end the search
                t.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:1000])
                print(f"trial {n} failed:\n{traceback.format_exc()}", flush=True)
                study.tell(t, state=TrialState.FAIL)
                alive.remove(t)
        if out_of_time or len(alive) <= 1 or rung >= horizon:
            break
        ranked = sorted(alive, key=lambda t: value[t.number])
        keep = max(1, len(ranked) // cfg.halving_rate)
        for t in ranked[keep:]:
            _eliminate(study, t, job, f"rung of {rung} epochs: not in the best {keep} of {len(ranked)}")
        alive = ranked[:keep]
        if len(alive) == 1:
            break
        rung = min(rung * cfg.halving_rate, horizon)
    if out_of_time:
        print(f"tune: tune.budget_s ({cfg.budget_s:g} s) spent during the rung of {rung} epochs", flush=True)
    scored = [t for t in alive if t.number in value]
    depth = max((reached[t.number] for t in scored), default=0)
    # only results trained equally far (or finished) compete: a shorter curve is not comparable
    final = [t for t in scored if reached[t.number] == depth or done[t.number]]
    for t in alive:
        if t in final:
            study.tell(t, value[t.number])
        else:
            _eliminate(study, t, job, "tune.budget_s spent before it reached the last rung")
    if not final:
        raise TuneError(f"tune.budget_s ({cfg.budget_s:g} s) ran out before any trial finished its first rung "
                        f"of {min(cfg.epochs, horizon)} epochs; raise tune.budget_s or lower tune.epochs")
    winner = min(final, key=lambda t: value[t.number])
    for t in final:
        if t is not winner:
            Path(job.halving_dir, f"trial-{t.number}.pt").unlink(missing_ok=True)


def _finished_halving(study: Any, cfg: TuneConfig, halving_dir: Path) -> bool:
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


def _eliminate(study: Any, trial: Any, job: _Job, why: str) -> None:
    from optuna.trial import TrialState

    trial.set_user_attr("pruned", why)
    study.tell(trial, state=TrialState.PRUNED)
    Path(job.halving_dir, f"trial-{trial.number}.pt").unlink(missing_ok=True)
    print(f"trial {trial.number} PRUNED ({why})", flush=True)


def _segment(trial: Any, hp: dict[str, Any], job: _Job, x_train: Any, x_val: Any, until: int) -> tuple:
    """Train a halving trial on to epoch ``until`` from its checkpoint, logging to its MLflow run
    (reopened); ``(best validation loss, epochs trained, finished)``."""
    import mlflow

    t0 = time.perf_counter()
    _, model, train_cfg = _trial_model(hp, job)
    run_id = trial.user_attrs.get("mlflow_run_id")
    opened = ({"run_id": run_id} if run_id else
              {"run_name": f"trial {trial.number}", "parent_run_id": job.parent_run_id,
               "experiment_id": job.experiment_id,
               "tags": {"optuna.study": job.study_name, "optuna.trial_number": str(trial.number)}})
    with tracking.run(nested=True, **opened) as run:
        if run_id is None:
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            mlflow.log_params({**hp, "trial": trial.number})

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            mlflow.log_metrics(metrics, step=epoch)
            trial.report(metrics["val_loss"], epoch)

        result = fit(model, x_train, x_val, train_cfg, job.binarization, on_epoch=on_epoch, progress=False,
                     checkpoint=Path(job.halving_dir) / f"trial-{trial.number}.pt", identity=job.identity,
                     until_epoch=until)
        mlflow.log_metric("best_val_loss", result.best_val)
    print(f"trial {trial.number} epoch {len(result.history)}/{train_cfg.epochs}: best val {result.best_val:.2f}  "
          f"{_fmt(hp)}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return result.best_val, len(result.history), not result.paused


def _worker_main(job: _Job, worker: int, ready: Any) -> None:
    """Entry point of a spawned worker process."""
    import multiprocessing as mp

    import mlflow

    parent = mp.parent_process()
    if parent is not None:  # a killed stage must not leave workers running trials
        threading.Thread(target=lambda: (parent.join(), os._exit(3)), daemon=True).start()
    if job.threads:
        torch.set_num_threads(job.threads)
    mlflow.set_tracking_uri(job.tracking_uri)
    _work(job, worker, finish=False, ready=ready)


def _work(job: _Job, worker: int, *, finish: bool, ready: Any = None) -> None:
    """Run trials until the shared budget is used.

    With ``finish`` it also waits for other workers' trials, retrying those whose worker died,
    so that the study is complete when it returns.
    """
    import optuna

    storage = job.storage.connect()
    study = optuna.load_study(study_name=job.study_name, storage=storage, pruner=_pruner(job.cfg))
    n_before = len(study.get_trials(deepcopy=False))
    # Distinct seeds per worker and per resume: a restarted TPE must not replay its startup draws.
    study.sampler = optuna.samplers.TPESampler(
        seed=job.cfg.seed + 1009 * worker + n_before, n_startup_trials=job.cfg.startup_trials,
        constant_liar=True,
    )
    x_train, _ = data.load_split(job.split_dir, "train")
    x_val, _ = data.load_split(job.split_dir, "val")
    if job.cfg.train_images:
        x_train = x_train[: job.cfg.train_images]  # the split is already shuffled (seeded)
    if ready is not None:
        ready.set()
    while True:
        with job.storage.budget_lock(job.study_name):
            job.storage.recover_stale(study, job.cfg.stale_after_s)
            used, running = budget_used(study.get_trials(deepcopy=False))
            spent = job.over_budget()
            trial = ask(study, job.cfg, job.families) if used < job.cfg.n_trials and not spent else None
        if spent and worker == 0 and not running:
            print(f"tune: tune.budget_s ({job.cfg.budget_s:g} s) spent after {used} trial(s): no more trials",
                  flush=True)
        if trial is None:
            if finish and running:
                time.sleep(1.0)
                continue
            return
        _run_trial(study, trial, job, worker, x_train, x_val, job.storage.heartbeat(storage, trial))


def _pruner(cfg: TuneConfig) -> Any:
    import optuna

    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.prune_startup, n_warmup_steps=0)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=cfg.epochs)
    return optuna.pruners.NopPruner()


def budget_used(trials: list[Any]) -> tuple[int, int]:
    """``(trials counted toward the budget, trials running)``.

    Finished and running trials count; a trial failed because its worker died and re-queued
    does not (its retry does).
    """
    from optuna.trial import TrialState

    retried = _retried(trials)
    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.FAIL)
    used = sum(t.state in counted and t.number not in retried for t in trials)
    return used, sum(t.state == TrialState.RUNNING for t in trials)


# ---------------------------------------------------------------------- one trial


def _retried(trials: list[Any]) -> set[int]:
    """Numbers of the trials that failed with their worker and were queued again: by rnngen
    (journal: user attr ``retry_of``) or by Optuna's retry callback (RDB: ``retry_history``)."""
    out = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    for t in trials:
        out.update(t.system_attrs.get("retry_history", []))
    return out


def _retry_stale(study: Any, trial: Any) -> None:
    """Optuna's stale-trial callback on an RDB storage: its retry (at most MAX_RETRIES), with the
    dead trial's MLflow run marked KILLED and a line in the log."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    _kill_child_run(trial.user_attrs.get("mlflow_run_id"))
    RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)(study, trial)
    again = len(trial.system_attrs.get("retry_history", [])) < MAX_RETRIES
    print(f"trial {trial.number}: its worker ({trial.user_attrs.get('worker', '?')}) went silent; "
          + ("queued again" if again else "counted as failed"), flush=True)


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@contextlib.contextmanager
def _heartbeat(trial: Any, interval: float, beat_once: Callable[[], None]) -> Iterator[None]:
    """``beat_once()`` now and every ``interval`` seconds so other workers see the trial alive."""
    trial.set_user_attr("worker", _worker_id())
    beat_once()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            beat_once()

    thread = threading.Thread(target=beat, daemon=True, name=f"heartbeat-{trial.number}")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()  # before the trial is told: a finished trial takes no more attributes


def _run_trial(study: Any, trial: Any, job: _Job, worker: int, x_train: Any, x_val: Any,
               beat: Callable[[], None]) -> None:
    import mlflow
    import optuna
    from optuna.trial import TrialState

    cfg, t0 = job.cfg, time.perf_counter()
    state, value = TrialState.FAIL, None
    hp: dict[str, Any] = {}
    with _heartbeat(trial, cfg.heartbeat_s, beat):
        try:
            hp = suggest(trial, cfg, job.families)
            tags = {"optuna.study": job.study_name, "optuna.trial_number": str(trial.number),
                    "optuna.worker": _worker_id()}
            with tracking.run(run_name=f"trial {trial.number}", nested=True, tags=tags,
                              parent_run_id=job.parent_run_id, experiment_id=job.experiment_id) as run:
                trial.set_user_attr("mlflow_run_id", run.info.run_id)
                retry = {k: trial.user_attrs[k] for k in ("retry_of",) if k in trial.user_attrs}
                mlflow.log_params({**hp, "trial": trial.number, **retry})
                try:
                    value = _objective(trial, hp, job, x_train, x_val)
                    state = TrialState.COMPLETE
                    mlflow.log_metric("best_val_loss", value)
                except optuna.TrialPruned:
                    state = TrialState.PRUNED  # a normal end: the child run is FINISHED
                except Exception:
                    mlflow.set_tag("optuna.state", TrialState.FAIL.name)
                    raise  # tracking.run marks the child run FAILED
                mlflow.set_tag("optuna.state", state.name)
        except Exception as exc:  # a failing trial must not end the study
            state, value = TrialState.FAIL, None
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:1000])
            print(f"trial {trial.number} failed:\n{traceback.format_exc()}", flush=True)
    _tell(study, trial, state, value)
    shown = f" val {value:.2f}" if value is not None else ""
    print(f"trial {trial.number} {state.name}{shown}  {_fmt(hp)}  "
          f"({time.perf_counter() - t0:.0f} s, worker {worker})", flush=True)


def search_space(cfg: TuneConfig, fams: tuple[Family, ...]) -> dict[str, Any]:
    """The distributions a trial samples: lr, batch size, hidden size, optimizer (and the model
    family when tune.models names more than one). Passed to ``study.ask`` so that a trial holds
    all its values from the moment it exists: a worker killed at any point leaves a retry with
    the same configuration."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    space: dict[str, Any] = {}
    if len(fams) > 1:
        space["model"] = CategoricalDistribution([f.name for f in fams])
    space["lr"] = FloatDistribution(cfg.lr.low, cfg.lr.high, log=True)
    space["batch_size"] = CategoricalDistribution(list(cfg.batch_size))
    space["hidden"] = CategoricalDistribution(list(cfg.hidden))
    space["optimizer"] = CategoricalDistribution(list(cfg.optimizer))
    return space


def ask(study: Any, cfg: TuneConfig, fams: tuple[Family, ...]) -> Any:
    """A new trial (or a queued retry) with every value of the search space already sampled."""
    return study.ask(fixed_distributions=search_space(cfg, fams))


def suggest(trial: Any, cfg: TuneConfig, fams: tuple[Family, ...]) -> dict[str, Any]:
    """A trial's values (sampled when it was asked, or queued with it)."""
    return {name: trial.params[name] for name in search_space(cfg, fams)}


def _trial_model(hp: Mapping[str, Any], job: _Job) -> tuple[Family, Any, TrainConfig]:
    """The family, the model (initial weights seeded like the train stage's) and the training
    settings of a trial."""
    fam = job.family(hp["model"]) if "model" in hp else job.families[0]
    train_cfg = trial_train_config(job.cfg, job.train, hp)
    # same initial weights for every trial: only the hyperparameters differ
    torch.manual_seed(train_cfg.seed)
    section = {**fam.section, **dict.fromkeys(fam.hidden_fields, hp["hidden"])}
    model = build_model(fam.name, model_config(fam.name, section))
    return fam, model.to(resolve_device(job.cfg.device)), train_cfg


def _objective(trial: Any, hp: dict[str, Any], job: _Job, x_train: Any, x_val: Any) -> float:
    """Train one configuration; the best validation negative ELBO (nats/image)."""
    import mlflow
    import optuna

    cfg = job.cfg
    _, model, train_cfg = _trial_model(hp, job)
    fail = str(trial.number) in os.environ.get(FAIL_TRIAL_ENV, "").split(",")

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        mlflow.log_metrics(metrics, step=epoch)
        if fail:
            raise RuntimeError(f"injected failure in trial {trial.number} (${FAIL_TRIAL_ENV})")
        trial.report(metrics["val_loss"], epoch)
        # Pruning after the last epoch would save nothing and hide a finished result.
        if epoch < cfg.epochs and trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")
        if epoch < cfg.epochs and job.over_budget():
            trial.set_user_attr("stopped", "tune.budget_s")
            raise optuna.TrialPruned(f"tune.budget_s ({cfg.budget_s:g} s) spent after epoch {epoch}")

    result = fit(model, x_train, x_val, train_cfg, job.binarization, on_epoch=on_epoch, progress=False)
    return result.best_val


def _tell(study: Any, trial: Any, state: Any, value: float | None) -> None:
    from optuna.exceptions import UpdateFinishedTrialError

    try:
        # skip_if_finished: another worker may have declared this trial stale meanwhile
        study.tell(trial, value, state=state, skip_if_finished=True)
    except UpdateFinishedTrialError:
        print(f"trial {trial.number}: already failed as stale by another worker and retried")


def _fmt(hp: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}" for k, v in hp.items())


# ----------------------------------------------------------------- crashed workers


def _recover_stale(study: Any, stale_after_s: float) -> None:
    """Journal: fail the running trials whose worker is gone, queue each again with its
    parameters."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = _retried(trials)
    now = time.time()
    for t in trials:
        if t.state != TrialState.RUNNING or not _is_stale(t, now, stale_after_s):
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        except UpdateFinishedTrialError:
            continue
        _kill_child_run(t.user_attrs.get("mlflow_run_id"))
        retries = int(t.user_attrs.get("retries", 0))
        again = retries < MAX_RETRIES and t.number not in retried
        if again:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number, "retries": retries + 1})
        print(f"trial {t.number}: its worker ({t.user_attrs.get('worker', '?')}) is gone; "
              + ("queued again" if again else "counted as failed"), flush=True)


def _is_stale(trial: Any, now: float, stale_after_s: float) -> bool:
    host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
    if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
        return True
    beat = trial.user_attrs.get("heartbeat")
    if beat is None:  # died between creating the trial and its first heartbeat
        beat = trial.datetime_start.timestamp() if trial.datetime_start else now
    return now - float(beat) > stale_after_s


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate it there: rely on heartbeats
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_child_run(run_id: str | None) -> None:
    """Mark a dead trial's MLflow run KILLED instead of leaving it RUNNING forever."""
    if not run_id:
        return
    import mlflow

    try:
        mlflow.MlflowClient().set_terminated(run_id, status="KILLED")
    except mlflow.exceptions.MlflowException:
        pass  # logged to another store (another machine's): its own worker's problem


# -------------------------------------------------------------------------- results


def _summarize(study: Any, job: _Job) -> dict[str, Any]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = _retried(trials)
    count = {s: sum(t.state == s for t in trials) for s in TrialState}
    counts = {
        "complete": count[TrialState.COMPLETE],
        "pruned": count[TrialState.PRUNED],
        "failed": count[TrialState.FAIL] - len(retried),
        "retried": len(retried),
    }
    if not counts["complete"]:
        errors = [t.user_attrs["error"] for t in trials if "error" in t.user_attrs]
        if job.over_budget():
            raise TuneError(f"tune.budget_s ({job.cfg.budget_s:g} s) was spent before any trial completed "
                            f"({counts}); raise tune.budget_s, or lower tune.epochs or tune.train_images")
        raise TuneError(
            f"no trial of study {job.study_name} completed ({counts}); "
            + (f"first error: {errors[0]}" if errors else "widen the search or lower tune.prune_startup")
        )
    best = study.best_trial
    return {
        "params": overrides(best.params, job.families),
        "best_value": best.value,
        "best_trial": best.number,
        "metric": "validation negative ELBO (nats/image), best epoch of the trial",
        "trials": counts,
        "epochs_trained": sum(len(t.intermediate_values) for t in trials),
        "study_name": job.study_name,
    }


def overrides(best: Mapping[str, Any], fams: tuple[Family, ...]) -> dict[str, Any]:
    """A trial's parameters as the dotted params.yaml keys the train stage overrides, with the
    winner's family as ``model.name``."""
    fam = next(f for f in fams if f.name == best["model"]) if "model" in best else fams[0]
    out: dict[str, Any] = {"model.name": fam.name, "train.lr": best["lr"], "train.batch_size": best["batch_size"],
                           "train.optimizer": best["optimizer"]}
    out.update({f"model.{fam.name}.{f}": best["hidden"] for f in fam.hidden_fields})
    return out


def _log_parent(study: Any, result: Mapping[str, Any]) -> None:
    """Best params, the trials table and the standard Optuna plots on the parent run."""
    import mlflow

    mlflow.log_params({f"best.{k}": v for k, v in result["params"].items()})
    mlflow.log_metrics({"best_val_loss": result["best_value"], "epochs_trained": result["epochs_trained"],
                        **{f"trials_{k}": v for k, v in result["trials"].items()}})
    mlflow.log_dict(dict(result), "best_params.json")
    mlflow.log_text(study.trials_dataframe().to_csv(index=False), "trials.csv")
    if result["trials"]["complete"] < 2:
        print("tune: fewer than 2 complete trials, no plots")
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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


def _print_summary(result: Mapping[str, Any]) -> None:
    best = " ".join(f"{k.split('.')[-1]}={v}" for k, v in result["params"].items())
    value = result["best_value"]
    print(f"tune: best trial {result['best_trial']} val {value:.2f} ({best}); "
          f"trials {result['trials']}; {result['epochs_trained']} epochs in "
          f"{result['seconds']:.0f} s; study {result['study_name']}")
