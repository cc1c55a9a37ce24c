"""The one training loop every model and the tuner share.

:func:`fit` reads top to bottom: the training state (:class:`rnngen.checkpoint.TrainState`), one
epoch (:func:`train_epoch`), validation and early stopping (:func:`validate`, :func:`keep_best`),
the time budget (:func:`elapsed`) and the checkpoint written after every epoch; it returns the
history and best weights, and MLflow and Optuna hook in through ``on_epoch``. Data order, dynamic
binarization and model noise come from RNG streams restored at epoch boundaries, so a resumed
run on CPU ends bit-identical to an uninterrupted one (which is also why Lightning Fabric, not a
dependency, would not take over the plumbing of :mod:`rnngen.distributed` and :mod:`rnngen.device`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from rnngen import checkpoint as ckpt
from rnngen.config import under_minimum
from rnngen.data import Images, binarize, to_unit
from rnngen.device import autocast_enabled, resolve_device, tf32_under_amp
from rnngen.distributed import Ranks, all_sum, any_rank, data_parallel, ranks
from rnngen.errors import UserError
from rnngen.models import GenerativeModel, kernels
from rnngen.models.base import optimizer_groups, start_from_data
from rnngen.resume import ResumePoint, plan, warm_start_fingerprint, warm_start_identity

#: imported from here by the tuner and the train stage
__all__ = ["FitResult", "NonFiniteLossError", "TrainConfig", "fit", "make_optimizer", "resolve_device",
           "warm_start_fingerprint", "warm_start_identity"]


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
        out = under_minimum(self, epochs=1, batch_size=1, patience=1, grad_clip=0, augment_shift=0, augment_rotate=0,
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

    @classmethod
    def of(cls, state: ckpt.TrainState, resumed_from: int, reused: bool = False, paused: bool = False) -> FitResult:
        return cls(state.history, state.best_epoch, state.best_val, state.best_weights, state.stopped_early,
                   resumed_from, reused, paused)


EpochHook = Callable[[int, dict[str, float]], None]


def make_optimizer(model: GenerativeModel, cfg: TrainConfig) -> torch.optim.Optimizer:
    """``train.optimizer`` over the model's parameter groups (:func:`~rnngen.models.base.optimizer_groups`)."""
    groups = optimizer_groups(model, cfg.lr)
    if cfg.optimizer == "sgd":
        groups = [{k: v for k, v in group.items() if k != "betas"} for group in groups]  # Adam's alone
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    # fused: one kernel for every parameter's update instead of a dozen ops per tensor (0.2 against
    # 1.0 ms a step for PixelRNN's 34 tensors on 2 cores); CPU and CUDA float tensors only
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in model.parameters())
    return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, decoupled_weight_decay=True,
                            fused=fused or None)


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


def prepare_batch(x: Tensor, binarization: str, cfg: TrainConfig | None, generator: torch.Generator) -> Tensor:
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


def elapsed(state: ckpt.TrainState) -> float:
    """Seconds this training has run (its epochs' training and validation), over every resume:
    the clock of ``train.time_budget_s``, so a resumed or warm-started training spends what is
    left of its budget, not a new one."""
    if not state.history:
        return 0.0
    last = state.history[-1]
    return float(last["elapsed_s"]) if "elapsed_s" in last else sum(h["epoch_seconds"] for h in state.history)


def reached(state: ckpt.TrainState, seconds: float | None, r: Ranks, device: torch.device) -> bool:
    """The training has run ``seconds`` (None or 0: never), agreed across ranks."""
    over = bool(seconds) and elapsed(state) >= seconds
    # clocks differ: all ranks stop when any is over, or they would deadlock
    return any_rank(over, r, device)


