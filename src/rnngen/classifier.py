"""A small CNN digit classifier trained on the real training split.

It stands in for Inception in the sample-quality metrics (Fréchet distance on its
penultimate features, classifier score on its probabilities) and judges whether an
inpainted digit is still recognisable. By default (``binarize``) it is trained and judges on
binary images, the kind the models' likelihood is of: a fresh Bernoulli draw of each training
image's grey levels per batch, and real images binarized once (seeded) when they are judged;
it refuses grey input, so a sample and a real image are always the same kind of picture.
With ``binarize: false`` it takes grey levels in [0, 1] instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from rnngen.config import under_minimum
from rnngen.errors import MissingInputError, UserError

FEATURES = 128
#: the classifier stage's two outputs, in its output folder
CLASSIFIER_FILE = "classifier.pt"
METRICS_FILE = "metrics.json"
#: the classifier stage's output as the CLI finds it when run in the project root
PROJECT_CLASSIFIER = Path("classifier") / CLASSIFIER_FILE
#: format tag in saved files, so a generative-model checkpoint is not mistaken for one (v1:
#: before ``binarize``; those judged grey levels and are refused rather than guessed at)
FORMAT = "rnngen-classifier-v2"


@dataclass(frozen=True)
class ClassifierConfig:
    seed: int = 0
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    #: random shifts of up to this many pixels on training batches (0 = off): with a few
    #: thousand images it is the cheapest way past 95% accuracy
    augment_shift: int = 2
    #: train and judge on binary images (Bernoulli draws of the grey levels), the kind the
    #: models' samples are; False: grey levels in [0, 1]
    binarize: bool = True

    def problems(self) -> list[str]:
        out = under_minimum(self, epochs=1, batch_size=1, augment_shift=0)
        if not self.lr > 0:
            out.append(f"lr: learning rate must be > 0, got {self.lr}")
        if not isinstance(self.binarize, bool):
            out.append(f"binarize: must be true or false, got {self.binarize!r}")
        return out


class DigitClassifier(nn.Module):
    """Two conv blocks (28 -> 14 -> 7), a 128-unit hidden layer, then class logits."""

    def __init__(self, num_classes: int = 10, config: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.config = config or ClassifierConfig()  # saved beside the weights
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.hidden = nn.Linear(64 * 7 * 7, FEATURES)
        self.out = nn.Linear(FEATURES, num_classes)

    def features(self, x: Tensor) -> Tensor:
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, 32, 14, 14)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)  # (B, 64, 7, 7)
        return F.relu(self.hidden(h.flatten(1)))  # (B, 128): what the logits layer sees

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.features(x))

    @property
    def binary(self) -> bool:
        """Whether it judges binary images (see the module docstring)."""
        return bool(self.config.binarize)


def as_images(x: Tensor | np.ndarray) -> Tensor:
    """uint8 grey levels or floats in [0, 1], ``(N, 28, 28)`` or ``(N, 1, 28, 28)`` ->
    float ``(N, 1, 28, 28)`` in [0, 1]."""
    x = torch.as_tensor(x)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4 or x.shape[1:] != (1, 28, 28):
        raise ValueError(f"expected images (N, 28, 28) or (N, 1, 28, 28), got shape {tuple(x.shape)}")
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def as_judged(model: DigitClassifier, images: Tensor | np.ndarray, seed: int) -> Tensor:
    """``images`` as ``model`` judges them: for a binary judge one Bernoulli draw of the grey
    levels from a generator seeded with ``seed`` (binary images come back unchanged); grey
    levels in [0, 1] otherwise."""
    x = as_images(images)
    return torch.bernoulli(x, generator=torch.Generator().manual_seed(seed)) if model.binary else x


def _check_kind(model: DigitClassifier, x: Tensor) -> None:
    if model.binary and x.numel() and not ((x == 0) | (x == 1)).all():
        raise ValueError(
            "this classifier judges binary images (classifier.binarize: true) but was given grey levels; "
            "pass binary images (a model's sample_binary, or rnngen.classifier.as_judged for real ones)"
        )


def shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Move each image by up to ``max_shift`` pixels each way, filling with background (0)."""
    if max_shift == 0:
        return x
    pad = F.pad(x, (max_shift,) * 4)  # (B, 1, 28 + 2s, 28 + 2s)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, len(x)), generator=generator).tolist()
    return torch.stack([pad[i, :, a : a + 28, b : b + 28] for i, (a, b) in enumerate(zip(dy, dx, strict=True))])


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def _batched(
    apply: Callable[[Tensor], Tensor], model: DigitClassifier, images: Tensor | np.ndarray, batch_size: int
) -> Tensor:
    model.eval()
    x = as_images(images)
    _check_kind(model, x)
    device = _device(model)
    parts = [apply(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0)


def features(model: DigitClassifier, images: Tensor | np.ndarray, batch_size: int = 500) -> Tensor:
    """Penultimate-layer activations ``(N, 128)``, on the CPU."""
    return _batched(model.features, model, images, batch_size)


def logits(model: DigitClassifier, images: Tensor | np.ndarray, batch_size: int = 500) -> Tensor:
    """Class logits ``(N, num_classes)``, on the CPU."""
    return _batched(model, model, images, batch_size)


def probabilities(model: DigitClassifier, images: Tensor | np.ndarray, batch_size: int = 500) -> Tensor:
    """p(y | x) ``(N, num_classes)``, on the CPU."""
    return logits(model, images, batch_size).softmax(-1)


def accuracy(model: DigitClassifier, x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> float:
    """Share of images whose most likely class is the label."""
    pred = logits(model, x).argmax(-1)
    return (pred == torch.as_tensor(y).cpu()).float().mean().item()


def train_classifier(
    x_train: Tensor | np.ndarray,
    y_train: Tensor | np.ndarray,
    x_val: Tensor | np.ndarray,
    y_val: Tensor | np.ndarray,
    cfg: ClassifierConfig,
    progress: bool = True,
    *,
    device: str | torch.device = "cpu",
) -> tuple[DigitClassifier, dict[str, float]]:
    """Train with Adam; keep the epoch with the best validation accuracy.

    Seeded and deterministic on CPU. The global RNG is forked, so training leaves no
    trace on the caller's random streams.
    """
    x_tr, y_tr, n_val = _checked_inputs(x_train, y_train, x_val, y_val, cfg)
    num_classes = max(2, int(y_tr.max()) + 1)
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # weight init
        model = DigitClassifier(num_classes, cfg).to(device)
        x_val = as_judged(model, x_val, cfg.seed)  # one fixed draw: comparable across epochs
        order_gen = torch.Generator().manual_seed(cfg.seed)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        best_acc, best_epoch, best_state, loss_sum = -1.0, 0, model.state_dict(), 0.0
        bar = tqdm(range(1, cfg.epochs + 1), desc="classifier", leave=False, disable=not progress)
        for epoch in bar:
            loss_sum = _train_epoch(model, opt, x_tr, y_tr, cfg, order_gen, device)
            # without validation images every epoch "wins", so the last one is kept
            val_acc = accuracy(model, x_val, y_val) if n_val else float("nan")
            bar.set_postfix(loss=f"{loss_sum / len(x_tr):.3f}", val_acc=f"{val_acc:.3f}")
            if not n_val or val_acc > best_acc:
                best_acc, best_epoch = val_acc, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    metrics = {
        "val_accuracy": best_acc,
        "best_epoch": float(best_epoch),
        "train_loss_last": loss_sum / len(x_tr),
        "train_time_s": time.perf_counter() - t0,
    }
    return model, metrics


def _checked_inputs(
    x_train: Tensor | np.ndarray, y_train: Tensor | np.ndarray, x_val: Tensor | np.ndarray,
    y_val: Tensor | np.ndarray, cfg: ClassifierConfig,
) -> tuple[Tensor, Tensor, int]:
    """Training images as floats in [0, 1], their labels, and the validation count; every
    problem with the config or the inputs raised before any training."""
    if cfg.problems():
        raise ValueError("classifier config: " + "; ".join(cfg.problems()))
    x_tr, y_tr = as_images(x_train), torch.as_tensor(y_train).long()
    n_val = len(torch.as_tensor(y_val))
    if len(x_tr) == 0 or len(x_tr) != len(y_tr) or len(as_images(x_val)) != n_val:
        raise ValueError(
            f"classifier: need one label per image and some training images; got {len(x_tr)} / "
            f"{len(y_tr)} (train images / labels), {len(x_val)} / {n_val} (validation)"
        )
    return x_tr, y_tr, n_val


def _train_epoch(
    model: DigitClassifier, opt: torch.optim.Optimizer, x_tr: Tensor, y_tr: Tensor, cfg: ClassifierConfig,
    order_gen: torch.Generator, device: str | torch.device,
) -> float:
    """One pass over the shuffled training images; the summed loss. Every random draw (order,
    shifts, binarization) comes from ``order_gen``, in that order per batch."""
    model.train()
    loss_sum = 0.0
    perm = torch.randperm(len(x_tr), generator=order_gen)
    for start in range(0, len(perm), cfg.batch_size):
        idx = perm[start : start + cfg.batch_size]
        xb = shift(x_tr[idx], cfg.augment_shift, order_gen)
        if cfg.binarize:  # a fresh draw per batch, as the models' dynamic binarization
            xb = torch.bernoulli(xb, generator=order_gen)
        xb = xb.to(device)
        loss = F.cross_entropy(model(xb), y_tr[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.item() * len(idx)
    return loss_sum


def digest(model: DigitClassifier) -> str:
    """sha256 of a judge's settings and weights: two evaluations' accuracies and FCDs compare
    only when they were judged by the same classifier."""
    h = hashlib.sha256(repr(sorted(dataclasses.asdict(model.config).items())).encode())
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode() + b"\0" + value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_classifier(path: str | Path, model: DigitClassifier) -> Path:
    """Weights + config + class count as plain containers (readable with weights_only=True)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": FORMAT,
        "weights": model.state_dict(),
        "config": dataclasses.asdict(model.config),
        "num_classes": model.num_classes,
    }
    torch.save(state, path)
    return path


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> DigitClassifier:
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"classifier file {path} does not exist; train it first (dvc repro classifier)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, truncated, ...
        raise UserError(f"classifier file {path} is unreadable ({exc}); train it again") from exc
    if isinstance(state, dict) and state.get("format") == "rnngen-classifier-v1":
        raise UserError(f"{path} is a classifier from an older rnngen that judged grey levels; train it again "
                        "(dvc repro classifier) so samples and real images are judged as binary images")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not an rnngen classifier file (rnngen.classifier.save_classifier)")
    model = DigitClassifier(int(state["num_classes"]), ClassifierConfig(**state["config"]))
    model.load_state_dict(state["weights"])
    return model.to(device).eval()


def fallback_classifier(
    images: Tensor, labels: Tensor | None, seed: int, epochs: int
) -> tuple[DigitClassifier, str]:
    """A judge trained on the user's own labelled images (10 % held out for validation), for
    when no classifier file is given; the string says so, for the record."""
    if labels is None or len(torch.unique(labels)) < 2:
        raise UserError(
            "--classifier: the Fréchet classifier distance and inpainting accuracy need a classifier; pass "
            f"--classifier (e.g. the classifier stage's classifier/{CLASSIFIER_FILE}) or give labelled images "
            "(IDX with a train pair, or one subfolder per class) to train one"
        )
    n = len(images)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, train = perm[: max(1, n // 10)], perm[max(1, n // 10) :]
    cfg = ClassifierConfig(seed=seed, epochs=epochs)
    model, metrics = train_classifier(images[train], labels[train], images[val], labels[val], cfg, progress=False)
    return model, (f"trained here on {len(train)} of the given images for {cfg.epochs} epochs (validation "
                   f"accuracy {metrics['val_accuracy']:.3f}); pass --classifier for numbers comparable across runs")
