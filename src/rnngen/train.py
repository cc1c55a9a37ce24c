"""The one training loop every model and the tuner share.

``fit`` returns the history and best weights; tracking (MLflow) and tuning (Optuna) hook in
through ``on_epoch``. With a ``checkpoint`` path it saves the full training state after every
epoch and resumes from it only when that is safe (:func:`resume_point`): same model, train
config, binarization, data and code, and a run that was interrupted, not finished. Data
order, dynamic binarization and model noise come from RNG streams restored at epoch
boundaries, so a resumed run on CPU ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from rnngen import checkpoint as ckpt
from rnngen.config import ConfigError, below
from rnngen.data import binarize, split_digest, to_unit
from rnngen.errors import UserError
from rnngen.files import source_digest
from rnngen.models import GenerativeModel, kernels


class NonFiniteLossError(UserError, RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    #: auto picks CUDA when present; or cpu, cuda, cuda:1, ...
    device: str = "auto"
    epochs: int = 60
    batch_size: int = 64
    lr: float = 3e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    #: SGD momentum (ignored by Adam)
    momentum: float = 0.9
    #: stop after this many epochs without a better validation loss
    patience: int = 6
    #: clip the gradient norm to this value; 0 turns clipping off
    grad_clip: float = 10.0
    #: random shifts up to this many pixels, training batches only (0 = off)
    augment_shift: int = 0
    #: random rotations up to this many degrees, training batches only (0 = off)
    augment_rotate: float = 0.0
    #: bfloat16 autocast: on CUDA, and on CPUs with native bfloat16 (AVX512-BF16 or AMX; others
    #: train in fp32 and say so); master weights, cell states and the loss stay fp32
    amp: bool = False
    #: stop after this many seconds of training (0 = no limit); for budgeted benchmarks
    time_budget_s: float = 0.0
    #: data-parallel processes (torchrun, DistributedDataParallel: gloo on CPU, NCCL on CUDA);
    #: batch_size is the global batch, split across them; 1 = this process alone
    processes: int = 1
    #: KL warm-up: the KL term's weight rises linearly from 0 to 1 over this many epochs
    #: (0 = off). Stops DRAW's posterior collapse (KL -> 0, the model draws the mean image).
    kl_warmup_epochs: float = 0.0
    #: constant, or cosine: the learning rate falls from lr to 0 along a half cosine over
    #: ``epochs`` (Loshchilov and Hutter 2017, SGDR eq. 5 without restarts), stepped per batch
    lr_schedule: Literal["constant", "cosine"] = "constant"
    #: weight decay: decoupled from the gradient for Adam (AdamW, Loshchilov and Hutter 2019),
    #: the classic L2 term for SGD; 0 = off
    weight_decay: float = 0.0

    def problems(self) -> list[str]:
        out = below(self, epochs=1, batch_size=1, patience=1, grad_clip=0, augment_shift=0, augment_rotate=0,
                    kl_warmup_epochs=0, processes=1, weight_decay=0)
        if 1 <= self.batch_size < self.processes:
            out.append(f"batch_size: {self.batch_size} cannot be split across {self.processes} processes; "
                       "batch_size is the global batch, so give at least one image per process")
        if not self.lr > 0:
            out.append(f"lr: learning rate must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            out.append(f"momentum: must be in [0, 1), got {self.momentum}")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            out.append(f"device: expected auto, cpu or cuda[:N], got {self.device!r}")
        return out


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val: float = math.inf
    best_weights: dict[str, Tensor] = field(default_factory=dict)
    stopped_early: bool = False
    #: the checkpoint's epoch training continued after (0: trained from epoch 1)
    resumed_from: int = 0
    #: True when the checkpoint already held this exact, finished training (nothing trained now)
    reused: bool = False
    #: True when fit stopped at ``until_epoch`` before the end: the checkpoint continues it
    paused: bool = False


EpochHook = Callable[[int, dict[str, float]], None]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bfloat16 GEMMs natively (AVX512-BF16 or AMX-BF16), where bf16
    autocast pays; elsewhere oneDNN emulates bf16 and it is slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: trust oneDNN's own check
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_enabled(amp: bool, device: torch.device) -> bool:
    """``train.amp`` on this device: always on CUDA, on CPU only with native bfloat16."""
    if not amp:
        return False
    if device.type == "cpu" and not cpu_has_native_bf16():
        print("train.amp: this CPU has no native bfloat16 (AVX512-BF16/AMX); training in fp32", flush=True)
        return False
    return True


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel job (rank 0 of 1 when there is none)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that prints, logs to MLflow and writes checkpoints and outputs."""
        return self.rank == 0