def fit(
    model: GenerativeModel,
    train: Images | Tensor,
    val: Images | Tensor,
    cfg: TrainConfig,
    binarization: str,
    *,
    checkpoint: str | Path | None = None,
    identity: Mapping[str, str] | None = None,
    resume: ResumePoint | None = None,
    on_epoch: EpochHook | None = None,
    extra_state: dict[str, Any] | None = None,
    progress: bool = True,
    until_epoch: int | None = None,
    until_seconds: float | None = None,
) -> FitResult:
    """Train ``model`` on uint8 images (:class:`~rnngen.data.Images`: a conditional model on
    their labels; a bare tensor is unlabelled images); early-stop on its validation score. With
    ``checkpoint`` the whole training state is saved after every epoch and resumed by
    :func:`rnngen.resume.plan` (fingerprint with ``identity``), or from ``resume`` when the caller
    has decided. ``on_epoch(epoch, metrics)`` (log, prune: it
    may raise) runs on rank 0 of a data-parallel job, which alone prints and writes the
    checkpoint, storing ``extra_state`` in it (the MLflow run id). ``until_epoch`` pauses after
    that epoch, its checkpoint resumable exactly (the tuner's successive halving on the real
    schedule); ``until_seconds`` pauses at the first epoch end past that many seconds of training,
    as ``cfg.time_budget_s`` ends it."""
    device, r = model.device, ranks()
    path = Path(checkpoint) if checkpoint else None
    train, val = (Images(part.x, _labels_of(model, part.y, split))
                  for part, split in ((Images.of(train), "training"), (Images.of(val), "validation")))
    if device.type == "cpu":
        kernels.keep_freed_memory()
    with tf32_under_amp(cfg.amp, device):
        state, net, point = _start(model, train.x, cfg, binarization, path, identity, resume, r)
        if point.complete:
            return FitResult.of(state, point.epoch, reused=True)
        save = ckpt.StateWriter(path if r.main else None, point.fingerprint, extra_state or {})
        amp = autocast_enabled(cfg.amp, device)
        for epoch in range(state.epoch + 1, cfg.epochs + 1):
            if state.stopped_early or reached(state, cfg.time_budget_s, r, device):
                break
            if (until_epoch is not None and epoch > until_epoch) or reached(state, until_seconds, r, device):
                if path is None:
                    raise ValueError("fit(until_epoch=... or until_seconds=...) needs a checkpoint to continue from")
                return FitResult.of(state, point.epoch, paused=True)  # the last epoch's checkpoint goes on
            metrics = run_epoch(net, state, train, val, cfg, binarization, epoch, amp, r, progress)
            # Hook first (log, prune), then checkpoint: a kill in between re-runs this epoch, which
            # logs the same values again rather than leaving a hole in the curves.
            if on_epoch is not None and r.main:
                on_epoch(epoch, metrics)
            save(state, "training")
        if not state.best_weights:
            state.best_weights = ckpt.cpu_copy(model.state_dict())
        save(state, "trained")
        return FitResult.of(state, point.epoch)


def run_epoch(
    net: torch.nn.Module, state: ckpt.TrainState, train: Images, val: Images, cfg: TrainConfig, binarization: str,
    epoch: int, amp: bool, r: Ranks, progress: bool,
) -> dict[str, float]:
    """One epoch of training, then validation and early-stopping bookkeeping; its metrics."""
    t0 = time.perf_counter()
    terms, seconds = train_epoch(net, state, train, cfg, binarization, epoch, amp, r, progress)
    metrics = {**terms, "val_loss": validate(state.model, val, cfg, binarization, epoch),
               "epoch_seconds": seconds, "images_per_second": len(train.x) / seconds}
    metrics["elapsed_s"] = elapsed(state) + time.perf_counter() - t0
    keep_best(state, epoch, metrics, cfg.patience)
    if r.main:
        _print_epoch(epoch, metrics, best=state.best_epoch == epoch)
    return metrics


def _labels_of(model: GenerativeModel, y: Tensor | None, split: str) -> Tensor | None:
    """The labels a conditional model trains on (checked, before any compute), None for an
    unconditional one."""
    if not model.conditional:
        return None
    key = f"model.{model.name}"
    if y is None or len(torch.unique(y)) < 2:
        raise UserError(f"{key}.conditional is true but the {split} images are not labelled (a flat image folder "
                        "gives every image one label): use a labelled dataset (IDX files, or one subfolder per "
                        f"class) or set {key}.conditional: false")
    if int(y.min()) < 0 or int(y.max()) >= model.config.classes:
        raise UserError(f"the {split} labels run from {int(y.min())} to {int(y.max())} but {key}.classes is "
                        f"{model.config.classes}: set it to {int(y.max()) + 1}")
    return y.long().cpu()


def _start(
    model: GenerativeModel, train_x: Tensor, cfg: TrainConfig, binarization: str, checkpoint: Path | None,
    identity: Mapping[str, str] | None, resume: ResumePoint | None, r: Ranks,
) -> tuple[ckpt.TrainState, torch.nn.Module, ResumePoint]:
    """The training state, fresh or resumed, and the module the batches run through."""
    torch.manual_seed(cfg.seed)  # model noise (reparameterisation) uses the global stream
    optimizer = make_optimizer(model, cfg)
    state = ckpt.TrainState(model, optimizer, make_scheduler(optimizer, cfg, math.ceil(len(train_x) / cfg.batch_size)))
    # Building DDP waits for every rank, so any warm start rank 0 wrote is on disk before the others read.
    net = data_parallel(model, r)
    point = resume if resume is not None else plan(checkpoint, model, cfg, binarization, identity)
    if checkpoint is not None and r.main:
        print(point.reason, flush=True)
    if point.state is not None:
        state.restore(point.state)
    else:  # a fresh training: the model may take its start from the data (e.g. DRAW's canvas bias)
        mean = sum(chunk.double().sum(0) for chunk in train_x.split(4096)) / (255.0 * len(train_x))
        start_from_data(model, mean.float().unsqueeze(0).to(model.device))
    return state, net, point