def ranks() -> Ranks:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


@contextlib.contextmanager
def distributed(device: str = "auto") -> Iterator[Ranks]:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1 in the environment) for
    the ``with`` block: NCCL when this process trains on CUDA, gloo on CPU. Without torchrun,
    one process of one."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        yield ranks()
        return
    _exit_with_parent()
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:  # each rank its own GPU: "cuda" below means cuda:LOCAL_RANK
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield ranks()
    finally:
        dist.destroy_process_group()


def _exit_with_parent(interval: float = 0.5) -> None:
    """torchrun starts each worker in a session of its own, so a ``kill -9`` of the job (of
    ``dvc repro``, of torchrun) would leave the workers training and rank 0 writing the
    checkpoint under the next run. A worker whose parent is gone exits at once."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(3)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _all_sum(values: Tensor, r: Ranks) -> Tensor:
    """Sum of ``values`` over the ranks (itself for one process)."""
    if r.world > 1:
        import torch.distributed as dist

        dist.all_reduce(values)
    return values


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError([f"{key}: {name!r} but no CUDA device is available; use auto or cpu"])
    return torch.device(name)


def make_optimizer(model: GenerativeModel, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            decoupled_weight_decay=True)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                   batches_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """``train.lr_schedule``: None for constant; cosine decays to 0 over ``cfg.epochs`` epochs,
    one step per batch."""
    if cfg.lr_schedule == "constant":
        return None
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * batches_per_epoch)


def augment(x: Tensor, shift: int, rotate: float, generator: torch.Generator) -> Tensor:
    """Random per-image shift (pixels) and rotation (degrees) of ``(B, 1, 28, 28)`` grey images.

    One affine grid for the whole batch with per-image parameters; torchvision's v2
    RandomAffine would draw one transform per call, i.e. the same for every image.
    """
    b = x.shape[0]
    angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(rotate)
    t = (torch.rand(b, 2, generator=generator) * 2 - 1) * (2 * shift / 28)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def prepare_batch(
    x: Tensor, binarization: str, cfg: TrainConfig | None, generator: torch.Generator
) -> Tensor:
    """uint8 ``(B, 28, 28)`` -> model input ``(B, 1, 28, 28)``, augmented when ``cfg`` asks."""
    grey = to_unit(x)
    if cfg is not None and (cfg.augment_shift or cfg.augment_rotate):
        grey = augment(grey, cfg.augment_shift, cfg.augment_rotate, generator)
    return binarize(grey, binarization, generator)


def kl_weight(warmup_epochs: float, progress_epochs: float) -> float:
    """Weight of the KL term after ``progress_epochs`` epochs of a linear warm-up."""
    if warmup_epochs <= 0:
        return 1.0
    return min(1.0, progress_epochs / warmup_epochs)


def evaluate_nelbo(
    model: GenerativeModel, x: Tensor, binarization: str, batch_size: int, seed: int
) -> float:
    """Mean negative ELBO (nats/image) over uint8 images ``x``, with a fixed binarization seed.
    In a data-parallel job each rank scores its share of every batch and the sums are added."""
    gen = torch.Generator().manual_seed(seed)
    device = model.device
    r = ranks()
    total = torch.zeros((), dtype=torch.float64, device=device)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = prepare_batch(x[start : start + batch_size], binarization, None, gen)  # all of it: same draws
            mine = torch.tensor_split(xb, r.world)[r.rank].to(device)
            if len(mine):
                total += model(mine).nelbo.sum().double()
    return float(_all_sum(total, r)) / len(x)


Phase = Literal["training", "trained", "registered"]


def fingerprint(
    model: GenerativeModel, cfg: TrainConfig, binarization: str, identity: Mapping[str, str] | None = None
) -> dict[str, str]:
    """What a checkpoint must match to be resumed, part by part: the model and train config
    (the device and the number of processes aside), the binarization, and ``identity`` (the train stage passes the
    split's digest as ``data`` and rnngen's source digest as ``code``)."""
    train = dataclasses.asdict(cfg)
    train.pop("device")
    train.pop("processes")  # same global batch, same curve: a checkpoint resumes on any number

    def digest(obj: Any) -> str:
        return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]

    return {"model": digest(ckpt.model_spec(model)), "train": digest(train), "binarization": binarization,
            **dict(identity or {})}


def warm_start_fingerprint(model: GenerativeModel, cfg: TrainConfig, binarization: str,
                           identity: Mapping[str, str]) -> dict[str, str]:
    """What a tune stage's halving trial records and the train stage checks before continuing
    it: :func:`fingerprint` with the time budget aside (trials have none; the train stage's
    counts from its own start) and ``identity`` = :func:`rnngen.tune.warm_start_identity`."""
    return fingerprint(model, dataclasses.replace(cfg, time_budget_s=0.0), binarization, identity)


def warm_start_identity(split_dir: str | Path, train_images: int = 0) -> dict[str, str]:
    """The identity part of :func:`warm_start_fingerprint`: the split (and how many of its
    training images a trial saw) and the training code (this module's import closure)."""
    digest = split_digest(split_dir) + (f"[:{train_images}]" if train_images else "")
    return {"data": digest, "code": source_digest(__name__)}


def continue_warm_start(path: str | Path | None, checkpoint: str | Path, model: GenerativeModel, cfg: TrainConfig,
                        binarization: str, split_dir: str | Path, expected: Mapping[str, str]) -> int:
    """Seed ``checkpoint`` with the tune stage's winner (``path``, written with
    ``tune.warm_start``) when it is the start of exactly this training: same model, train
    config (time budget aside), binarization, split and training code. Returns the epoch it
    continues after; 0 (and one line saying why) when there is none or it does not match."""
    if path is None or not Path(path).is_file():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("warm_start", True) is None:  # the placeholder: no warm start this time
        return 0
    want = warm_start_fingerprint(model, cfg, binarization, warm_start_identity(split_dir))
    found = state.get("fingerprint") if isinstance(state.get("fingerprint"), dict) else {}
    differs = sorted(k for k in {*want, *found} if want.get(k) != found.get(k))
    if differs:
        print(f"warm start {path} was trained with other {', '.join(differs)}: not continued, training "
              "from epoch 1", flush=True)
        return 0
    ckpt.save(checkpoint, {**state, "fingerprint": dict(expected), "phase": "training"})
    print(f"warm start: continuing the tune stage's winner after epoch {state['epoch']}", flush=True)
    return int(state["epoch"])


@dataclass(frozen=True)
class ResumePoint:
    """What :func:`fit` does with an existing checkpoint: continue ``state`` or start afresh."""

    #: the checkpoint's state to continue from; None: train from epoch 1
    state: dict[str, Any] | None
    #: one line saying why, printed by fit and recorded by the train stage
    reason: str

    @property
    def epoch(self) -> int:
        return int(self.state["epoch"]) if self.state else 0

    @property
    def complete(self) -> bool:
        """Training already finished for exactly this fingerprint (only the registry step
        failed): reuse the result, do not retrain."""
        return bool(self.state) and self.state.get("phase") == "trained"


def resume_point(checkpoint: str | Path | None, expected: Mapping[str, str]) -> ResumePoint:
    """Decide whether ``checkpoint`` may be resumed under fingerprint ``expected``.

    Never resumed: a checkpoint of a run that finished (registered), and one written with any
    other model, train config, binarization, data or code. Resumed: an interrupted run (phase
    ``training``) and a finished training whose registration failed (phase ``trained``).
    """
    if checkpoint is None or not Path(checkpoint).is_file():
        return ResumePoint(None, "no checkpoint: training from epoch 1")
    state = ckpt.load(checkpoint)
    where = f"checkpoint {checkpoint}"
    if state.get("phase") == "registered":
        return ResumePoint(None, f"{where} is of a finished, registered run: training afresh from epoch 1")
    found = state.get("fingerprint")
    found = found if isinstance(found, dict) else {}
    differs = sorted(k for k in {*expected, *found} if found.get(k) != expected.get(k))
    if differs:
        return ResumePoint(None, f"{where} was written with other {', '.join(differs)}: training from epoch 1")
    if state.get("phase") == "trained":
        return ResumePoint(state, f"{where} holds this exact training, finished after epoch {state['epoch']} "
                                  "but not registered: reusing it, no retraining")
    return ResumePoint(state, f"resuming {where} after epoch {state['epoch']}")


def mark_registered(checkpoint: str | Path, **record: Any) -> None:
    """Mark the checkpoint's run finished (registered): it is never resumed again."""
    if Path(checkpoint).is_file():
        state = ckpt.load(checkpoint)
        ckpt.save(checkpoint, {**state, "phase": "registered", **record})


def fit(
    model: GenerativeModel,
    train_x: Tensor,
    val_x: Tensor,
    cfg: TrainConfig,
    binarization: str,
    *,
    checkpoint: str | Path | None = None,
    identity: Mapping[str, str] | None = None,
    on_epoch: EpochHook | None = None,
    extra_state: dict[str, Any] | None = None,
    progress: bool = True,
    until_epoch: int | None = None,
) -> FitResult:
    """Train ``model`` on uint8 images; early-stop on validation negative ELBO.

    With ``checkpoint`` the full training state is saved after every epoch and resumed by the
    rules of :func:`resume_point` (fingerprint: :func:`fingerprint` with ``identity``).
    ``on_epoch(epoch, metrics)`` runs after each epoch (log, prune: it may raise), on rank 0 of
    a data-parallel job (:func:`distributed`), which alone prints and writes the checkpoint.
    ``extra_state`` is stored in the checkpoint (e.g. the MLflow run id). ``until_epoch`` pauses
    the run after that epoch, its checkpoint left resumable: a later call with the same
    arguments continues it exactly as if it had not stopped (the tune stage's successive
    halving trains its survivors that way, on the real schedule of ``cfg.epochs``).
    """
    device = model.device
    if device.type == "cpu":
        kernels.keep_freed_memory()
    precision = torch.get_float32_matmul_precision()
    if cfg.amp and device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for the GEMMs autocast leaves in fp32
    try:
        return _fit(model, train_x, val_x, cfg, binarization, checkpoint, identity, on_epoch, extra_state,
                    progress, until_epoch)
    finally:
        torch.set_float32_matmul_precision(precision)  # no process-wide TF32 left behind


def _fit(
    model: GenerativeModel, train_x: Tensor, val_x: Tensor, cfg: TrainConfig, binarization: str,
    checkpoint: str | Path | None, identity: Mapping[str, str] | None, on_epoch: EpochHook | None,
    extra_state: dict[str, Any] | None, progress: bool, until_epoch: int | None = None,
) -> FitResult:
    device = model.device
    r = ranks()
    torch.manual_seed(cfg.seed)  # model noise (reparameterisation) uses the global stream
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, math.ceil(len(train_x) / cfg.batch_size))
    # Data parallel: DDP averages the gradients over the ranks after each backward.
    net: Any = model
    if r.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    result = FitResult()
    bad_epochs, start_epoch = 0, 1
    expected = fingerprint(model, cfg, binarization, identity)
    ckpt_path = Path(checkpoint) if checkpoint else None

    def save(epoch: int, phase: Phase) -> None:
        if ckpt_path is None or not r.main:  # one writer: rank 0
            return
        ckpt.save(ckpt_path, {
            "model": ckpt.model_spec(model), "weights": model.state_dict(),
            "optimizer": optimizer.state_dict(), "epoch": epoch, "fingerprint": expected, "phase": phase,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "history": result.history, "best_epoch": result.best_epoch,
            "best_val": result.best_val, "best_weights": result.best_weights,
            "bad_epochs": bad_epochs, "stopped_early": result.stopped_early,
            "rng_cpu": torch.get_rng_state(),
            **({"rng_cuda": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
            **(extra_state or {}),
        })

    point = resume_point(ckpt_path, expected) if ckpt_path is not None else ResumePoint(None, "")
    if ckpt_path is not None and r.main:
        print(point.reason, flush=True)
    if point.state is not None:
        state = point.state
        model.load_state_dict(state["weights"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        result.history = list(state["history"])
        result.best_epoch, result.best_val = state["best_epoch"], state["best_val"]
        result.best_weights = state["best_weights"]
        bad_epochs, start_epoch = state["bad_epochs"], state["epoch"] + 1
        result.resumed_from = state["epoch"]
        result.reused = point.complete
        result.stopped_early = state.get("stopped_early", False)
        if point.complete:
            return result
    else:  # a fresh training: the model may take its start from the data (e.g. DRAW's canvas bias)
        mean = sum(chunk.double().sum(0) for chunk in train_x.split(4096)) / (255.0 * len(train_x))
        model.init_from_data(mean.float().unsqueeze(0).to(device))
    t_start = time.perf_counter()
    amp = autocast_enabled(cfg.amp, device)
    for epoch in range(start_epoch, cfg.epochs + 1):
        if result.stopped_early:
            break
        if until_epoch is not None and epoch > until_epoch:
            if ckpt_path is None:
                raise ValueError("fit(until_epoch=...) needs a checkpoint to continue from")
            result.paused = True
            return result  # the checkpoint of epoch until_epoch stays resumable (phase "training")
        model.train()
        # Per-epoch RNG streams: data order and binarization depend only on (seed, epoch).
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        order = torch.randperm(len(train_x), generator=gen)
        n_batches = math.ceil(len(train_x) / cfg.batch_size)
        sums = {"loss": 0.0, "recon": 0.0, "kl": 0.0}
        t0 = time.perf_counter()
        # disable=None: bars on a terminal, none in CI logs (the epoch line below is always printed)
        bar = tqdm(range(n_batches), desc=f"epoch {epoch}/{cfg.epochs}", leave=False,
                   disable=None if progress and r.main else True, unit="batch")
        for step in bar:
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            # Every rank draws the whole global batch (same generator, same draws as one
            # process) and trains on its slice of it.
            xb = prepare_batch(train_x[idx], binarization, cfg, gen)
            xb = torch.tensor_split(xb, r.world)[r.rank].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                terms = net(xb)
            beta = kl_weight(cfg.kl_warmup_epochs, epoch - 1 + step / n_batches)
            # The slice's sum over the global batch size, times the ranks DDP averages over:
            # the gradient of the global batch's mean, however the batch is split.
            total = terms.nelbo.sum() if beta == 1.0 else terms.recon.sum() + beta * terms.kl.sum()
            loss = total * (r.world / len(idx))
            stats = _all_sum(torch.stack([terms.nelbo.sum(), terms.recon.sum(), terms.kl.sum()]).detach().double(), r)
            if not torch.isfinite(stats).all():
                raise NonFiniteLossError(
                    f"non-finite loss ({stats[0].item() / len(idx)}) at epoch {epoch}, step {step + 1}; "
                    "lower train.lr or set train.grad_clip; the last good checkpoint is kept"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            # the true negative ELBO, whatever the warm-up weight
            for key, value in zip(("loss", "recon", "kl"), stats.tolist(), strict=True):
                sums[key] += value
            bar.set_postfix(loss=f"{stats[0].item() / len(idx):.1f}")
        seconds = time.perf_counter() - t0
        val = evaluate_nelbo(model, val_x, binarization, max(cfg.batch_size, 256), cfg.seed + 1)
        metrics = {
            "train_loss": sums["loss"] / len(train_x),
            "train_recon": sums["recon"] / len(train_x),
            "train_kl": sums["kl"] / len(train_x),
            "val_loss": val,
            "epoch_seconds": seconds,
            "images_per_second": len(train_x) / seconds,
        }
        if not math.isfinite(val):
            raise NonFiniteLossError(
                f"non-finite validation loss at epoch {epoch}; the last good checkpoint is kept"
            )
        result.history.append({"epoch": epoch, **metrics})
        if val < result.best_val:
            result.best_val, result.best_epoch, bad_epochs = val, epoch, 0
            result.best_weights = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
        result.stopped_early = bad_epochs >= cfg.patience
        over_budget = cfg.time_budget_s > 0 and time.perf_counter() - t_start > cfg.time_budget_s
        if r.world > 1:  # clocks differ: all ranks stop when any is over, or they would deadlock
            over_budget = bool(_all_sum(torch.tensor(float(over_budget), device=device), r) > 0)
        if r.main:
            print(
                f"epoch {epoch:3d}  train {metrics['train_loss']:8.2f}  (recon {metrics['train_recon']:.2f}"
                f" + kl {metrics['train_kl']:.2f})  val {val:8.2f}  {metrics['images_per_second']:.0f} img/s"
                + ("  *" if result.best_epoch == epoch else ""),
                flush=True,
            )
        # Hook first (log, prune), then checkpoint: a kill in between re-runs this epoch, which
        # logs the same values again rather than leaving a hole in the curves.
        if on_epoch is not None and r.main:
            on_epoch(epoch, metrics)
        save(epoch, "training")
        if over_budget:
            break
    if not result.best_weights:
        result.best_weights = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
    save(result.history[-1]["epoch"] if result.history else 0, "trained")
    return result