def train_epoch(
    net: torch.nn.Module, state: ckpt.TrainState, train: Images, cfg: TrainConfig, binarization: str, epoch: int,
    amp: bool, r: Ranks, progress: bool,
) -> tuple[dict[str, float], float]:
    """One pass over the training images: the loss terms' means per image, and the seconds it took."""
    state.model.train()
    # Per-epoch RNG stream: data order, augmentation and binarization depend only on (seed, epoch).
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    order = torch.randperm(len(train.x), generator=gen)
    n_batches = math.ceil(len(train.x) / cfg.batch_size)
    names = ("loss", *state.model.loss_names)  # ("loss", "recon", "kl"); a GAN's: disc, gen
    sums = dict.fromkeys(names, 0.0)
    t0 = time.perf_counter()
    # disable=None: bars on a terminal, none in CI logs (the epoch line is always printed)
    bar = tqdm(range(n_batches), desc=f"epoch {epoch}/{cfg.epochs}", leave=False,
               disable=None if progress and r.main else True, unit="batch")
    for step in bar:
        idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        # Every rank draws the whole global batch (same generator, same draws as one
        # process) and trains on its slice of it.
        xb = prepare_batch(train.x[idx], binarization, cfg, gen)
        xb = torch.tensor_split(xb, r.world)[r.rank].to(state.model.device)
        yb = None if train.y is None else torch.tensor_split(train.y[idx], r.world)[r.rank].to(state.model.device)
        beta = kl_weight(cfg.kl_warmup_epochs, epoch - 1 + step / n_batches)
        stats = _train_step(net, state, xb, yb, len(idx), beta, amp, r, cfg.grad_clip,
                            f"epoch {epoch}, step {step + 1}")
        # the true negative ELBO, whatever the warm-up weight
        for key, value in zip(names, stats.tolist(), strict=True):
            sums[key] += value
        bar.set_postfix(loss=f"{stats[0].item() / len(idx):.1f}")
    seconds = time.perf_counter() - t0
    return {f"train_{key}": value / len(train.x) for key, value in sums.items()}, seconds


def _train_step(
    net: torch.nn.Module, state: ckpt.TrainState, xb: Tensor, yb: Tensor | None, batch_images: int, beta: float,
    amp: bool, r: Ranks, grad_clip: float, where: str,
) -> Tensor:
    """One optimizer step on this rank's slice ``xb`` (labels ``yb``) of a global batch of
    ``batch_images``; returns the batch's summed (nelbo, recon, kl) over all ranks."""
    with torch.autocast(xb.device.type, dtype=torch.bfloat16, enabled=amp):
        terms = net(xb, yb)
    # The slice's sum over the global batch size, times the ranks DDP averages over:
    # the gradient of the global batch's mean, however the batch is split.
    loss = terms.objective(beta) * (r.world / batch_images)
    stats = all_sum(torch.stack([terms.nelbo.sum(), terms.recon.sum(), terms.kl.sum()]).detach().double(), r)
    if not torch.isfinite(stats).all():
        raise NonFiniteLossError(
            f"non-finite loss ({stats[0].item() / batch_images}) at {where}; "
            "lower train.lr or set train.grad_clip; the last good checkpoint is kept"
        )
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), grad_clip)
    state.optimizer.step()
    if state.scheduler is not None:
        state.scheduler.step()
    return stats


def validate(model: GenerativeModel, val: Images, cfg: TrainConfig, binarization: str, epoch: int) -> float:
    """The model's :meth:`~GenerativeModel.validation_score` (fixed binarization draws:
    comparable across epochs); a non-finite one stops the training."""
    score = model.validation_score(val.x, val.y, binarization, cfg.seed + 1, max(cfg.batch_size, 256))
    if not math.isfinite(score):
        raise NonFiniteLossError(f"non-finite validation loss at epoch {epoch}; the last good checkpoint is kept")
    return score


def keep_best(state: ckpt.TrainState, epoch: int, metrics: dict[str, float], patience: int) -> None:
    """Record the epoch, keep the best weights; early stopping after ``patience`` epochs
    without a better validation loss."""
    state.history.append({"epoch": epoch, **metrics})
    if metrics["val_loss"] < state.best_val:
        state.best_val, state.best_epoch, state.bad_epochs = metrics["val_loss"], epoch, 0
        state.best_weights = ckpt.cpu_copy(state.model.state_dict())
    else:
        state.bad_epochs += 1
    state.stopped_early = state.bad_epochs >= patience
    state.epoch = epoch


def _print_epoch(epoch: int, metrics: Mapping[str, float], best: bool) -> None:
    first, second = (k.removeprefix("train_") for k in metrics if k.startswith("train_") and k != "train_loss")
    print(
        f"epoch {epoch:3d}  train {metrics['train_loss']:8.2f}  ({first} {metrics['train_' + first]:.2f}"
        f" + {second} {metrics['train_' + second]:.2f})  val {metrics['val_loss']:8.2f}"
        f"  {metrics['images_per_second']:.0f} img/s" + ("  *" if best else ""),
        flush=True,
    )
